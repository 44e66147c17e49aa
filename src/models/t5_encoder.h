// T5 v1.1 encoder (transformers' T5EncoderModel), as SD3 uses T5-XXL: RMSNorm (T5LayerNorm), relative position
// buckets computed once and shared by every block, unscaled attention without a mask, gated-GELU (gelu_new)
// feed-forward (research/sd3-architecture.md §1.6, §6). The Linear weights are held in a storage format chosen at
// load (io/quant.h, docs/quantization.md); the forward is one block at a time so a weight streamer can slot in.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/quant.h"
#include "io/tensor_source.h"
#include "nn/placement.h"
#include "nn/streamed_blocks.h"

namespace sd3 {

struct T5Config {
    int64_t vocab_size = 32128;
    int64_t d_model = 4096;
    int64_t d_kv = 64;
    int64_t num_heads = 64;
    int64_t d_ff = 10240;
    int64_t num_layers = 24;
    int64_t num_buckets = 32;
    int64_t max_distance = 128;
    float layer_norm_eps = 1e-6f;

    int64_t inner_dim() const { return num_heads * d_kv; }
    // transformers' T5Config from config.json (only the gated-gelu v1.1 encoder is supported).
    static Result<T5Config> from_json(const nlohmann::json& j, const std::string& config_path);
};

// The T5WeightFormat option: the storage format of the attention and feed-forward Linear weights.
using T5WeightFormat = QuantFormat;

struct T5LoadOptions {
    // int8 by default, as the reference trains (bitsandbytes load_in_8bit; research/reference-training.md §1.4).
    T5WeightFormat format = T5WeightFormat::INT8_ROW;
    // The feed-forward output projection `wo` is not quantized: it keeps its stored dtype, as transformers keeps it
    // in fp32 (`_keep_in_fp32_modules = ["wo"]`) under int8 and fp16 (§6.3). Backends must feed it float32 (or
    // bf16) activations: T5-XXL's feed-forward activations overflow fp16. False quantizes wo like the rest.
    bool keep_wo_unquantized = true;
    int64_t nf4_block_size = 64;
};

struct T5BlockWeights {
    Tensor attn_norm;             // [d_model] f32, layer.0.layer_norm
    QuantizedMatrix q, k, v;      // [inner, d_model]
    QuantizedMatrix o;            // [d_model, inner]
    Tensor ff_norm;               // [d_model] f32, layer.1.layer_norm
    QuantizedMatrix wi_0, wi_1;   // [d_ff, d_model]; gelu_new(h·wi_0ᵀ) * (h·wi_1ᵀ)
    QuantizedMatrix wo;           // [d_model, d_ff]
    size_t bytes() const;
};

struct T5Weights {
    Tensor shared;                   // [vocab, d_model] as stored (any float dtype), the token embedding
    Tensor relative_attention_bias;  // [num_buckets, num_heads] f32, block 0's, used by every block
    std::vector<T5BlockWeights> blocks;
    Tensor final_norm;               // [d_model] f32
};

// T5's bidirectional relative position bucket of rel = key_pos - query_pos (§6.1, computed in float32 as
// transformers' T5Attention._relative_position_bucket).
int64_t t5_relative_position_bucket(int64_t rel, int64_t num_buckets, int64_t max_distance);

class T5Encoder {
  public:
    // Quantizes the Linear weights to options.format at load, one tensor at a time (an fp8 file stays fp8 when
    // fp8 is asked for). Every tensor of the source must be used.
    static Result<T5Encoder> load(const T5Config& config, std::shared_ptr<const TensorSource> source,
                                  const T5LoadOptions& options = {});

    // Moves the blocks to the placement's device (quantized data as stored, norms in its dtype), as many as fit
    // in `max_resident_bytes` in one allocation with the streaming slots; the rest are packed into pinned host
    // memory and streamed in by every forward, the next block's copy overlapping the current one's kernels
    // (nn/streamed_blocks.h). The embedding table stays on the CPU (the lookup checks ids there). On the CPU a
    // budget does the same between host allocations (the streaming path, testable without a GPU).
    Status to(const nn::Placement& placement, size_t max_resident_bytes = SIZE_MAX);
    int resident_blocks() const { return resident_blocks_; }

    // ids [B, L] (int32/int64) -> last_hidden_state [B, L, d_model] float32 on the CPU, no attention mask (SD3
    // passes none).
    Result<Tensor> forward(const Tensor& ids) const;
    // The same for several batches with one pass over the weights (block outer, batches inner), so streamed
    // blocks are uploaded once for all of them.
    Result<std::vector<Tensor>> forward_batches(const std::vector<Tensor>& ids) const;

    // The forward's pieces, in order, for a caller that streams blocks' weights in and out:
    Result<Tensor> embed(const Tensor& ids) const;   // [B, L, d_model]
    Tensor position_bias(int64_t length) const;      // [H, L, L] from block 0's table
    static Tensor block_forward(const T5Config& c, const T5BlockWeights& w, const Tensor& x, const Tensor& bias);
    Tensor final_norm(const Tensor& x) const;        // [B, L, d_model]

    const T5Config& config() const { return config_; }
    const T5Weights& weights() const { return weights_; }
    const T5LoadOptions& options() const { return options_; }
    size_t weight_bytes() const;

  private:
    T5Config config_;
    T5LoadOptions options_;
    T5Weights weights_;
    nn::Placement placement_;
    int resident_blocks_ = 0;  // blocks [0, resident_blocks_) are in place; the rest stream in (load: all)
    std::shared_ptr<nn::StreamedBlocks> streamed_;  // blocks [resident_blocks_, num_layers), when any
};

}  // namespace sd3
