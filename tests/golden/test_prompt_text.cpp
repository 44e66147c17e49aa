// Text-level SD3 prompt encoding (tokenizers + encoders) against diffusers' encode_prompt on tiny-a: every golden
// case including the "blurry, low quality" negatives, which have no golden token ids of their own.
#include <gtest/gtest.h>

#include "common/testing.h"
#include "infer/prompt_encoding.h"
#include "io/single_file.h"

namespace sd3 {
namespace {

using testing::all_close;
using testing::golden_tensor;
using testing::open_golden;
using testing::tiny_path;

// float32 throughout; see test_text_encoders.cpp for the measured error (<= 2.2e-6) behind this bound.
constexpr double kAtol = 1e-5, kRtol = 1e-5;

// Prompts 0-5 of make_golden.py's PROMPTS (the ones text_encoders.safetensors holds).
const std::vector<std::string> kPrompts = {
    "a photo of sks dog",
    "A PHOTO of a Cat, sitting on a mat!!",
    "",
    "  multiple   spaces\tand\nnewlines ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u201cquotes\u201d \u2018single\u2019",
    "emoji \U0001F436\U0001F525 test",
};

TEST(PromptTextGolden, TokenizeAndEncodeLikeDiffusers) {
    auto model = ModelFolder::open(tiny_path("model"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    auto tok = PromptTokenizer::open(model.value());
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    TextEncoderOptions opt;
    opt.t5.format = T5WeightFormat::F32;
    opt.max_sequence_length = 77;  // what make_golden.py used
    auto te = TextEncoders::open(model.value(), opt);
    ASSERT_TRUE(te.ok()) << te.status().message();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");

    // The wiring: each encoder gets its own tokenizer's ids (CLIP-G pads with 0, CLIP-L with 49407).
    for (size_t i = 0; i < kPrompts.size(); ++i) {
        const PromptTokens t = tok->tokenize(kPrompts[i], 77);
        EXPECT_TRUE(all_close(t.clip_l, golden_tensor(g, str_cat(i, ".clip_l.input_ids")), 0, 0)) << i;
        EXPECT_TRUE(all_close(t.clip_g, golden_tensor(g, str_cat(i, ".clip_g.input_ids")), 0, 0)) << i;
        EXPECT_TRUE(all_close(t.t5, golden_tensor(g, str_cat(i, ".t5.input_ids")), 0, 0)) << i;
    }

    auto pos = te->encode_prompts(tok.value(), kPrompts);
    auto neg = te->encode_prompts(tok.value(), {"", "blurry, low quality"}, /*with_clip_skip=*/false);
    ASSERT_TRUE(pos.ok()) << pos.status().message();
    ASSERT_TRUE(neg.ok()) << neg.status().message();
    for (size_t i = 0; i < kPrompts.size(); ++i) {
        SCOPED_TRACE(str_cat("case ", i));
        EXPECT_TRUE(all_close((*pos)[i].prompt_embeds, golden_tensor(g, str_cat(i, ".sd3.prompt_embeds")), kAtol, kRtol));
        EXPECT_TRUE(all_close((*pos)[i].pooled, golden_tensor(g, str_cat(i, ".sd3.pooled")), kAtol, kRtol));
        const int blurry = static_cast<int>(golden_tensor(g, str_cat(i, ".sd3.negative_prompt_is_blurry")).item_at({0}));
        EXPECT_TRUE(all_close((*neg)[blurry].prompt_embeds, golden_tensor(g, str_cat(i, ".sd3.negative_prompt_embeds")),
                              kAtol, kRtol));
        EXPECT_TRUE(all_close((*neg)[blurry].pooled, golden_tensor(g, str_cat(i, ".sd3.negative_pooled")), kAtol, kRtol));
    }
}

TEST(PromptTextGolden, SequenceLengthSetsT5Tokens) {
    auto model = ModelFolder::open(tiny_path("model"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    auto tok = PromptTokenizer::open(model.value());
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    TextEncoderOptions opt;  // defaults: int8 T5, 256 tokens (generation)
    auto te = TextEncoders::open(model.value(), opt);
    ASSERT_TRUE(te.ok()) << te.status().message();
    auto e = te->encode_prompts(tok.value(), {"a photo of sks dog"});
    ASSERT_TRUE(e.ok()) << e.status().message();
    EXPECT_EQ((*e)[0].prompt_embeds.shape(), (Shape{1, 77 + 256, 64}));
    EXPECT_EQ((*e)[0].pooled.shape(), (Shape{1, 64}));
}

TEST(PromptTextGolden, SingleFileFp8T5ThroughOpenModel) {
    // What `sd3tune encode-prompt --model sd3_..._t5fp8.safetensors --tokenizers FOLDER --t5-dtype fp8` runs:
    // the single file's encoders through the name map, T5 kept as stored fp8, against diffusers with that fp8 T5
    // (weights upcast exactly, float32 math).
    ModelSpec spec;
    spec.model = tiny_path("single_file/sd3_tiny_incl_clips_t5fp8.safetensors");
    spec.tokenizers = tiny_path("model");
    auto model = open_model(spec);
    ASSERT_TRUE(model.ok()) << model.status().message();
    auto tok = PromptTokenizer::open(model.value());
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    TextEncoderOptions opt;
    opt.t5.format = T5WeightFormat::FP8_E4M3;
    opt.max_sequence_length = 77;
    auto te = TextEncoders::open(model.value(), opt);
    ASSERT_TRUE(te.ok()) << te.status().message();
    auto pos = te->encode_prompts(tok.value(), {kPrompts[0], kPrompts[1]});
    auto neg = te->encode_prompts(tok.value(), {""}, false);
    ASSERT_TRUE(pos.ok() && neg.ok()) << pos.status().message() << neg.status().message();
    const SafetensorsFile ref = open_golden("tiny-a/single_file/t5fp8_encode.safetensors");
    for (int i = 0; i < 2; ++i) {
        EXPECT_TRUE(all_close((*pos)[i].prompt_embeds, golden_tensor(ref, str_cat(i, ".prompt_embeds")), kAtol, kRtol));
        EXPECT_TRUE(all_close((*pos)[i].pooled, golden_tensor(ref, str_cat(i, ".pooled_prompt_embeds")), kAtol, kRtol));
        EXPECT_TRUE(all_close((*neg)[0].prompt_embeds, golden_tensor(ref, str_cat(i, ".negative_prompt_embeds")), kAtol, kRtol));
        EXPECT_TRUE(all_close((*neg)[0].pooled, golden_tensor(ref, str_cat(i, ".negative_pooled_prompt_embeds")), kAtol, kRtol));
    }
}

}  // namespace
}  // namespace sd3
