// Shared transformer pieces with explicit forward/backward and saved-activation structs: LayerNorm without affine
// (statistics saved), the feed-forward MLP (Linear -> GELU(tanh) -> Linear, diffusers FeedForward with
// "gelu-approximate"), and joint attention (diffusers JointAttnProcessor2_0: image and context projections
// concatenated [image, context] along the sequence, one SDPA, split back; optional per-head RMS qk-norm of SD3.5;
// a context_pre_only attention computes no context queries and has no to_add_out).
// sd3-architecture.md §2.5, §2.6, §1.10, §9.2.
#pragma once

#include "nn/linear.h"

namespace sd3::nn {

// ---- LayerNorm, no affine ----
struct NormSaved {
    Tensor x;           // [..., D] input
    Tensor mean, rstd;  // [rows]
    Tensor xhat;        // [..., D] normalized output
};
// Returns (x - mean) * rstd over the last dimension.
Tensor layer_norm_forward(const Tensor& x, float eps, NormSaved* saved);
// d x, plus `add` when given (the residual branch's gradient, summed in the same pass).
Tensor layer_norm_backward(const Tensor& dxhat, const NormSaved& saved, const Tensor& add = {});

// ---- FeedForward ----
struct FeedForward {
    Linear fc1;  // ff.net.0.proj [4D, D]
    Linear fc2;  // ff.net.2      [D, 4D]
};
struct FeedForwardSaved {
    LinearSaved fc1, fc2;
    Tensor pre;  // [..., 4D] fc1 output before the GELU
};
Tensor feed_forward(const FeedForward& ff, const Tensor& x, FeedForwardSaved* saved, const RunContext& ctx);
Tensor feed_forward_backward(const FeedForward& ff, const Tensor& dy, const FeedForwardSaved& saved,
                             const RunContext& ctx, Tensor& lora_grads);

// ---- Joint attention ----
struct JointAttention {
    int64_t heads = 0, head_dim = 0;
    float qk_norm_eps = 1e-6f;
    Linear to_q, to_k, to_v, to_out;  // image stream (to_out = to_out.0)
    bool has_context = true;          // false for SD3.5's image-only attn2
    bool context_pre_only = false;    // last block: context gives keys/values only
    Linear add_q_proj, add_k_proj, add_v_proj, to_add_out;  // add_q_proj is loaded but unused when pre-only
    Tensor norm_q, norm_k, norm_added_q, norm_added_k;       // [head_dim] RMSNorm weights; undefined: no qk-norm
    bool qk_norm() const { return norm_q.defined(); }
};
struct AttentionSaved {
    LinearSaved q, k, v, qc, kc, vc, out, add_out;
    Tensor q_raw, k_raw, qc_raw, kc_raw;          // projections before the qk-norm (only with qk-norm)
    Tensor q_rstd, k_rstd, qc_rstd, kc_rstd;
    Tensor Q, K, V, O, lse;                       // joint [B, T, D] tensors and [B, H, Tq] log-sum-exp
    int64_t n_image = 0;
};
// nx [B, N, D] (image), nc [B, M, D] (context; undefined for image-only attention). Writes the projected image
// output ax [B, N, D] and context output ac [B, M, D] (undefined when pre-only or image-only).
void joint_attention_forward(const JointAttention& attn, const Tensor& nx, const Tensor& nc, Tensor* ax, Tensor* ac,
                             AttentionSaved* saved, const RunContext& ctx);
// dac may be undefined (pre-only / image-only). Writes dnx and dnc (dnc undefined when there is no context).
void joint_attention_backward(const JointAttention& attn, const Tensor& dax, const Tensor& dac,
                              const AttentionSaved& saved, const RunContext& ctx, Tensor& lora_grads, Tensor* dnx,
                              Tensor* dnc);

}  // namespace sd3::nn
