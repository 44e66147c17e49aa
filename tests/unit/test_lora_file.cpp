// LoRA files in the diffusers/PEFT layout (io/lora_file.h): write -> read round trips with per-module ranks and
// alphas, the ways alpha can be stored, and the errors for keys that are not LoRA weights.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "common/fd_check.h"
#include "common/testing.h"
#include "io/lora_file.h"

namespace sd3 {
namespace {

using testing::all_close;
using testing::random_tensor;

std::string tmp(const std::string& name) { return ::testing::TempDir() + "/sd3_lora_" + name; }

TEST(LoraFile, RoundTripKeepsRanksAndAlphas) {
    std::mt19937 rng(1);
    LoraSet set;
    set.modules["transformer_blocks.0.attn.to_q"] = {random_tensor({4, 32}, rng), random_tensor({32, 4}, rng), 4.0f};
    set.modules["transformer_blocks.0.attn.to_k"] = {random_tensor({4, 32}, rng), random_tensor({32, 4}, rng), 4.0f};
    set.modules["transformer_blocks.1.ff.net.2"] = {random_tensor({8, 128}, rng), random_tensor({32, 8}, rng), 2.5f};
    const std::string path = tmp("roundtrip.safetensors");
    ASSERT_TRUE(write_lora_file(path, set).ok());

    // The file is what diffusers writes: prefixed keys, format pt, lora_adapter_metadata with r / lora_alpha and
    // the odd module in the patterns.
    auto file = SafetensorsFile::open(path);
    ASSERT_TRUE(file.ok());
    EXPECT_TRUE(file->contains("transformer.transformer_blocks.1.ff.net.2.lora_B.weight"));
    EXPECT_EQ(file->metadata().at("format"), "pt");
    const auto meta = nlohmann::json::parse(file->metadata().at("lora_adapter_metadata"));
    EXPECT_EQ(meta.at("transformer.r").get<int>(), 4);
    EXPECT_EQ(meta.at("transformer.lora_alpha").get<float>(), 4.0f);
    EXPECT_EQ(meta.at("transformer.alpha_pattern").at("transformer_blocks.1.ff.net.2").get<float>(), 2.5f);
    EXPECT_EQ(meta.at("transformer.rank_pattern").at("transformer_blocks.1.ff.net.2").get<int>(), 8);

    auto back = read_lora_file(path);
    ASSERT_TRUE(back.ok()) << back.status().message();
    ASSERT_EQ(back->modules.size(), 3u);
    for (const auto& [name, m] : set.modules) {
        const LoraModule& b = back->modules.at(name);
        EXPECT_TRUE(all_close(b.A, m.A, 0, 0)) << name;
        EXPECT_TRUE(all_close(b.B, m.B, 0, 0)) << name;
        EXPECT_EQ(b.alpha, m.alpha) << name;
    }
}

TEST(LoraFile, Bf16WriteRoundsOnce) {
    std::mt19937 rng(2);
    LoraSet set;
    set.modules["transformer_blocks.0.attn.to_v"] = {random_tensor({2, 8}, rng), random_tensor({8, 2}, rng), 2.0f};
    const std::string path = tmp("bf16.safetensors");
    LoraWriteOptions opt;
    opt.dtype = DType::BF16;
    ASSERT_TRUE(write_lora_file(path, set, opt).ok());
    auto back = read_lora_file(path);
    ASSERT_TRUE(back.ok());
    // bf16 keeps 8 significant bits: round-to-nearest error <= half an ulp = 2^-8 of the binade's lower end.
    EXPECT_TRUE(all_close(back->modules.begin()->second.A, set.modules.begin()->second.A, 0, 1.0 / 256));
    EXPECT_EQ(back->modules.begin()->second.A.dtype(), DType::F32);
}

TEST(LoraFile, AlphaSources) {
    std::mt19937 rng(3);
    const Tensor A = random_tensor({4, 8}, rng), B = random_tensor({8, 4}, rng);
    NamedTensors t = {{"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", A},
                      {"transformer.transformer_blocks.0.attn.to_q.lora_B.weight", B},
                      {"transformer.transformer_blocks.0.attn.to_k.lora_A.weight", A},
                      {"transformer.transformer_blocks.0.attn.to_k.lora_B.weight", B}};
    // no metadata: alpha = rank (diffusers' get_peft_kwargs)
    auto s = parse_diffusers_lora(t, {{"format", "pt"}}, "x");
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->modules.at("transformer_blocks.0.attn.to_q").alpha, 4.0f);
    // metadata without the component prefix (PEFT save_pretrained style), with a pattern for to_k
    s = parse_diffusers_lora(t, {{"lora_adapter_metadata", R"({"r": 4, "lora_alpha": 16, "alpha_pattern": {"to_k": 2}})"}}, "x");
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(s->modules.at("transformer_blocks.0.attn.to_q").alpha, 16.0f);
    EXPECT_EQ(s->modules.at("transformer_blocks.0.attn.to_k").alpha, 2.0f);
    // a per-module .alpha scalar wins
    NamedTensors t2 = t;
    t2.emplace_back("transformer.transformer_blocks.0.attn.to_q.alpha", Tensor::full({}, 1.0));
    s = parse_diffusers_lora(t2, {{"lora_adapter_metadata", R"({"transformer.lora_alpha": 16})"}}, "x");
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(s->modules.at("transformer_blocks.0.attn.to_q").alpha, 1.0f);
    EXPECT_EQ(s->modules.at("transformer_blocks.0.attn.to_k").alpha, 16.0f);
    // PEFT names with the adapter name are accepted too
    NamedTensors t3 = {{"transformer_blocks.0.attn.to_q.lora_A.default.weight", A},
                       {"transformer_blocks.0.attn.to_q.lora_B.default.weight", B}};
    s = parse_diffusers_lora(t3, {}, "x");
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_TRUE(s->modules.count("transformer_blocks.0.attn.to_q"));
}

TEST(LoraFile, Errors) {
    std::mt19937 rng(4);
    const Tensor A = random_tensor({4, 8}, rng), B = random_tensor({8, 4}, rng);
    // a key of another dialect is an error listing it
    auto s = parse_diffusers_lora({{"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", A},
                                   {"transformer.transformer_blocks.0.attn.to_q.lora_B.weight", B},
                                   {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight", A}},
                                  {}, "f.safetensors");
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"), std::string::npos);
    // A without B
    s = parse_diffusers_lora({{"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", A}}, {}, "f");
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("no lora_B"), std::string::npos) << s.status().message();
    // rank mismatch between A and B
    s = parse_diffusers_lora({{"transformer.x.lora_A.weight", A}, {"transformer.x.lora_B.weight", random_tensor({8, 3}, rng)}},
                             {}, "f");
    EXPECT_FALSE(s.ok());
    // broken metadata JSON
    s = parse_diffusers_lora({{"transformer.x.lora_A.weight", A}, {"transformer.x.lora_B.weight", B}},
                             {{"lora_adapter_metadata", "{not json"}}, "f");
    EXPECT_FALSE(s.ok());
    // missing file
    EXPECT_FALSE(read_lora_file(tmp("does_not_exist.safetensors")).ok());
}

}  // namespace
}  // namespace sd3
