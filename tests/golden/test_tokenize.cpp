// Golden tokenizer test: every id list of tests/data/tiny-a/tokenize.json (12 prompts; CLIP-L and CLIP-G padded
// to 77, CLIP-L unpadded, T5 padded to 77 and unpadded), produced by transformers 5 (make_golden.py), must match
// exactly: one id off changes the image.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"

namespace sd3 {
namespace {

std::vector<int32_t> ids_of(const nlohmann::json& v) { return v.get<std::vector<int32_t>>(); }

TEST(TokenizeGolden, AllPromptsAllTokenizers) {
    auto clip_l = ClipTokenizer::load(testing::tiny_path("model/tokenizer"));
    auto clip_g = ClipTokenizer::load(testing::tiny_path("model/tokenizer_2"));
    auto t5 = T5Tokenizer::load(testing::tiny_path("model/tokenizer_3"));
    ASSERT_TRUE(clip_l.ok()) << clip_l.status().message();
    ASSERT_TRUE(clip_g.ok()) << clip_g.status().message();
    ASSERT_TRUE(t5.ok()) << t5.status().message();
    std::ifstream in(testing::tiny_path("tokenize.json"));
    const nlohmann::json golden = nlohmann::json::parse(in);
    ASSERT_EQ(golden.size(), 12u);
    for (const auto& g : golden) {
        const std::string prompt = g["prompt"].get<std::string>();
        SCOPED_TRACE("prompt: \"" + prompt + "\"");
        EXPECT_EQ(clip_l->encode(prompt).ids, ids_of(g["clip_l"]));
        EXPECT_EQ(clip_g->encode(prompt).ids, ids_of(g["clip_g"]));
        EXPECT_EQ(clip_l->encode_all(prompt).ids, ids_of(g["clip_l_unpadded"]));
        EXPECT_EQ(t5->encode(prompt, 77).ids, ids_of(g["t5"]));
        EXPECT_EQ(t5->encode(prompt, 0).ids, ids_of(g["t5_unpadded"]));
        // Truncation reports what it dropped.
        const size_t full_clip = g["clip_l_unpadded"].size(), full_t5 = g["t5_unpadded"].size();
        EXPECT_EQ(clip_l->encode(prompt).dropped, full_clip > 77 ? static_cast<int64_t>(full_clip - 77) : 0);
        EXPECT_EQ(t5->encode(prompt, 77).dropped, full_t5 > 77 ? static_cast<int64_t>(full_t5 - 77) : 0);
    }
}

}  // namespace
}  // namespace sd3
