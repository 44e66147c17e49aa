// Golden tests of the text encoders against tests/data/tiny-a/text_encoders.safetensors (transformers 5.17 in
// float32 on a CPU, weights fp16 upcast to f32; see /work/shared/golden/make_golden.py): CLIP-L and CLIP-G
// penultimate / last hidden / pooled, and T5's last hidden state, for prompts 0-5.
#include <gtest/gtest.h>

#include "common/testing.h"
#include "io/json_file.h"
#include "models/clip_text.h"
#include "models/t5_encoder.h"

namespace sd3 {
namespace {

using testing::all_close;
using testing::golden_tensor;
using testing::open_golden;
using testing::tiny_path;

constexpr int kCases = 6;

// Same weights, same op order, float32 throughout: what remains is summation order in the GEMMs (OpenBLAS vs
// PyTorch's CPU kernels) and ulps of exp/erf/tanh, a few float32 ulps per op that accumulate through 2-3 layers.
// Measured: at most 2.2e-6 absolute on values of O(1) (LayerNorm/RMSNorm outputs with random fp16 weights).
// 1e-5 absolute + 1e-5 relative is ~5x that and still ~1e4x below the effect of any real mistake (a wrong
// activation, scale, mask, norm or layer index moves values by O(0.1)).
constexpr double kAtol = 1e-5, kRtol = 1e-5;

template <typename Config>
Config load_config(const std::string& sub) {
    const std::string path = tiny_path("model/" + sub + "/config.json");
    auto j = read_json_file(path);
    EXPECT_TRUE(j.ok()) << j.status().message();
    auto c = Config::from_json(j.value(), path);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.value();
}

std::shared_ptr<const TensorSource> open_source(const std::string& sub) {
    auto s = SafetensorsSource::open(tiny_path("model/" + sub), {"model"});
    EXPECT_TRUE(s.ok()) << s.status().message();
    return s.value();
}

void check_clip(const std::string& sub, const std::string& key, cpu::Activation expected_act) {
    const ClipTextConfig cfg = load_config<ClipTextConfig>(sub);
    EXPECT_EQ(cfg.act, expected_act);
    auto model = ClipTextModel::load(cfg, open_source(sub));
    ASSERT_TRUE(model.ok()) << model.status().message();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    for (int i = 0; i < kCases; ++i) {
        SCOPED_TRACE(str_cat(key, " case ", i));
        const Tensor ids = golden_tensor(g, str_cat(i, ".", key, ".input_ids"));  // [1, 77] int32
        auto out = model->forward(ids);
        ASSERT_TRUE(out.ok()) << out.status().message();
        EXPECT_TRUE(all_close(out->penultimate, golden_tensor(g, str_cat(i, ".", key, ".penultimate")), kAtol, kRtol));
        EXPECT_TRUE(all_close(out->last_hidden, golden_tensor(g, str_cat(i, ".", key, ".last_hidden")), kAtol, kRtol));
        EXPECT_TRUE(all_close(out->pooled, golden_tensor(g, str_cat(i, ".", key, ".pooled")), kAtol, kRtol));
    }
}

TEST(TextEncodersGolden, ClipL) { check_clip("text_encoder", "clip_l", cpu::Activation::QUICK_GELU); }
TEST(TextEncodersGolden, ClipG) { check_clip("text_encoder_2", "clip_g", cpu::Activation::GELU_ERF); }

TEST(TextEncodersGolden, ClipBatchOfTwoMatchesSingles) {
    // Batch rows are independent (no padding mask, per-row pooling): [case 0; case 1] gives each case's output.
    const ClipTextConfig cfg = load_config<ClipTextConfig>("text_encoder_2");
    auto model = ClipTextModel::load(cfg, open_source("text_encoder_2"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    const Tensor a = golden_tensor(g, "0.clip_g.input_ids"), b = golden_tensor(g, "1.clip_g.input_ids");
    Tensor ids = Tensor::empty({2, 77}, DType::I32);  // [2, 77]
    ids.select(0, 0).copy_from(a.select(0, 0));
    ids.select(0, 1).copy_from(b.select(0, 0));
    auto out = model->forward(ids);
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_TRUE(all_close(out->pooled.slice(0, 1, 2), golden_tensor(g, "1.clip_g.pooled"), kAtol, kRtol));
    EXPECT_TRUE(all_close(out->penultimate.slice(0, 0, 1), golden_tensor(g, "0.clip_g.penultimate"), kAtol, kRtol));
}

TEST(TextEncodersGolden, T5Float32) {
    const T5Config cfg = load_config<T5Config>("text_encoder_3");
    T5LoadOptions opt;
    opt.format = T5WeightFormat::F32;
    auto model = T5Encoder::load(cfg, open_source("text_encoder_3"), opt);
    ASSERT_TRUE(model.ok()) << model.status().message();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    for (int i = 0; i < kCases; ++i) {
        SCOPED_TRACE(str_cat("t5 case ", i));
        auto out = model->forward(golden_tensor(g, str_cat(i, ".t5.input_ids")));
        ASSERT_TRUE(out.ok()) << out.status().message();
        EXPECT_TRUE(all_close(out.value(), golden_tensor(g, str_cat(i, ".t5.last_hidden")), kAtol, kRtol));
    }
}

TEST(TextEncodersGolden, ClipRejectsOutOfVocabularyIds) {
    const ClipTextConfig cfg = load_config<ClipTextConfig>("text_encoder");
    auto model = ClipTextModel::load(cfg, open_source("text_encoder"));
    ASSERT_TRUE(model.ok());
    Tensor ids = Tensor::zeros({1, 77}, DType::I32);
    ids.data<int32_t>()[5] = 49408;
    auto out = model->forward(ids);
    ASSERT_FALSE(out.ok());
    EXPECT_NE(out.status().message().find("49408"), std::string::npos) << out.status().message();
}

TEST(TextEncodersGolden, LoadRejectsMismatchedConfig) {
    ClipTextConfig cfg = load_config<ClipTextConfig>("text_encoder");
    cfg.num_layers = 2;  // the file has 3: layer 2's tensors are unused, which must be an error
    auto model = ClipTextModel::load(cfg, open_source("text_encoder"));
    ASSERT_FALSE(model.ok());
    EXPECT_NE(model.status().message().find("layers.2"), std::string::npos) << model.status().message();
}

TEST(TextEncodersGolden, PoolPositionRules) {
    // SD3's configs say eos_token_id 2 (legacy): transformers then pools at argmax(ids), the first 49407 even when
    // padding is 49407 too (CLIP-L). Another eos id pools at its first occurrence; none gives position 0.
    Tensor ids = Tensor::zeros({3, 6}, DType::I32);  // [3, 6]
    const int32_t rows[3][6] = {{49406, 320, 49407, 49407, 49407, 49407},   // CLIP-L padding
                                {49406, 320, 1125, 49407, 0, 0},            // CLIP-G padding ("!" = 0)
                                {49406, 320, 1125, 7, 0, 0}};               // no eos
    for (int b = 0; b < 3; ++b)
        for (int t = 0; t < 6; ++t) ids.data<int32_t>()[b * 6 + t] = rows[b][t];
    EXPECT_EQ(clip_pool_positions(ids, 2), (std::vector<int64_t>{2, 3, 0}));
    EXPECT_EQ(clip_pool_positions(ids, 49407), (std::vector<int64_t>{2, 3, 0}));
    EXPECT_EQ(clip_pool_positions(ids, 320), (std::vector<int64_t>{1, 1, 1}));
}

}  // namespace
}  // namespace sd3
