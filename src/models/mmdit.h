// The SD3 / SD3.5 MMDiT (diffusers SD3Transformer2DModel): config, typed weights, forward for any batch and latent
// size, backward to LoRA parameters and to the three inputs, LoRA application (trainable, unfused, fused).
// Semantics: sd3-architecture.md §2 (forward), §9 (backward), §1.10 (SD3.5 qk-norm and dual attention).
//
// API for the trainer (all tensors f32 on one device, PyTorch dimension order):
//   MMDiT model = MMDiT::load(component).value();              // or MMDiT::create(config, source)
//   LoraTrainable lora = model.make_trainable_lora(cfg).value(); // layout: one flat params + one flat grads buffer
//   init_lora_gaussian(lora, normal_fn);  model.attach_trainable(lora);
//   MMDiTActivations saved; saved.checkpoint_blocks = true; saved.ctx = {true, step_seed};
//   Tensor pred = model.forward(x_t, t, ctx, pooled, &saved).value();     // [B, 16, H, W]
//   (loss, d_pred)...; lora.grads.fill(0) before a new accumulation
//   InputGrads g;  model.backward(d_pred, saved, lora.grads, &g);         // grads += ; g.* overwritten (may be null)
// Inference: forward(..., nullptr); attach_lora(set, multiplier) adds an unfused low-rank path (several sets may be
// attached, each with its own multiplier); fuse_lora(set, multiplier) folds W += m·(alpha/r)·B·A into a private copy
// of the affected weights.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/lora_file.h"
#include "io/tensor_source.h"
#include "nn/blocks.h"
#include "nn/lora.h"
#include "nn/placement.h"
#include "nn/streamed_blocks.h"

namespace sd3 {

struct Component;  // io/model_folder.h

// transformer/config.json (diffusers SD3Transformer2DModel constructor arguments; §1.2, §1.10).
struct MMDiTConfig {
    int64_t sample_size = 128;
    int64_t patch_size = 2;
    int64_t in_channels = 16;
    int64_t num_layers = 18;
    int64_t attention_head_dim = 64;
    int64_t num_attention_heads = 18;
    int64_t joint_attention_dim = 4096;
    int64_t caption_projection_dim = 1152;
    int64_t pooled_projection_dim = 2048;
    int64_t out_channels = 16;
    int64_t pos_embed_max_size = 96;
    std::string qk_norm;                    // "" (none) or "rms_norm"
    std::vector<int64_t> dual_attention_layers;

    int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
    bool is_dual(int64_t layer) const;
    // Reads and validates the JSON; unknown values (another qk_norm, inconsistent dims) are errors naming the file.
    static Result<MMDiTConfig> from_json(const nlohmann::json& j, const std::string& config_path);
    // Checks the config against the weight shapes of `source` (block count, widths), naming the first mismatch.
    Status check_against(const TensorSource& source) const;
};

// One JointTransformerBlock (diffusers attention.py JointTransformerBlock).
struct JointBlock {
    nn::Linear norm1;          // adaLN-Zero: [6D, D] (9D with dual attention)
    nn::Linear norm1_context;  // [6D, D], or [2D, D] (scale, shift) in the context_pre_only last block
    nn::JointAttention attn;
    bool dual = false;
    nn::JointAttention attn2;  // SD3.5 image-only self-attention (dual layers)
    nn::FeedForward ff;
    nn::FeedForward ff_context;  // absent in the last block
    bool context_pre_only = false;
};

struct MMDiTWeights {
    nn::Linear patch_embed;  // pos_embed.proj as a Linear: [D, C*p*p] over (c, py, px) patches
    Tensor pos_embed;        // [1, grid*grid, D], always on the host: a device gets the crops its forwards use
    nn::Linear time_linear_1, time_linear_2;  // time_text_embed.timestep_embedder.linear_{1,2}
    nn::Linear text_linear_1, text_linear_2;  // time_text_embed.text_embedder.linear_{1,2}
    nn::Linear context_embedder;
    std::vector<JointBlock> blocks;
    nn::Linear norm_out;  // [2D, D], chunks (scale, shift)
    nn::Linear proj_out;  // [p*p*out, D], (py, px, c) layout
};

// What one block's backward needs (all of it, or only the inputs under activation checkpointing).
struct JointBlockSaved {
    Tensor x_in, c_in;            // block inputs [B, N, D], [B, M, D]
    bool full = false;            // false: only the inputs were kept (checkpointing)
    nn::LinearSaved norm1, norm1_context;
    Tensor E, Ec;                 // adaLN outputs [B, 6D|9D], [B, 6D|2D]
    nn::NormSaved ln1, ln1c;      // LN of the inputs
    nn::AttentionSaved attn, attn2;
    Tensor ax, ac, ax2;           // projected attention outputs (gated into the residuals)
    nn::NormSaved ln2, ln2c;      // LN of the residuals after attention
    nn::FeedForwardSaved ff, ffc;
    Tensor fx, fc;                // feed-forward outputs
};

// Saved activations of one forward for the backward ("TrainState"). Set the options before forward().
struct MMDiTActivations {
    bool checkpoint_blocks = false;  // keep only block inputs; recompute each block in backward (same gradients)
    int64_t kept_blocks = 0;         // under checkpointing, the last N blocks keep their whole forward all the
                                     // same (what a memory budget leaves room for: they are not recomputed)
    nn::RunContext ctx{true, 0};     // training (LoRA dropout on) and the step's dropout seed
    bool device_output = false;      // the prediction stays where the model runs, in its compute dtype (the
                                     // trainer's loss runs there); otherwise it comes back as host float32

