// LayerNorm, FeedForward and joint attention forward/backward (nn/blocks.h), through ops/ only.
#include "nn/blocks.h"

#include <cmath>

#include "core/check.h"
#include "ops/mmdit_ops.h"

namespace sd3::nn {

Tensor layer_norm_forward(const Tensor& x, float eps, NormSaved* saved) {
    Tensor mean, rstd;
    Tensor xhat = ops::layer_norm_fwd(x, eps, &mean, &rstd);
    if (saved != nullptr) *saved = NormSaved{x, mean, rstd, xhat};
    return xhat;
}

Tensor layer_norm_backward(const Tensor& dxhat, const NormSaved& saved, const Tensor& add) {
    return ops::layer_norm_backward(dxhat, saved.x, saved.mean, saved.rstd, add);
}

Tensor feed_forward(const FeedForward& ff, const Tensor& x, FeedForwardSaved* saved, const RunContext& ctx) {
    // A plain fc1 applies the GELU in its GEMM's epilogue (one pass less over the 4D-wide activations). In training
    // the epilogue also stores the pre-activation the backward needs, even when this forward keeps nothing: the
    // checkpointed forward and its recomputation then run the same GEMM and give the same bits. Adapters add to
    // the pre-activation and quantized weights have their own GEMM: those take the separate ops.
    if (ff.fc1.loras.empty() && !ff.fc1.qweight.defined()) {
        Tensor act;
        if (saved == nullptr && !ctx.training) {
            act = ops::linear_gelu_tanh(x, ff.fc1.weight, ff.fc1.bias);
        } else {
            Tensor pre;
            act = ops::linear_gelu_tanh(x, ff.fc1.weight, ff.fc1.bias, &pre);
            if (saved != nullptr) {
                saved->fc1 = LinearSaved::frozen();
                saved->pre = pre;
            }
        }
        return linear_forward(ff.fc2, act, saved ? &saved->fc2 : nullptr, ctx);
    }
    Tensor pre = linear_forward(ff.fc1, x, saved ? &saved->fc1 : nullptr, ctx);  // [..., 4D]
    Tensor act = ops::activation(pre, ops::Activation::GELU_TANH);
    if (saved != nullptr) saved->pre = pre;
    return linear_forward(ff.fc2, act, saved ? &saved->fc2 : nullptr, ctx);
}

Tensor feed_forward_backward(const FeedForward& ff, const Tensor& dy, const FeedForwardSaved& saved,
                             const RunContext& ctx, Tensor& lora_grads) {
    // Without adapters on fc2, its input gradient passes the GELU in the GEMM's epilogue.
    const Tensor dpre =
        ff.fc2.loras.empty()
            ? ops::linear_backward_gelu_tanh(dy, dense_weight(ff.fc2, dy), saved.pre)
            : ops::activation_backward(linear_backward(ff.fc2, dy, saved.fc2, ctx, lora_grads), saved.pre,
                                       ops::Activation::GELU_TANH);
    return linear_backward(ff.fc1, dpre, saved.fc1, ctx, lora_grads);
}

namespace {

// Per-head RMSNorm of a [B, T, H*Dh] projection (diffusers applies norm_q/norm_k after the head split).
Tensor head_rms(const JointAttention& a, const Tensor& x, const Tensor& w, Tensor* raw, Tensor* rstd) {
    Tensor r;
    Tensor y = ops::rms_norm_fwd(x.view({-1, a.head_dim}), w, a.qk_norm_eps, &r).view(x.shape());
    if (raw != nullptr) *raw = x;
    if (rstd != nullptr) *rstd = r;
    return y;
}

Tensor head_rms_backward(const JointAttention& a, const Tensor& dy, const Tensor& raw, const Tensor& w,
                         const Tensor& rstd) {
    return ops::rms_norm_backward(dy.view({-1, a.head_dim}), raw.view({-1, a.head_dim}), w, rstd, nullptr)
        .view(raw.shape());
}

// Projection + optional qk-norm.
Tensor project(const JointAttention& a, const Linear& lin, const Tensor& x, const Tensor& norm_w, LinearSaved* ls,
               Tensor* raw, Tensor* rstd, const RunContext& ctx) {
    Tensor y = linear_forward(lin, x, ls, ctx);
    if (!norm_w.defined()) return y;
    return head_rms(a, y, norm_w, raw, rstd);
}

// Backward of project(): returns d(input).
Tensor project_backward(const JointAttention& a, const Linear& lin, const Tensor& dy, const Tensor& norm_w,
                        const LinearSaved& ls, const Tensor& raw, const Tensor& rstd, const RunContext& ctx,
                        Tensor& lora_grads, Tensor* dx_sum = nullptr) {
    const Tensor d = norm_w.defined() ? head_rms_backward(a, dy, raw, norm_w, rstd) : dy;
    return linear_backward(lin, d, ls, ctx, lora_grads, true, dx_sum);
}

}  // namespace

void joint_attention_forward(const JointAttention& a, const Tensor& nx, const Tensor& nc, Tensor* ax, Tensor* ac,
                             AttentionSaved* saved, const RunContext& ctx) {
    AttentionSaved local;
    AttentionSaved& s = saved != nullptr ? *saved : local;
    const bool ctx_stream = a.has_context;
    SD3_ASSERT(ctx_stream == nc.defined(), "joint attention: context input ", nc.defined() ? "given" : "missing");
    const int64_t N = nx.size(1);
    s.n_image = N;

    const Tensor q = project(a, a.to_q, nx, a.norm_q, &s.q, &s.q_raw, &s.q_rstd, ctx);  // [B, N, D]
    const Tensor k = project(a, a.to_k, nx, a.norm_k, &s.k, &s.k_raw, &s.k_rstd, ctx);  // [B, N, D]
    const Tensor v = linear_forward(a.to_v, nx, &s.v, ctx);                              // [B, N, D]
    if (ctx_stream) {
        const Tensor kc = project(a, a.add_k_proj, nc, a.norm_added_k, &s.kc, &s.kc_raw, &s.kc_rstd, ctx);  // [B, M, D]
        const Tensor vc = linear_forward(a.add_v_proj, nc, &s.vc, ctx);                                     // [B, M, D]
        // Diffusers order: image tokens first, then context (attention_processor.py JointAttnProcessor2_0).
        s.K = ops::cat({k, kc}, 1);  // [B, N+M, D]
        s.V = ops::cat({v, vc}, 1);  // [B, N+M, D]
        if (a.context_pre_only) {
            s.Q = q;  // the context queries' outputs are discarded (§2.6), so they are not computed
        } else {
            const Tensor qc = project(a, a.add_q_proj, nc, a.norm_added_q, &s.qc, &s.qc_raw, &s.qc_rstd, ctx);
            s.Q = ops::cat({q, qc}, 1);  // [B, N+M, D]
        }
    } else {
        s.Q = q;
        s.K = k;
        s.V = v;
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));  // SDPA default scale
    s.O = ops::attention_fwd(s.Q, s.K, s.V, a.heads, scale, &s.lse);     // [B, Tq, D]
    const Tensor o_img = ops::slice_contiguous(s.O, 1, 0, N);                 // [B, N, D]
    *ax = linear_forward(a.to_out, o_img, &s.out, ctx);
    if (ctx_stream && !a.context_pre_only) {
        const Tensor o_ctx = ops::slice_contiguous(s.O, 1, N, s.O.size(1));  // [B, M, D]
        *ac = linear_forward(a.to_add_out, o_ctx, &s.add_out, ctx);
    } else if (ac != nullptr) {
        *ac = Tensor();
    }
}

