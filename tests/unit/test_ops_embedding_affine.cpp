// ops::embedding and ops::affine on the CPU (ops/ops.h): row gathers from f32 and 16-bit tables with int32/int64
// ids, and the affine map's f32 arithmetic.
#include <gtest/gtest.h>

#include "ops/ops.h"

namespace sd3 {
namespace {

TEST(OpsEmbedding, GathersRowsForInt32AndInt64Ids) {
    const Tensor table = Tensor::from_vector({4, 3}, {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32});  // [V, D]
    Tensor ids32 = Tensor::empty({2, 2}, DType::I32);
    Tensor ids64 = Tensor::empty({2, 2}, DType::I64);
    const int64_t rows[] = {3, 0, 1, 3};
    for (int i = 0; i < 4; ++i) {
        ids32.data<int32_t>()[i] = static_cast<int32_t>(rows[i]);
        ids64.data<int64_t>()[i] = rows[i];
    }
    const std::vector<float> want = {30, 31, 32, 0, 1, 2, 10, 11, 12, 30, 31, 32};
    for (const Tensor& ids : {ids32, ids64}) {
        const Tensor out = ops::embedding(table, ids);
        EXPECT_EQ(out.shape(), (Shape{2, 2, 3}));
        EXPECT_EQ(out.dtype(), DType::F32);
        EXPECT_EQ(out.to_float_vector(), want);
    }
    // A bf16 table is widened to f32 (these small integers are exact in bf16).
    EXPECT_EQ(ops::embedding(table.to(DType::BF16), ids64).to_float_vector(), want);
}

TEST(OpsEmbeddingDeathTest, RejectsIdsOutsideTheTable) {
    const Tensor table = Tensor::zeros({4, 3});
    Tensor ids = Tensor::empty({1, 2}, DType::I64);
    ids.data<int64_t>()[0] = 1;
    ids.data<int64_t>()[1] = 4;
    EXPECT_DEATH(ops::embedding(table, ids), "outside the table");
}

TEST(OpsAffine, ScalesThenShiftsInFloat32) {
    const Tensor x = Tensor::from_vector({2, 3}, {1.0f, -2.0f, 0.5f, 0.0f, 3.25f, -1e-3f});
    const Tensor y = ops::affine(x, 1.5305f, 0.0609f);
    EXPECT_EQ(y.shape(), x.shape());
    const std::vector<float> xv = x.to_float_vector(), yv = y.to_float_vector();
    for (size_t i = 0; i < xv.size(); ++i) {
        const float prod = xv[i] * 1.5305f;  // two roundings: the product, then the sum
        EXPECT_EQ(yv[i], prod + 0.0609f) << i;
    }
    // A strided view gives the same result as its contiguous copy.
    EXPECT_EQ(ops::affine(x.transpose(0, 1), 2.0f, -1.0f).to_float_vector(),
              ops::affine(x.transpose(0, 1).contiguous(), 2.0f, -1.0f).to_float_vector());
}

}  // namespace
}  // namespace sd3