    // Filled by forward():
    int64_t batch = 0, height = 0, width = 0, hp = 0, wp = 0;
    nn::LinearSaved patch_embed, time_1, time_2, text_1, text_2, context_embedder, norm_out, proj_out;
    Tensor time_pre, text_pre;  // linear_1 outputs before SiLU [B, D]
    Tensor temb, silu_temb;     // [B, D]
    std::vector<JointBlockSaved> blocks;
    nn::NormSaved ln_out;
    Tensor E_out;               // [B, 2D]

    // Bytes held by the saved tensors (each storage counted once), for the memory report.
    size_t bytes() const;
};

// The memory plan of the saved activations of one training forward (float32 bytes, each storage once, as
// MMDiTActivations::bytes() measures them), for the start-up report. Depends on the attached adapters: only
// adapted Linears keep their inputs.
struct ActivationPlan {
    size_t blocks = 0;        // what the blocks keep (all of it, or only their inputs under checkpointing)
    size_t outer = 0;         // embeddings, conditioning and the output head
    size_t recompute = 0;     // one block's full saved forward, rebuilt during backward under checkpointing
    size_t total() const { return blocks + outer; }
    size_t peak() const { return total() + recompute; }
};

// Gradients of the loss with respect to the forward's inputs (overwritten by backward()).
struct InputGrads {
    Tensor hidden_states;          // [B, C, H, W]
    Tensor encoder_hidden_states;  // [B, M, joint_attention_dim]
    Tensor pooled_projections;     // [B, pooled_projection_dim]
};

// diffusers' own 2-D sin-cos table (embeddings.py get_2d_sincos_pos_embed, float64 math then float32):
// [1, grid*grid, dim], first half of the channels from the column, second half from the row, positions
// arange(grid) / (grid / base_size). The checkpoints store this buffer (fp16 in SD3 releases), and the model uses
// the stored one; this is for checking it and for tests whose reference kept the float32 table.
Tensor sincos_pos_embed(int64_t grid, int64_t base_size, int64_t dim);
// diffusers PatchEmbed.cropped_pos_embed: the hp x wp centre of a [1, grid*grid, D] host table (top = (grid - hp) // 2,
// left = (grid - wp) // 2) as [1, hp*wp, D], contiguous, on the host in the table's dtype.
Tensor crop_pos_embed(const Tensor& table, int64_t grid, int64_t hp, int64_t wp);

class MMDiT {
  public:
    // From a model folder's transformer component (config checked against the weights; every tensor used).
    // Weights become float32 (what the CPU computes in), or with `weights_as_stored` stay as the file stores them
    // (views of the file mapping, no host copy) for a model that goes to a device next: to() converts there.
    static Result<MMDiT> load(const Component& component, bool weights_as_stored = false);
    // From a diffusers `transformer/` folder: config.json + diffusion_pytorch_model(.safetensors | shards).
    static Result<MMDiT> load_dir(const std::string& dir);
    static Result<MMDiT> create(const MMDiTConfig& config, std::shared_ptr<const TensorSource> weights,
                                bool weights_as_stored = false);

