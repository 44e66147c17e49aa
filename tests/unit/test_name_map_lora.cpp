// LoRA key dialects of the name map: the golden diffusers LoRA goes to kohya and ComfyUI keys and back bit for
// bit, a fused-qkv LoRA spreads exactly onto q/k/v, adaLN halves swap only where the weights swap, and unknown
// keys or a missing layer count are errors that say so.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/testing.h"
#include "io/lora_file.h"
#include "io/name_map.h"

using namespace sd3;

namespace {

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed) {  // [rows, cols] f32 in (-1, 1)
    std::vector<float> v(static_cast<size_t>(rows * cols));
    for (float& x : v) {
        seed = seed * 1664525u + 1013904223u;
        x = static_cast<float>(seed >> 8) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
    }
    return Tensor::from_vector({rows, cols}, v);
}

bool same_bits(const Tensor& a, const Tensor& b) {
    if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
    const Tensor ca = a.contiguous(), cb = b.contiguous();
    return std::memcmp(ca.raw(), cb.raw(), ca.nbytes()) == 0;
}

void expect_same_set(const LoraSet& got, const LoraSet& want) {
    ASSERT_EQ(got.modules.size(), want.modules.size());
    for (const auto& [name, m] : want.modules) {
        auto it = got.modules.find(name);
        ASSERT_NE(it, got.modules.end()) << name;
        EXPECT_TRUE(same_bits(it->second.A, m.A)) << name << " A";
        EXPECT_TRUE(same_bits(it->second.B, m.B)) << name << " B";
        EXPECT_EQ(it->second.alpha, m.alpha) << name;
    }
}

// ΔW = (alpha / r) · B·A in double, [out, in].
std::vector<double> delta(const LoraModule& m) {
    const int64_t out = m.B.size(0), in = m.A.size(1), r = m.rank();
    std::vector<double> d(static_cast<size_t>(out * in), 0.0);
    for (int64_t i = 0; i < out; ++i)
        for (int64_t j = 0; j < in; ++j) {
            double s = 0;
            for (int64_t k = 0; k < r; ++k) s += m.B.item_at({i, k}) * m.A.item_at({k, j});
            d[i * in + j] = s * m.alpha / static_cast<double>(r);
        }
    return d;
}

const Tensor* find(const NamedTensors& t, const std::string& name) {
    for (const auto& [n, v] : t)
        if (n == name) return &v;
    return nullptr;
}

}  // namespace

TEST(NameMapLora, GoldenLoraRoundTripsThroughKohyaAndComfyUI) {
    auto golden = read_lora_file(sd3::testing::tiny_path("lora/pytorch_lora_weights.safetensors"));
    ASSERT_TRUE(golden.ok()) << golden.status().message();
    for (LoraDialect d : {LoraDialect::KOHYA, LoraDialect::COMFYUI}) {
        SCOPED_TRACE(std::string(lora_dialect_name(d)));
        auto tensors = lora_to_stability(*golden, d, DType::F32, 2);
        ASSERT_TRUE(tensors.ok()) << tensors.status().message();
        const std::string qkv = d == LoraDialect::KOHYA ? "lora_unet_joint_blocks_0_x_block_attn_qkv"
                                                        : "diffusion_model.joint_blocks.0.x_block.attn.qkv";
        const std::string proj = d == LoraDialect::KOHYA ? "lora_unet_joint_blocks_1_x_block_attn_proj"
                                                         : "diffusion_model.joint_blocks.1.x_block.attn.proj";
        ASSERT_NE(find(*tensors, qkv + ".lora_down.weight"), nullptr);
        EXPECT_EQ(find(*tensors, qkv + ".lora_down.weight")->shape(), (Shape{12, 32}));  // q, k, v: rank 4 each
        EXPECT_EQ(find(*tensors, qkv + ".lora_up.weight")->shape(), (Shape{96, 12}));
        EXPECT_EQ(find(*tensors, qkv + ".alpha")->item_at({}), 12.0);  // 3 x alpha 4: the scale stays 4/4
        EXPECT_EQ(find(*tensors, proj + ".lora_up.weight")->shape(), (Shape{32, 4}));
        EXPECT_EQ(detect_lora_dialect(*tensors), d);
        auto back = parse_lora(*tensors, {}, "converted", 2);
        ASSERT_TRUE(back.ok()) << back.status().message();
        expect_same_set(*back, *golden);

        // Through a file, as users move LoRAs between tools.
        const std::string path = (std::filesystem::temp_directory_path() /
                                   ("sd3_lora_" + std::string(lora_dialect_name(d)) + ".safetensors")).string();
        ASSERT_TRUE(write_lora(path, *golden, d, DType::F32, 2).ok());
        auto from_file = read_lora_any(path, 2);
        std::filesystem::remove(path);
        ASSERT_TRUE(from_file.ok()) << from_file.status().message();
        expect_same_set(*from_file, *golden);
    }
    // And the diffusers dialect through the same entry points.
    const std::string path = (std::filesystem::temp_directory_path() / "sd3_lora_diffusers.safetensors").string();
    ASSERT_TRUE(write_lora(path, *golden, LoraDialect::DIFFUSERS).ok());
    auto again = read_lora_any(path);
    std::filesystem::remove(path);
    ASSERT_TRUE(again.ok()) << again.status().message();
    expect_same_set(*again, *golden);
}

