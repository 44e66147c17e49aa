// nn.Linear with optional LoRA adapters, forward and backward (DESIGN.md "Layers": nn/ blocks shared by models).
// A LoRA adapter adds `scale * B(A(dropout(x)))` to the frozen `x·Wᵀ + b` (peft Linear.forward, unmerged;
// reference-training.md §4.2), with scale = multiplier * alpha / rank. Several adapters may sit on one layer
// (inference with several LoRAs). A trainable adapter's A and B are views into one flat parameter buffer and it
// knows the offsets of its gradients in the flat gradient buffer of the same layout; frozen base weights never
// get gradients.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/quant.h"

namespace sd3::nn {

struct LoraAdapter {
    Tensor A;             // [r, in]
    Tensor B;             // [out, r]
    float scale = 1.0f;   // multiplier * alpha / r
    float dropout = 0.0f; // probability, applied to the adapter's input in training only
    int64_t grad_offset_a = -1;  // element offsets of dA / dB in the flat gradient buffer; -1: frozen adapter
    int64_t grad_offset_b = -1;
    int64_t rank() const { return A.size(0); }
    bool trainable() const { return grad_offset_a >= 0; }
};

struct Linear {
    std::string name;  // diffusers module path, "transformer_blocks.0.attn.to_q"
    uint64_t id = 0;   // stable per-layer number (hash of the name) that seeds this layer's dropout stream
    Tensor weight;     // [out, in]; undefined when the frozen weight is held quantized
    QuantizedMatrix qweight;  // the frozen weight in a storage format (int8, fp8, nf4), or undefined
    Tensor bias;       // [out] or undefined
    std::vector<LoraAdapter> loras;
    int64_t in_features() const { return weight.defined() ? weight.size(1) : qweight.cols; }
    int64_t out_features() const { return weight.defined() ? weight.size(0) : qweight.rows; }
};

// How a forward runs: training enables LoRA dropout; `seed` picks the dropout masks of this step (a recomputed
// forward with the same seed draws the same masks).
struct RunContext {
    bool training = false;
    uint64_t seed = 0;
};

// What the backward of one Linear needs: per adapter the (dropped-out) input and A·x. A layer without adapters
// keeps nothing (its frozen weight gives dx = dy·W).
struct LinearSaved {
    bool valid = false;      // set by linear_forward
    Tensor x;                // [..., in], only when the layer has adapters
    std::vector<Tensor> xd;  // per adapter: dropout(x) [..., in], undefined when no dropout was applied
    std::vector<Tensor> h;   // per adapter: A·xd [..., r]
    // What linear_forward keeps for a layer without adapters, for callers that run its GEMM themselves.
    static LinearSaved frozen() {
        LinearSaved s;
        s.valid = true;
        return s;
    }
};

uint64_t layer_id(const std::string& name);

// The layer's frozen weight [out, in] as a dense tensor of `like`'s dtype and device: a quantized weight is
// dequantized for the one GEMM that needs it (layer by layer: one layer's weight at a time).
Tensor dense_weight(const Linear& layer, const Tensor& like);

// y [..., out] = x·Wᵀ + b + Σ_adapters scale·B(A(dropout(x))). `saved` may be null (inference).
Tensor linear_forward(const Linear& layer, const Tensor& x, LinearSaved* saved, const RunContext& ctx);
// Returns dx [..., in] (undefined when !need_dx). Trainable adapters accumulate dA, dB into `lora_grads` (the flat
// gradient buffer, f32 [total]); the base weight and bias get no gradient (frozen). With `dx_sum` (contiguous, the
// shape of x) dx is added into it by accumulating GEMMs instead, and *dx_sum is returned: layers that read the
// same input (q, k, v) sum their input gradients without a temporary and an add_ pass each.
Tensor linear_backward(const Linear& layer, const Tensor& dy, const LinearSaved& saved, const RunContext& ctx,
                       Tensor& lora_grads, bool need_dx = true, Tensor* dx_sum = nullptr);

}  // namespace sd3::nn