    // Moves every weight into one allocation on the placement's device, float weights in its dtype (LoRAs attached
    // afterwards follow the model there). The CPU in float32 is where load() leaves it. With `base_format` (int8,
    // fp8, nf4) the joint blocks' Linear weights are quantized first and kept in that format (dequantized one layer
    // at a time for each matmul); the embedders and the output head stay in the compute dtype.
    // With `max_resident_bytes`, only the joint blocks that fit in it (after the embedders and the head, and
    // leaving room for the two slots the others take turns in) join the allocation; the others are packed into
    // pinned host memory and every forward and backward brings each in for its turn, the next block's copy
    // overlapping the current one's kernels (nn/streamed_blocks.h; for cards smaller than the model, `--max-vram`).
    Status to(const nn::Placement& placement, std::optional<QuantFormat> base_format = std::nullopt,
              size_t max_resident_bytes = SIZE_MAX);
    // What to() would place of a transformer's stored weights, read from their shapes alone (nothing loaded):
    // every tensor but the position table (kept on the host) in the compute dtype, the joint blocks' Linear weights in
    // `base_format` (scales left out: <1%).
    static size_t placed_bytes(const TensorSource& weights, const nn::Placement& placement,
                               std::optional<QuantFormat> base_format);
    int resident_blocks() const { return resident_blocks_; }
    const nn::Placement& placement() const { return placement_; }
    // Bytes of the weights the placement's device holds (quantized block weights at their storage size; for
    // streamed blocks, their slots; the position rows of the image sizes run so far), LoRA adapters excluded.
    size_t weight_bytes() const;

    const MMDiTConfig& config() const { return config_; }
    const MMDiTWeights& weights() const { return w_; }
    MMDiTWeights& mutable_weights() {  // for tests and tools that patch weights (crops of the old table go)
        pos_crops_.clear();
        return w_;
    }

    // hidden_states [B, in_channels, H, W] (H, W multiples of patch_size, H/p and W/p <= pos_embed_max_size),
    // timestep [B] (float, 0..1000), encoder_hidden_states [B, M, joint_attention_dim], pooled [B, pooled_dim].
    // Inputs may live on any device in any float dtype (they are moved to the placement; the timestep stays
    // float32). Returns [B, out_channels, H, W] float32 on the CPU. `saved` (may be null) receives what backward() needs. `skip_layers` lists
    // blocks to skip (SD3.5 skip-layer guidance, diffusers `skip_layers`; inference only).
    Result<Tensor> forward(const Tensor& hidden_states, const Tensor& timestep, const Tensor& encoder_hidden_states,
                           const Tensor& pooled_projections, MMDiTActivations* saved = nullptr,
                           const std::vector<int64_t>& skip_layers = {}) const;
    // Inference as forward(..., nullptr, skip_layers), the output left float32 on the model's device: the
    // sampler's loop keeps its latents there and never waits for the device between steps.
    Result<Tensor> forward_on_device(const Tensor& hidden_states, const Tensor& timestep,
                                     const Tensor& encoder_hidden_states, const Tensor& pooled_projections,
                                     const std::vector<int64_t>& skip_layers = {}) const;
    // dout [B, out_channels, H, W] (any device and float dtype). Accumulates trainable LoRA gradients into
    // `lora_grads` (flat float32 on the placement's device, the layout of the attached LoraTrainable); fills
    // `inputs` (float32, CPU) when given. Frozen weights get no gradients.
    void backward(const Tensor& dout, MMDiTActivations& saved, Tensor& lora_grads, InputGrads* inputs = nullptr) const;