// A LoRA trained on the fused qkv (kohya on Stability's model): q, k and v share lora_down and take their rows
// of lora_up, so each part's update is exactly its rows of the fused update.
TEST(NameMapLora, FusedQkvLoraSpreadsOntoQkv) {
    const Tensor down = random_matrix(4, 32, 1), up = random_matrix(96, 4, 2);  // [r, D], [3D, r]
    NamedTensors t = {{"lora_unet_joint_blocks_0_context_block_attn_qkv.lora_down.weight", down},
                      {"lora_unet_joint_blocks_0_context_block_attn_qkv.lora_up.weight", up},
                      {"lora_unet_joint_blocks_0_context_block_attn_qkv.alpha", Tensor::full({}, 2.0)}};
    auto set = parse_lora(t, {}, "kohya", 0);
    ASSERT_TRUE(set.ok()) << set.status().message();
    const char* parts[] = {"add_q_proj", "add_k_proj", "add_v_proj"};
    for (int p = 0; p < 3; ++p) {
        const LoraModule& m = set->modules.at(std::string("transformer_blocks.0.attn.") + parts[p]);
        EXPECT_TRUE(same_bits(m.A, down));
        EXPECT_TRUE(same_bits(m.B, up.slice(0, p * 32, (p + 1) * 32).contiguous()));
        EXPECT_EQ(m.alpha, 2.0f);
    }
    // Missing alpha means alpha = rank (scale 1), as kohya and diffusers assume.
    t.pop_back();
    set = parse_lora(t, {}, "kohya", 0);
    ASSERT_TRUE(set.ok());
    EXPECT_EQ(set->modules.at("transformer_blocks.0.attn.add_v_proj").alpha, 4.0f);
}

// Parts with different alpha/r: their scales are folded into B, and the update of each part is unchanged.
TEST(NameMapLora, DifferentScalesFoldIntoTheFusedLora) {
    LoraSet set;
    set.modules["transformer_blocks.0.attn.to_q"] = {random_matrix(4, 32, 3), random_matrix(32, 4, 4), 4.0f};
    set.modules["transformer_blocks.0.attn.to_k"] = {random_matrix(2, 32, 5), random_matrix(32, 2, 6), 8.0f};
    set.modules["transformer_blocks.0.attn.to_v"] = {random_matrix(4, 32, 7), random_matrix(32, 4, 8), 1.0f};
    auto t = lora_to_stability(set, LoraDialect::COMFYUI);
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(find(*t, "diffusion_model.joint_blocks.0.x_block.attn.qkv.alpha")->item_at({}), 10.0);  // rank, scale 1
    auto back = parse_lora(*t, {}, "comfy");
    ASSERT_TRUE(back.ok()) << back.status().message();
    for (const auto& [name, m] : set.modules) {
        const std::vector<double> want = delta(m), got = delta(back->modules.at(name));
        ASSERT_EQ(got.size(), want.size());
        // f32 products of values in (-1, 1) summed over 10 terms: a few ulps of 1 (~1e-6) at most.
        for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << name << " " << i;
    }
}

