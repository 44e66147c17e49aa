// CLIP text encoder (transformers' CLIPTextModelWithProjection), as SD3 uses it for CLIP-L (quick_gelu) and
// CLIP-G (gelu): token + position embeddings, pre-LN layers with causal attention, final LayerNorm, pooled output
// at the first EOS through text_projection. SD3 takes the penultimate layer's output (without the final norm)
// and the projected pooled output (research/sd3-architecture.md §1.4-1.5, §5). float32 on the CPU.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "nn/placement.h"
#include "io/tensor_source.h"
#include "ops/cpu/cpu_ops.h"

namespace sd3 {

struct ClipTextConfig {
    int64_t vocab_size = 49408;
    int64_t hidden_size = 768;
    int64_t intermediate_size = 3072;
    int64_t num_layers = 12;
    int64_t num_heads = 12;
    int64_t max_positions = 77;
    int64_t projection_dim = 768;
    float layer_norm_eps = 1e-5f;
    cpu::Activation act = cpu::Activation::QUICK_GELU;  // "quick_gelu" (CLIP-L) or "gelu" = erf GELU (CLIP-G)
    // transformers' pooling rule: eos_token_id == 2 (the legacy value of the SD3 configs) pools at argmax(ids),
    // which is the first 49407; any other value pools at the first position holding that id (§5.3).
    int64_t eos_token_id = 2;

    int64_t head_dim() const { return hidden_size / num_heads; }
    // transformers' CLIPTextConfig from config.json; `config_path` names the file in errors.
    static Result<ClipTextConfig> from_json(const nlohmann::json& j, const std::string& config_path);
};

struct ClipLayerWeights {
    Tensor ln1_w, ln1_b;           // [D]
    Tensor q_w, k_w, v_w, out_w;   // [D, D]
    Tensor q_b, k_b, v_b, out_b;   // [D]
    Tensor ln2_w, ln2_b;           // [D]
    Tensor fc1_w, fc1_b;           // [I, D], [I]
    Tensor fc2_w, fc2_b;           // [D, I], [D]
};

struct ClipTextWeights {
    Tensor token_embedding;     // [V, D]
    Tensor position_embedding;  // [P, D]
    std::vector<ClipLayerWeights> layers;
    Tensor final_ln_w, final_ln_b;  // [D]
    Tensor text_projection;         // [proj, D], no bias
};

struct ClipTextOutput {
    Tensor penultimate;  // [B, T, D]  hidden_states[-(clip_skip + 2)]: layer N-2's output by default, no final norm
    Tensor last_hidden;  // [B, T, D]  final_layer_norm(output of the last layer)
    Tensor pooled;       // [B, proj]  text_projection(last_hidden[b, eos_position(b)])
};

class ClipTextModel {
  public:
    // Takes every tensor of the source with the shape the config implies (float32), and fails on any unused one.
    static Result<ClipTextModel> load(const ClipTextConfig& config, std::shared_ptr<const TensorSource> source);

    // ids [B, T] (int32 or int64, T <= max_positions), without an attention mask (SD3 passes none; only the causal
    // mask applies). clip_skip 0 is SD3's default (hidden_states[-2]).
    Result<ClipTextOutput> forward(const Tensor& ids, int clip_skip = 0) const;

    // Moves the transformer layers into one allocation on the placement's device (float weights in its dtype).
    // The token/position embeddings and the projection stay on the CPU in float32: the lookup checks every id
    // there, and the pooled rows are few. forward() returns float32 tensors on the CPU either way.
    Status to(const nn::Placement& placement);

    const ClipTextConfig& config() const { return config_; }
    const ClipTextWeights& weights() const { return weights_; }
    size_t weight_bytes() const;

  private:
    ClipTextConfig config_;
    ClipTextWeights weights_;
    nn::Placement placement_;
};

// Position of the pooled token in each row of ids [B, T] (§5.3): argmax(ids) when eos_token_id == 2, else the
// first position equal to eos_token_id (0 when there is none, as torch's argmax of an all-false row).
std::vector<int64_t> clip_pool_positions(const Tensor& ids, int64_t eos_token_id);

// Rows of `table` [V, D] (any float dtype) picked by ids [B, T] (int32/int64) -> f32 [B, T, D]; an id outside
// [0, V) is an error naming it.
Result<Tensor> embedding_lookup(const Tensor& table, const Tensor& ids, const std::string& what);

}  // namespace sd3