    // Saved-activation bytes of forward(x [batch, C, height, width], ctx [batch, context_len, ·], &saved) with the
    // given checkpointing, for the adapters attached now (training context: LoRA dropout keeps its masked inputs).
    ActivationPlan plan_activations(int64_t batch, int64_t height, int64_t width, int64_t context_len,
                                    bool checkpoint_blocks, int64_t kept_blocks = 0) const;

    // ---- LoRA ----
    // Every Linear of the model by diffusers module path (for LoRA targeting and name checks).
    std::vector<nn::Linear*> linears();
    std::vector<const nn::Linear*> linears() const;
    nn::Linear* find_linear(const std::string& module_path);
    // Builds the trainable layout for the config's targets (error when a target matches no module).
    Result<LoraTrainable> make_trainable_lora(const LoraTrainConfig& cfg) const;
    // Adds trainable adapters viewing lora.params (shared storage: the optimizer's in-place updates are seen by the
    // next forward; re-attach after replacing the buffer), with gradient offsets into the same layout.
    Status attach_trainable(const LoraTrainable& lora);
    // Unfused inference LoRA at multiplier m: adds m·(alpha/r)·B(A x). Error listing keys that match no module.
    Status attach_lora(const LoraSet& set, float multiplier);
    // W += m·(alpha/r)·B·A into private copies of the affected weights.
    Status fuse_lora(const LoraSet& set, float multiplier);
    void detach_loras();

  private:
    // forward()'s body; the output stays on the device in the compute dtype when `output_on_device`.
    Result<Tensor> run_forward(const Tensor& hidden_states, const Tensor& timestep, const Tensor& encoder_hidden_states,
                               const Tensor& pooled_projections, MMDiTActivations* saved,
                               const std::vector<int64_t>& skip_layers, bool output_on_device) const;
    // Block i's weights where the placement computes: itself when resident, else `staged` bound to its copy in a
    // streaming slot (valid until block i ± 2 is asked for). `next`: the block asked for after this one, whose copy
    // then starts early (-1: none).
    const JointBlock& block_weights(size_t i, JointBlock& staged, int64_t next) const;
    // One joint block on x and c (replaced by its outputs). With `saved`, keeps what block_backward needs. Each
    // LayerNorm runs fused with its modulation (training also keeps the LayerNorm's output). At inference (no
    // `saved`, ctx not training) with `overwrite_inputs` (nothing else holds x and c) the residuals are added into
    // their memory, not into copies.
    void block_forward(const JointBlock& blk, Tensor& x, Tensor& c, const Tensor& silu_temb, JointBlockSaved* saved,
                       const nn::RunContext& ctx, bool overwrite_inputs = false) const;
    void block_backward(const JointBlock& blk, Tensor& dx, Tensor& dc, Tensor& dsilu_temb, const JointBlockSaved& s,
                        const nn::RunContext& ctx, Tensor& lora_grads) const;
    Status check_lora_set(const LoraSet& set) const;
    // The position rows a forward of hp x wp patches adds, on the placement: the table's centre crop, made on the
    // first forward of that size and kept (a recorded step or sampler call reads it again on replay).
    const Tensor& position_rows(int64_t hp, int64_t wp) const;

    MMDiTConfig config_;
    MMDiTWeights w_;
    nn::Placement placement_;
    int resident_blocks_ = 0;  // blocks [0, resident_blocks_) are in place; the rest stream in (set by load and to())
    std::shared_ptr<nn::StreamedBlocks> streamed_;  // blocks [resident_blocks_, num_layers), when any
    // Crops of w_.pos_embed by patch grid (hp, wp). The full table (113 MB in bf16 for SD3's 192 x 192 grid) stays on
    // the host; a training run or an image size needs one crop (3 MB at 512², 13 MB at 1024²).
    mutable std::map<std::pair<int64_t, int64_t>, Tensor> pos_crops_;
};

}  // namespace sd3