TEST(NameMapLora, AdaLNHalvesSwapWhereTheWeightsSwap) {
    LoraSet set;
    set.modules["transformer_blocks.1.norm1_context.linear"] = {random_matrix(2, 32, 9), random_matrix(64, 2, 10), 2.0f};
    set.modules["transformer_blocks.0.norm1_context.linear"] = {random_matrix(2, 32, 11), random_matrix(192, 2, 12), 2.0f};
    set.modules["norm_out.linear"] = {random_matrix(2, 32, 13), random_matrix(64, 2, 14), 1.0f};
    auto t = lora_to_stability(set, LoraDialect::KOHYA, DType::F32, 2);
    ASSERT_TRUE(t.ok()) << t.status().message();
    const Tensor& last_b = set.modules.at("transformer_blocks.1.norm1_context.linear").B;
    const Tensor* last_up = find(*t, "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.lora_up.weight");
    ASSERT_NE(last_up, nullptr);
    EXPECT_TRUE(same_bits(last_up->slice(0, 0, 32).contiguous(), last_b.slice(0, 32, 64).contiguous()));
    EXPECT_TRUE(same_bits(*find(*t, "lora_unet_joint_blocks_0_context_block_adaLN_modulation_1.lora_up.weight"),
                          set.modules.at("transformer_blocks.0.norm1_context.linear").B));
    const Tensor* final_up = find(*t, "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight");
    ASSERT_NE(final_up, nullptr);
    EXPECT_TRUE(same_bits(final_up->slice(0, 32, 64).contiguous(),
                          set.modules.at("norm_out.linear").B.slice(0, 0, 32).contiguous()));
    auto back = parse_lora(*t, {}, "kohya", 2);
    ASSERT_TRUE(back.ok()) << back.status().message();
    expect_same_set(*back, set);

    // Which block is last depends on the model: without its layer count the context adaLN cannot be mapped.
    auto no_layers = lora_to_stability(set, LoraDialect::KOHYA);
    ASSERT_FALSE(no_layers.ok());
    EXPECT_NE(no_layers.status().message().find("layer count is needed"), std::string::npos) << no_layers.status().message();
    auto parse_no_layers = parse_lora(*t, {}, "kohya");
    ASSERT_FALSE(parse_no_layers.ok());
    EXPECT_NE(parse_no_layers.status().message().find("layer count is needed"), std::string::npos);
}

TEST(NameMapLora, UnknownKeysAreErrorsListingThem) {
    NamedTensors t = {{"lora_unet_joint_blocks_0_x_block_attn_bogus.lora_down.weight", random_matrix(2, 4, 1)},
                      {"lora_unet_joint_blocks_0_x_block_attn_bogus.lora_up.weight", random_matrix(4, 2, 2)},
                      {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", random_matrix(2, 4, 3)}};
    auto set = parse_lora(t, {}, "mixed.safetensors");
    ASSERT_FALSE(set.ok());
    const std::string& msg = set.status().message();
    EXPECT_NE(msg.find("2 key(s) that are not kohya MMDiT LoRA weights"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lora_unet_joint_blocks_0_x_block_attn_bogus"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"), std::string::npos) << msg;

    NamedTensors half = {{"diffusion_model.joint_blocks.0.x_block.mlp.fc1.lora_down.weight", random_matrix(2, 4, 1)}};
    auto h = parse_lora(half, {}, "half.safetensors");
    ASSERT_FALSE(h.ok());
    EXPECT_NE(h.status().message().find("has lora_down but no lora_up"), std::string::npos) << h.status().message();

    LoraSet bad;
    bad.modules["transformer_blocks.0.attn.bogus"] = {random_matrix(2, 4, 1), random_matrix(4, 2, 2), 2.0f};
    auto w = lora_to_stability(bad, LoraDialect::KOHYA);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.status().message().find("transformer_blocks.0.attn.bogus"), std::string::npos);
}

TEST(NameMapLora, DialectNames) {
    EXPECT_EQ(lora_dialect_from_name("kohya"), LoraDialect::KOHYA);
    EXPECT_EQ(lora_dialect_from_name("comfyui"), LoraDialect::COMFYUI);
    EXPECT_EQ(lora_dialect_from_name("diffusers"), LoraDialect::DIFFUSERS);
    EXPECT_FALSE(lora_dialect_from_name("webui").has_value());
}