void joint_attention_backward(const JointAttention& a, const Tensor& dax, const Tensor& dac,
                              const AttentionSaved& s, const RunContext& ctx, Tensor& lora_grads, Tensor* dnx,
                              Tensor* dnc) {
    const int64_t N = s.n_image;
    const bool ctx_stream = a.has_context;
    const bool ctx_queries = ctx_stream && !a.context_pre_only;
    Tensor dO = linear_backward(a.to_out, dax, s.out, ctx, lora_grads);  // [B, N, D]
    if (ctx_queries) {
        SD3_ASSERT(dac.defined(), "joint attention backward: missing the context output gradient");
        dO = ops::cat({dO, linear_backward(a.to_add_out, dac, s.add_out, ctx, lora_grads)}, 1);  // [B, N+M, D]
    }
    Tensor dQ, dK, dV;  // [B, Tq, D], [B, Tk, D], [B, Tk, D]
    const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
    ops::attention_backward(dO, s.Q, s.K, s.V, s.O, s.lse, a.heads, scale, &dQ, &dK, &dV);
    const int64_t Tk = s.K.size(1);
    const Tensor dq = ctx_queries ? ops::slice_contiguous(dQ, 1, 0, N) : dQ;
    const Tensor dk = ctx_stream ? ops::slice_contiguous(dK, 1, 0, N) : dK;
    const Tensor dv = ctx_stream ? ops::slice_contiguous(dV, 1, 0, N) : dV;
    // The three projections read the same input: their input gradients accumulate into one tensor.
    Tensor gx = project_backward(a, a.to_q, dq, a.norm_q, s.q, s.q_raw, s.q_rstd, ctx, lora_grads);
    project_backward(a, a.to_k, dk, a.norm_k, s.k, s.k_raw, s.k_rstd, ctx, lora_grads, &gx);
    linear_backward(a.to_v, dv, s.v, ctx, lora_grads, true, &gx);
    *dnx = gx;
    if (!ctx_stream) {
        if (dnc != nullptr) *dnc = Tensor();
        return;
    }
    const Tensor dkc = ops::slice_contiguous(dK, 1, N, Tk);
    const Tensor dvc = ops::slice_contiguous(dV, 1, N, Tk);
    Tensor gc = project_backward(a, a.add_k_proj, dkc, a.norm_added_k, s.kc, s.kc_raw, s.kc_rstd, ctx, lora_grads);
    linear_backward(a.add_v_proj, dvc, s.vc, ctx, lora_grads, true, &gc);
    if (ctx_queries) {
        const Tensor dqc = ops::slice_contiguous(dQ, 1, N, dQ.size(1));
        project_backward(a, a.add_q_proj, dqc, a.norm_added_q, s.qc, s.qc_raw, s.qc_rstd, ctx, lora_grads, &gc);
    }
    *dnc = gc;
}

}  // namespace sd3::nn
