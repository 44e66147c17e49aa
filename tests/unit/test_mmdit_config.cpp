// MMDiTConfig from transformer/config.json: defaults, SD3.5 fields, and errors that name the file and the problem;
// check_against weight shapes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "io/tensor_source.h"
#include "models/mmdit.h"

namespace sd3 {
namespace {

nlohmann::json sd3_medium() {
    return nlohmann::json::parse(R"({"_class_name":"SD3Transformer2DModel","attention_head_dim":64,
        "caption_projection_dim":1536,"in_channels":16,"joint_attention_dim":4096,"num_attention_heads":24,
        "num_layers":24,"out_channels":16,"patch_size":2,"pooled_projection_dim":2048,"pos_embed_max_size":192,
        "sample_size":128})");
}

TEST(MMDiTConfig, Sd3MediumAndSd35) {
    auto c = MMDiTConfig::from_json(sd3_medium(), "cfg.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->inner_dim(), 1536);
    EXPECT_TRUE(c->qk_norm.empty());
    EXPECT_TRUE(c->dual_attention_layers.empty());
    nlohmann::json j = sd3_medium();
    j["qk_norm"] = "rms_norm";
    j["dual_attention_layers"] = {0, 1, 2, 12};
    j["pos_embed_max_size"] = 384;
    c = MMDiTConfig::from_json(j, "cfg.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_TRUE(c->is_dual(12));
    EXPECT_FALSE(c->is_dual(13));
    j["out_channels"] = nullptr;  // diffusers: out_channels = in_channels
    EXPECT_EQ(MMDiTConfig::from_json(j, "cfg.json")->out_channels, 16);
}

TEST(MMDiTConfig, Errors) {
    auto expect_error = [](const nlohmann::json& j, const std::string& needle) {
        auto c = MMDiTConfig::from_json(j, "transformer/config.json");
        ASSERT_FALSE(c.ok()) << needle;
        EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
        EXPECT_NE(c.status().message().find("transformer/config.json"), std::string::npos);
    };
    nlohmann::json j = sd3_medium();
    j["qk_norm"] = "layer_norm";
    expect_error(j, "layer_norm");
    j = sd3_medium();
    j["caption_projection_dim"] = 1024;
    expect_error(j, "caption_projection_dim");
    j = sd3_medium();
    j["dual_attention_layers"] = {30};
    expect_error(j, "dual_attention_layers");
    j = sd3_medium();
    j["num_layers"] = "many";
    expect_error(j, "num_layers");
    j = sd3_medium();
    j.erase("pos_embed_max_size");
    expect_error(j, "pos_embed_max_size");
}

TEST(MMDiTConfig, CheckAgainstWeights) {
    auto src = SafetensorsSource::open(testing::tiny_path("model/transformer"), {"diffusion_pytorch_model"});
    ASSERT_TRUE(src.ok());
    auto j = nlohmann::json::parse(R"({"attention_head_dim":8,"caption_projection_dim":32,"in_channels":16,
        "joint_attention_dim":64,"num_attention_heads":4,"num_layers":2,"out_channels":16,"patch_size":2,
        "pooled_projection_dim":64,"pos_embed_max_size":16,"sample_size":16})");
    auto c = MMDiTConfig::from_json(j, "cfg");
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c->check_against(**src).ok());
    c->num_layers = 3;  // the weights have 2 blocks
    Status st = c->check_against(**src);
    EXPECT_FALSE(st.ok());
    c->num_layers = 1;
    st = c->check_against(**src);
    EXPECT_FALSE(st.ok());
    c->num_layers = 2;
    c->joint_attention_dim = 4096;
    st = c->check_against(**src);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("context_embedder.weight"), std::string::npos) << st.message();
    // Loading with a config that misses SD3.5 tensors, or has extra ones, fails through the WeightLoader.
    c->joint_attention_dim = 64;
    c->qk_norm = "rms_norm";
    auto m = MMDiT::create(*c, *src);
    ASSERT_FALSE(m.ok());
    EXPECT_NE(m.status().message().find("norm_q"), std::string::npos) << m.status().message();
}

}  // namespace
}  // namespace sd3
