// The quantized T5 paths against the float32 path on tiny-a's T5 (prompts 0-5 of text_encoders.safetensors):
// relative error ||y - y_f32|| / ||y_f32|| of the whole output and the cosine similarity of each token's vector,
// per weight format, with bounds from the format's precision. Also checks which weights each format quantizes.
#include <gtest/gtest.h>

#include <cmath>

#include "common/testing.h"
#include "io/json_file.h"
#include "models/t5_encoder.h"

namespace sd3 {
namespace {

using testing::golden_tensor;
using testing::open_golden;
using testing::tiny_path;

T5Config tiny_t5_config() {
    const std::string path = tiny_path("model/text_encoder_3/config.json");
    auto j = read_json_file(path);
    EXPECT_TRUE(j.ok()) << j.status().message();
    auto c = T5Config::from_json(j.value(), path);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.value();
}

T5Encoder load_t5(T5WeightFormat f, bool keep_wo = true) {
    auto src = SafetensorsSource::open(tiny_path("model/text_encoder_3"), {"model"});
    EXPECT_TRUE(src.ok()) << src.status().message();
    T5LoadOptions opt;
    opt.format = f;
    opt.keep_wo_unquantized = keep_wo;
    auto m = T5Encoder::load(tiny_t5_config(), src.value(), opt);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return std::move(m).value();
}

struct ErrorStats {
    double rel = 0;         // ||got - ref|| / ||ref|| over the whole output
    double min_cos = 1.0;   // smallest cosine similarity of a token's d_model vector
};

ErrorStats compare(const Tensor& got, const Tensor& ref) {
    const std::vector<float> g = got.to_float_vector(), r = ref.to_float_vector();
    const int64_t D = ref.size(-1), rows = ref.numel() / D;
    double num = 0, den = 0;
    ErrorStats s;
    for (int64_t t = 0; t < rows; ++t) {
        double dot = 0, gg = 0, rr = 0;
        for (int64_t i = t * D; i < (t + 1) * D; ++i) {
            num += (g[i] - r[i]) * static_cast<double>(g[i] - r[i]);
            den += static_cast<double>(r[i]) * r[i];
            dot += static_cast<double>(g[i]) * r[i];
            gg += static_cast<double>(g[i]) * g[i];
            rr += static_cast<double>(r[i]) * r[i];
        }
        s.min_cos = std::min(s.min_cos, dot / std::sqrt(gg * rr));
    }
    s.rel = std::sqrt(num / den);
    return s;
}

// Each bound is about twice the error measured on these six prompts (in brackets: relative error, min cosine),
// and that error is where the format's weight error puts it: a weight error of relative RMS e perturbs each
// Linear's output by ~e, compounding over the 5-6 quantized Linears of each of 2 blocks. Per-weight RMS errors for
// N(0, s) weights in rows of 64: bf16 ~0.1%, int8 (step absmax/127 ~ 2.4s/127) ~0.55%, fp8 e4m3 (3 mantissa bits)
// ~2.3%, NF4 ~8%. A bug (wrong scale, nibble order, row/block mix-up) gives errors of O(1).
struct Bound {
    T5WeightFormat f;
    double max_rel, min_cos;
};
constexpr Bound kBounds[] = {
    {T5WeightFormat::BF16, 0.005, 0.99998},     // [0.00247, 0.9999933]
    {T5WeightFormat::INT8_ROW, 0.02, 0.9996},   // [0.0106, 0.9998994]
    {T5WeightFormat::FP8_E4M3, 0.075, 0.99},    // [0.0368, 0.9976873]
    {T5WeightFormat::NF4, 0.25, 0.95},          // [0.134, 0.9776513]
};

TEST(T5Quantized, Fp16IsExactForFp16Weights) {
    // tiny-a's weights are fp16 values (as SD3's): keeping them as fp16 dequantizes exactly, so the output is
    // bit-identical to the float32 path.
    const T5Encoder ref_model = load_t5(T5WeightFormat::F32);
    const T5Encoder model = load_t5(T5WeightFormat::F16);
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    const Tensor ids = golden_tensor(g, "1.t5.input_ids");
    auto ref = ref_model.forward(ids);
    auto got = model.forward(ids);
    ASSERT_TRUE(ref.ok() && got.ok());
    EXPECT_TRUE(testing::all_close(got.value(), ref.value(), 0, 0));
    EXPECT_LT(model.weight_bytes(), ref_model.weight_bytes());
}

TEST(T5Quantized, OutputErrorPerFormatWithinBounds) {
    const T5Encoder ref_model = load_t5(T5WeightFormat::F32);
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    for (const Bound& b : kBounds) {
        const T5Encoder model = load_t5(b.f);
        ErrorStats worst;
        worst.rel = 0;
        for (int i = 0; i < 6; ++i) {
            const Tensor ids = golden_tensor(g, str_cat(i, ".t5.input_ids"));
            auto ref = ref_model.forward(ids);
            auto got = model.forward(ids);
            ASSERT_TRUE(ref.ok() && got.ok());
            const ErrorStats s = compare(got.value(), ref.value());
            worst.rel = std::max(worst.rel, s.rel);
            worst.min_cos = std::min(worst.min_cos, s.min_cos);
        }
        std::printf("  T5 %-5s rel error %.3g, min cosine %.7f, weights %zu bytes\n", cpu::quant_format_name(b.f),
                    worst.rel, worst.min_cos, model.weight_bytes());
        EXPECT_LE(worst.rel, b.max_rel) << cpu::quant_format_name(b.f);
        EXPECT_GE(worst.min_cos, b.min_cos) << cpu::quant_format_name(b.f);
        EXPECT_GT(worst.rel, 0.0) << cpu::quant_format_name(b.f) << " changed nothing: is the format applied?";
    }
}

TEST(T5Quantized, WhichWeightsAreQuantized) {
    // int8 (the reference's training setting) quantizes q, k, v, o, wi_0, wi_1; wo keeps its stored dtype
    // (fp16 here), as transformers keeps it in fp32 (_keep_in_fp32_modules = ["wo"]). Norms and the relative
    // attention bias are float32; the embedding stays as stored.
    const T5Encoder m = load_t5(T5WeightFormat::INT8_ROW);
    for (const T5BlockWeights& b : m.weights().blocks) {
        for (const QuantizedMatrix* q : {&b.q, &b.k, &b.v, &b.o, &b.wi_0, &b.wi_1}) {
            EXPECT_EQ(q->format, QuantFormat::INT8_ROW);
            EXPECT_EQ(q->scale.numel(), q->rows);
        }
        EXPECT_EQ(b.wo.format, QuantFormat::F16);
        EXPECT_EQ(b.attn_norm.dtype(), DType::F32);
    }
    EXPECT_EQ(m.weights().shared.dtype(), DType::F16);
    const T5Encoder all = load_t5(T5WeightFormat::NF4, /*keep_wo=*/false);
    EXPECT_EQ(all.weights().blocks[0].wo.format, QuantFormat::NF4);
    EXPECT_EQ(all.weights().blocks[0].wo.scale.numel(), 64 * 96 / 64);
    EXPECT_LT(all.weight_bytes(), load_t5(T5WeightFormat::NF4).weight_bytes());
}

TEST(T5Quantized, RelativePositionBuckets) {
    // research/sd3-architecture.md §6.1: f(n) = n below 8, then 8..15 at the boundaries 8, 12, 16, 23, 32, 46, 64,
    // 91; keys after the query (rel > 0) use the upper 16 buckets.
    const int64_t edges[][2] = {{0, 0},   {7, 7},   {8, 8},   {11, 8},  {12, 9},  {15, 9},  {16, 10}, {22, 10},
                                {23, 11}, {31, 11}, {32, 12}, {45, 12}, {46, 13}, {63, 13}, {64, 14}, {90, 14},
                                {91, 15}, {127, 15}, {128, 15}, {1000, 15}};
    for (const auto& e : edges) {
        EXPECT_EQ(t5_relative_position_bucket(-e[0], 32, 128), e[1]) << "rel -" << e[0];
        if (e[0] > 0) EXPECT_EQ(t5_relative_position_bucket(e[0], 32, 128), 16 + e[1]) << "rel +" << e[0];
    }
}

// Streaming under a memory budget (issue 4): blocks beyond the budget are packed in host memory and brought into
// slots for each pass (nn/streamed_blocks.h), and every batch goes through a block before the next comes in. On the
// CPU the "device" is another host allocation: the same code path as on a GPU minus the transfer. The result
// is bit-identical to the resident encoder's, for every budget, and batches of different lengths go through
// one pass together.
TEST(T5Streaming, EveryBudgetGivesTheResidentOutputBitForBit) {
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    const Tensor ids0 = golden_tensor(g, "0.t5.input_ids"), ids1 = golden_tensor(g, "1.t5.input_ids");
    const Tensor short_ids = ids1.slice(1, 0, 7).contiguous();  // a batch of another length
    for (T5WeightFormat f : {T5WeightFormat::F32, T5WeightFormat::INT8_ROW, T5WeightFormat::NF4}) {
        const T5Encoder resident = load_t5(f);
        const int blocks = static_cast<int>(resident.config().num_layers);
        EXPECT_EQ(resident.resident_blocks(), blocks);
        auto r0 = resident.forward(ids0), r1 = resident.forward(ids1), rs = resident.forward(short_ids);
        ASSERT_TRUE(r0.ok() && r1.ok() && rs.ok());
        // One block's bytes: none resident (it would need a slot for the other too); all.
        const size_t block_bytes = resident.weights().blocks[0].bytes();
        for (size_t budget : {size_t{0}, block_bytes, SIZE_MAX - 1}) {
            SCOPED_TRACE(str_cat(cpu::quant_format_name(f), ", budget ", budget));
            T5Encoder streamed = load_t5(f);
            ASSERT_TRUE(streamed.to(nn::Placement{}, budget).ok());
            const int expect_resident = budget == SIZE_MAX - 1 ? blocks : 0;
            EXPECT_EQ(streamed.resident_blocks(), expect_resident);
            auto out = streamed.forward_batches({ids0, short_ids, ids1});
            ASSERT_TRUE(out.ok()) << out.status().message();
            ASSERT_EQ(out->size(), 3u);
            EXPECT_TRUE(testing::all_close((*out)[0], *r0, 0, 0));
            EXPECT_TRUE(testing::all_close((*out)[1], *rs, 0, 0));
            EXPECT_TRUE(testing::all_close((*out)[2], *r1, 0, 0));
        }
    }
    // And the streamed float32 encoder is still the reference's T5 (the golden test's 1e-5 bounds).
    T5Encoder streamed = load_t5(T5WeightFormat::F32);
    ASSERT_TRUE(streamed.to(nn::Placement{}, 0).ok());
    auto out = streamed.forward(ids0);
    ASSERT_TRUE(out.ok());
    EXPECT_TRUE(testing::all_close(*out, golden_tensor(g, "0.t5.last_hidden"), 1e-5, 1e-5));
}

}  // namespace
}  // namespace sd3
