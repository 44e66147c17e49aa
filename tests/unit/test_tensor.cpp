// Tensor views share storage and index the way PyTorch's do; copies convert dtypes.
#include <gtest/gtest.h>

#include <cmath>

#include "core/status.h"
#include "core/tensor.h"

using namespace sd3;

namespace {
Tensor arange(const Shape& shape) {
    std::vector<float> v(shape_numel(shape));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
    return Tensor::from_vector(shape, v);
}
}  // namespace

TEST(Tensor, ContiguousStridesAndNumel) {
    Tensor t = Tensor::zeros({2, 3, 4});
    EXPECT_EQ(t.numel(), 24);
    EXPECT_EQ(t.strides(), (std::vector<int64_t>{12, 4, 1}));
    EXPECT_TRUE(t.is_contiguous());
}

TEST(Tensor, SliceSelectPermuteAreViews) {
    Tensor t = arange({2, 3, 4});
    Tensor s = t.slice(2, 1, 3);  // [2, 3, 2]
    EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
    EXPECT_FALSE(s.is_contiguous());
    EXPECT_EQ(s.item_at({1, 2, 1}), 1 * 12 + 2 * 4 + 2);
    Tensor p = t.permute({2, 0, 1});  // [4, 2, 3]
    EXPECT_EQ(p.item_at({3, 1, 2}), t.item_at({1, 2, 3}));
    Tensor sel = t.select(1, 2);  // [2, 4]
    EXPECT_EQ(sel.item_at({1, 3}), 1 * 12 + 2 * 4 + 3);
    sel.fill(-1);
    EXPECT_EQ(t.item_at({0, 2, 0}), -1);  // writes through the view
    EXPECT_EQ(t.item_at({0, 1, 0}), 4);
}

TEST(Tensor, ContiguityIgnoresDimensionsOfSizeOne) {
    const Tensor t = arange({2, 5, 3});
    EXPECT_FALSE(t.slice(1, 1, 4).is_contiguous());            // rows of two batch elements, a gap between
    const Tensor one = t.slice(0, 1, 2).slice(1, 1, 4);         // [1, 3, 3]: one run of 9 elements
    EXPECT_TRUE(one.is_contiguous());
    EXPECT_EQ(one.contiguous().raw(), one.raw());               // no copy
    EXPECT_EQ(one.view({9}).item_at({0}), 1 * 15 + 1 * 3);
    EXPECT_FALSE(t.slice(0, 1, 2).slice(2, 0, 2).is_contiguous());  // a gap inside each row
}

TEST(Tensor, ContiguousCopyOfPermutedView) {
    Tensor t = arange({2, 3});
    Tensor c = t.transpose(0, 1).contiguous();
    EXPECT_EQ(c.shape(), (Shape{3, 2}));
    EXPECT_EQ(c.to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(Tensor, ViewInfersOneDimension) {
    Tensor t = arange({2, 3, 4});
    EXPECT_EQ(t.view({-1, 4}).shape(), (Shape{6, 4}));
    EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
}

TEST(Tensor, ToConvertsWithRounding) {
    Tensor t = Tensor::from_vector({3}, {1.0f, 0.1f, 70000.0f});
    Tensor h = t.to(DType::F16);
    EXPECT_EQ(h.dtype(), DType::F16);
    EXPECT_TRUE(std::isinf(h.item_at({2})));
    EXPECT_NEAR(h.item_at({1}), 0.1, 1e-4);
}

TEST(Tensor, CopyFromStridedIntoStrided) {
    Tensor src = arange({3, 2}).transpose(0, 1);  // [2, 3] non-contiguous
    Tensor dst = Tensor::zeros({3, 2}).transpose(0, 1);
    dst.copy_from(src);
    EXPECT_EQ(dst.contiguous().to_float_vector(), src.contiguous().to_float_vector());
}

TEST(Format, Bytes) {
    EXPECT_EQ(sd3::format_bytes(512), "512 B");
    EXPECT_EQ(sd3::format_bytes(1536), "1.5 KiB");
    EXPECT_EQ(sd3::format_bytes(3.0 * (1 << 30)), "3.0 GiB");
}
