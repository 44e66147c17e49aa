// A small random MMDiT built in memory (SD3.5-style: qk-norm, a dual-attention layer, a pre-only last block), for
// tests that need a model of chosen depth rather than the golden one.
#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/fd_check.h"
#include "io/tensor_source.h"
#include "models/mmdit.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"

namespace sd3::testing {

// Named tensors in memory as a TensorSource.
class MapSource : public TensorSource {
  public:
    std::map<std::string, Tensor, std::less<>> t;
    std::vector<std::string> names() const override {
        std::vector<std::string> n;
        for (const auto& [k, v] : t) n.push_back(k);
        return n;
    }
    std::optional<TensorMeta> meta(std::string_view name) const override {
        auto it = t.find(name);
        if (it == t.end()) return std::nullopt;
        return TensorMeta{it->second.dtype(), it->second.shape()};
    }
    Result<Tensor> get(std::string_view name) const override {
        auto it = t.find(name);
        if (it == t.end()) return make_error(ErrorCode::NOT_FOUND, "no ", std::string(name));
        return it->second;
    }
    std::string origin() const override { return "memory"; }
};

inline MMDiTConfig small_config() {
    MMDiTConfig c;
    c.sample_size = 8;
    c.patch_size = 2;
    c.in_channels = 4;
    c.out_channels = 4;
    c.num_layers = 3;
    c.attention_head_dim = 4;
    c.num_attention_heads = 2;
    c.caption_projection_dim = 8;
    c.joint_attention_dim = 6;
    c.pooled_projection_dim = 5;
    c.pos_embed_max_size = 4;
    c.qk_norm = "rms_norm";
    c.dual_attention_layers = {1};
    return c;
}

// Random weights for every tensor the config implies (std 0.3; RMSNorm weights around 1).
inline std::shared_ptr<MapSource> random_weights(const MMDiTConfig& c, std::mt19937& rng) {
    auto s = std::make_shared<MapSource>();
    const int64_t D = c.inner_dim(), p = c.patch_size, Dh = c.attention_head_dim;
    auto lin = [&](const std::string& n, int64_t out, int64_t in) {
        s->t[n + ".weight"] = random_tensor({out, in}, rng, 0.3f);
        s->t[n + ".bias"] = random_tensor({out}, rng, 0.1f);
    };
    auto rms = [&](const std::string& n) {
        Tensor w = random_tensor({Dh}, rng, 0.1f);
        for (int64_t i = 0; i < Dh; ++i) w.data<float>()[i] += 1.0f;
        s->t[n + ".weight"] = w;
    };
    s->t["pos_embed.proj.weight"] = random_tensor({D, c.in_channels, p, p}, rng, 0.3f);
    s->t["pos_embed.proj.bias"] = random_tensor({D}, rng, 0.1f);
    s->t["pos_embed.pos_embed"] = random_tensor({1, c.pos_embed_max_size * c.pos_embed_max_size, D}, rng, 0.3f);
    lin("time_text_embed.timestep_embedder.linear_1", D, 256);
    lin("time_text_embed.timestep_embedder.linear_2", D, D);
    lin("time_text_embed.text_embedder.linear_1", D, c.pooled_projection_dim);
    lin("time_text_embed.text_embedder.linear_2", D, D);
    lin("context_embedder", D, c.joint_attention_dim);
    for (int64_t i = 0; i < c.num_layers; ++i) {
        const std::string b = "transformer_blocks." + std::to_string(i);
        const bool last = i == c.num_layers - 1, dual = c.is_dual(i);
        lin(b + ".norm1.linear", (dual ? 9 : 6) * D, D);
        lin(b + ".norm1_context.linear", (last ? 2 : 6) * D, D);
        for (const char* n : {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"})
            lin(b + ".attn." + n, D, D);
        if (!last) lin(b + ".attn.to_add_out", D, D);
        for (const char* n : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"}) rms(b + ".attn." + n);
        if (dual) {
            for (const char* n : {"to_q", "to_k", "to_v", "to_out.0"}) lin(b + ".attn2." + n, D, D);
            rms(b + ".attn2.norm_q");
            rms(b + ".attn2.norm_k");
        }
        lin(b + ".ff.net.0.proj", 4 * D, D);
        lin(b + ".ff.net.2", D, 4 * D);
        if (!last) {
            lin(b + ".ff_context.net.0.proj", 4 * D, D);
            lin(b + ".ff_context.net.2", D, 4 * D);
        }
    }
    lin("norm_out.linear", 2 * D, D);
    lin("proj_out", p * p * c.out_channels, D);
    return s;
}

// Inputs for a small_config() model: latents [2, 4, 4, 6] (2x3 patches, non-square), context [2, 3, 6],
// pooled [2, 5], and two timesteps.
struct RandomInputs {
    Tensor x, t, ctx, pooled;
};
inline RandomInputs random_inputs(std::mt19937& rng) {
    RandomInputs in;
    in.x = random_tensor({2, 4, 4, 6}, rng);
    in.ctx = random_tensor({2, 3, 6}, rng);
    in.pooled = random_tensor({2, 5}, rng);
    in.t = Tensor::from_vector({2}, {310.0f, 870.0f});
    return in;
}

// Two forward and backward passes in a row of `m`, whose attached LoRA has `lora_numel` parameters, on the same
// inputs with d loss / d pred = pred: each step's prediction and LoRA gradients (from zeros on `grads_device`),
// both on the host.
struct TrainingStep {
    Tensor pred, grads;
};
inline std::vector<TrainingStep> two_training_steps(const MMDiT& m, const RandomInputs& in, bool checkpoint,
                                                    int64_t lora_numel, Device grads_device) {
    std::vector<TrainingStep> out;
    for (int step = 0; step < 2; ++step) {
        MMDiTActivations saved;
        saved.checkpoint_blocks = checkpoint;
        auto pred = m.forward(in.x, in.t, in.ctx, in.pooled, &saved);
        EXPECT_TRUE(pred.ok()) << pred.status().message();
        Tensor grads = ops::zeros({lora_numel}, grads_device);
        m.backward(*pred, saved, grads);
        out.push_back({*pred, to_host(grads)});
    }
    return out;
}

}  // namespace sd3::testing
