// Tensor-level CUDA ops of tensor_ops_model.h: device/dtype checks, device-side contiguous copies, result
// allocation and workspace sizing around the launchers. Shapes were checked by the dispatching ops/*.cpp.
#include "ops/cuda/tensor_ops_model.h"

#include <cuda_runtime.h>

#include "core/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/model_ops.h"
#include "ops/cuda/tensor_ops.h"

namespace sd3::cuda::tensor_ops {

namespace {

bool is_float16_or_32(DType dt) { return dt == DType::F32 || dt == DType::BF16 || dt == DType::F16; }

// `t` on like's device, in like's dtype.
void require(const Tensor& t, const Tensor& like, const char* what) {
    SD3_ASSERT(t.defined(), what, " is undefined");
    SD3_ASSERT(t.device() == like.device(), what, " must be on ", like.device().str(), ", got ", t.describe());
    SD3_ASSERT(t.dtype() == like.dtype(), what, " must be ", dtype_name(like.dtype()), " like the input, got ",
               t.describe());
    SD3_ASSERT(is_float16_or_32(t.dtype()), what, ": CUDA ops take f32, bf16 or f16, got ", t.describe());
}

// A parameter-like gradient: on like's device, in like's dtype or F32 (master gradients).
void require_grad(const Tensor& g, const Tensor& like, const char* what) {
    SD3_ASSERT(g.defined() && g.device() == like.device(), what, " must be on ", like.device().str(), ", got ",
               g.defined() ? g.describe() : "undefined");
    SD3_ASSERT(g.dtype() == like.dtype() || g.dtype() == DType::F32, what, " must be ", dtype_name(like.dtype()),
               " or f32, got ", g.describe());
}

// The dtype two optional gradients accumulate in (they must agree: one launcher argument).
DType grad_dtype(const Tensor* a, const Tensor* b, DType fallback) {
    if (a != nullptr && b != nullptr)
        SD3_ASSERT(a->dtype() == b->dtype(), "parameter gradients of one call must share a dtype: ", a->describe(),
                   " vs ", b->describe());
    return a != nullptr ? a->dtype() : b != nullptr ? b->dtype() : fallback;
}

Context& ctx_of(const Tensor& t) { return Context::get(t.device().index); }
Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }
void* raw_or_null(Tensor* t) { return t != nullptr ? t->raw() : nullptr; }

AttentionShape attention_shape(const Tensor& q, const Tensor& k, int64_t heads, float scale, bool causal) {
    return AttentionShape{q.size(0), heads, q.size(1), k.size(1), q.size(2) / heads, scale, causal};
}

constexpr size_t kAttentionScratch = size_t{256} << 20;  // the chunked attention's score budget

}  // namespace

Tensor zeros(const Shape& shape, Device device, DType dtype) {
    Context& ctx = Context::get(device.index);  // first: it registers the device allocator
    Tensor t = Tensor::empty(shape, dtype, device);
    // All-zero bits are 0 in every dtype.
    if (t.nbytes() > 0) {
        const cudaError_t err = cudaMemsetAsync(t.raw(), 0, t.nbytes(), ctx.stream());
        SD3_ASSERT(err == cudaSuccess, "zeros on ", device.str(), ": ", cudaGetErrorString(err));
    }
    return t;
}

Tensor copy(const Tensor& x) {
    Tensor out = empty_like(x);
    cuda::copy_strided(ctx_of(x).exec(), out.raw(), out.dtype(), out.strides().data(), x.raw(), x.dtype(),
                       x.strides().data(), x.shape().data(), x.dim());
    return out;
}

Tensor linear_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in, Tensor* dw, Tensor* db,
                       bool need_dx, float alpha) {
    require(dy_in, dy_in, "linear_backward dy");
    require(w_in, dy_in, "linear_backward weight");
    if (x_in.defined()) require(x_in, dy_in, "linear_backward x");
    if (dw != nullptr) require_grad(*dw, dy_in, "linear_backward dw");
    if (db != nullptr) require_grad(*db, dy_in, "linear_backward db");
    const Tensor dy = contiguous(dy_in), w = contiguous(w_in);
    const Tensor x = x_in.defined() ? contiguous(x_in) : Tensor();
    const int64_t K = w.size(1), N = w.size(0), M = dy.numel() / N;
    Tensor dx;
    if (need_dx) {
        Shape s = dy.shape();
        s.back() = K;
        dx = Tensor::empty(s, dy.dtype(), dy.device());
    }
    const DType grad_dt = grad_dtype(dw, db, dy.dtype());
    cuda::linear_bwd(ctx_of(dy).exec(db != nullptr ? linear_bwd_workspace(M, N) : 0), need_dx ? dx.raw() : nullptr,
                     raw_or_null(dw), raw_or_null(db), dy.raw(), x.defined() ? x.raw() : nullptr, w.raw(), M, K, N,
                     dy.dtype(), grad_dt, alpha);
    return dx;
}

Tensor linear_backward_gelu_tanh(const Tensor& dy_in, const Tensor& w_in, const Tensor& pre_in) {
    require(dy_in, dy_in, "linear_backward_gelu_tanh dy");
    require(w_in, dy_in, "linear_backward_gelu_tanh weight");
    require(pre_in, dy_in, "linear_backward_gelu_tanh pre-activation");
    const Tensor dy = contiguous(dy_in), w = contiguous(w_in), pre = contiguous(pre_in);
    const int64_t K = w.size(1), N = w.size(0), M = dy.numel() / N;
    Tensor dpre = Tensor::empty(pre.shape(), dy.dtype(), dy.device());
    cuda::linear_bwd_dgelu(ctx_of(dy).exec(), dpre.raw(), dy.raw(), w.raw(), pre.raw(), M, K, N, dy.dtype());
    return dpre;
}

void linear_acc_(Tensor& y, const Tensor& x_in, const Tensor& w_in, float alpha, bool w_is_kn) {
    require(y, y, "linear_acc_ y");
    require(x_in, y, "linear_acc_ x");
    require(w_in, y, "linear_acc_ w");
    const Tensor x = contiguous(x_in), w = contiguous(w_in);
    const int64_t N = y.size(-1), K = x.size(-1);
    cuda::gemm(ctx_of(y).exec(), false, !w_is_kn, y.numel() / N, N, K, alpha, x.raw(), K, w.raw(), w_is_kn ? N : K,
               1.0f, y.raw(), N, y.dtype(), y.dtype());
}

Tensor layer_norm_fwd(const Tensor& x_in, float eps, Tensor* mean, Tensor* rstd) {
    require(x_in, x_in, "layer_norm input");
    const Tensor x = contiguous(x_in);
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    Tensor y = empty_like(x);
    *mean = Tensor::empty({rows}, DType::F32, x.device());
    *rstd = Tensor::empty({rows}, DType::F32, x.device());
    cuda::layer_norm_fwd(ctx_of(x).exec(), y.raw(), mean->data<float>(), rstd->data<float>(), x.raw(), nullptr,
                         nullptr, rows, cols, eps, x.dtype());
    return y;
}

Tensor layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& mean_in, const Tensor& rstd_in,
                           const Tensor& add_in) {
    require(dy_in, x_in, "layer_norm_backward dy");
    require(x_in, x_in, "layer_norm_backward x");
    if (add_in.defined()) require(add_in, x_in, "layer_norm_backward add");
    const Tensor dy = contiguous(dy_in), x = contiguous(x_in), mean = contiguous(mean_in), rstd = contiguous(rstd_in);
    const Tensor add = add_in.defined() ? contiguous(add_in) : Tensor();
    SD3_ASSERT(mean.dtype() == DType::F32 && rstd.dtype() == DType::F32 && mean.device() == x.device(),
               "layer_norm_backward: statistics must be f32 on ", x.device().str());
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    Tensor dx = empty_like(x);
    cuda::layer_norm_bwd(ctx_of(x).exec(), dx.raw(), nullptr, nullptr, dy.raw(), x.raw(), nullptr, mean.data<float>(),
                         rstd.data<float>(), rows, cols, x.dtype(), x.dtype(), add.defined() ? add.raw() : nullptr);
    return dx;
}

Tensor rms_norm_fwd(const Tensor& x_in, const Tensor& w_in, float eps, Tensor* rstd) {
    require(x_in, x_in, "rms_norm input");
    if (w_in.defined()) require(w_in, x_in, "rms_norm weight");
    const Tensor x = contiguous(x_in), w = w_in.defined() ? contiguous(w_in) : Tensor();
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    Tensor y = empty_like(x);
    *rstd = Tensor::empty({rows}, DType::F32, x.device());
    cuda::rms_norm_fwd(ctx_of(x).exec(), y.raw(), rstd->data<float>(), x.raw(), w.defined() ? w.raw() : nullptr, rows,
                       cols, eps, x.dtype());
    return y;
}

Tensor rms_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in, const Tensor& rstd_in,
                         Tensor* dw) {
    require(dy_in, x_in, "rms_norm_backward dy");
    require(x_in, x_in, "rms_norm_backward x");
    if (w_in.defined()) require(w_in, x_in, "rms_norm_backward weight");
    if (dw != nullptr) require_grad(*dw, x_in, "rms_norm_backward dw");
    const Tensor dy = contiguous(dy_in), x = contiguous(x_in), rstd = contiguous(rstd_in);
    const Tensor w = w_in.defined() ? contiguous(w_in) : Tensor();
    SD3_ASSERT(rstd.dtype() == DType::F32 && rstd.device() == x.device(), "rms_norm_backward: rstd must be f32 on ",
               x.device().str());
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    Tensor dx = empty_like(x);
    cuda::rms_norm_bwd(ctx_of(x).exec(dw != nullptr ? rms_norm_bwd_workspace(rows, cols) : 0), dx.raw(),
                       raw_or_null(dw), dy.raw(), x.raw(), w.defined() ? w.raw() : nullptr, rstd.data<float>(), rows,
                       cols, x.dtype(), dw != nullptr ? dw->dtype() : x.dtype());
    return dx;
}

Tensor activation_backward(const Tensor& dy_in, const Tensor& x_in, cpu::Activation act) {
    require(dy_in, x_in, "activation_backward dy");
    require(x_in, x_in, "activation_backward x");
    const Tensor dy = contiguous(dy_in), x = contiguous(x_in);
    Tensor dx = empty_like(x);
    cuda::activation_bwd(ctx_of(x).exec(), dx.raw(), dy.raw(), x.raw(), x.numel(), act, x.dtype());
    return dx;
}

Tensor attention_chunked(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, bool causal,
                         const Tensor& bias, Tensor* lse) {
    const AttentionShape s = attention_shape(q, k, heads, scale, causal);
    Tensor out = empty_like(q);
    if (lse != nullptr) *lse = Tensor::empty({s.batch, heads, s.q_len}, DType::F32, q.device());
    SD3_ASSERT(s.kv_len > 0, "attention over zero keys");
    const size_t ws = attention_chunked_workspace(s, q.dtype(), kAttentionScratch);
    Exec ex = ctx_of(q).exec(ws);
    ex.scratch_bytes = ws;  // the chunk rows then follow the shape only, not the scratch's history (same bits)
    cuda::attention_chunked_fwd(ex, out.raw(), lse != nullptr ? lse->data<float>() : nullptr, q.raw(), k.raw(),
                                v.raw(), bias.defined() ? bias.raw() : nullptr, s, q.dtype());
    return out;
}

Tensor attention_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t heads, float scale,
                     Tensor* lse) {
    require(q_in, q_in, "attention q");
    require(k_in, q_in, "attention k");
    require(v_in, q_in, "attention v");
    const Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
    const AttentionShape s = attention_shape(q, k, heads, scale, false);
    if (!attention_supported(s.head_dim)) return attention_chunked(q, k, v, heads, scale, false, Tensor(), lse);
    Tensor out = empty_like(q);
    *lse = Tensor::empty({s.batch, heads, s.q_len}, DType::F32, q.device());
    // Exactly the shape's workspace, so the kernel chosen (and cuDNN's chunking) never depends on what earlier ops
    // left in the scratch: bit-identical reruns.
    const size_t ws = attention_fwd_workspace(s, q.dtype());
    Exec ex = ctx_of(q).exec(ws);
    ex.scratch_bytes = ws;
    cuda::attention_fwd(ex, out.raw(), lse->data<float>(), q.raw(), k.raw(), v.raw(), nullptr, s, q.dtype());
    return out;
}

void attention_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                        const Tensor& out_in, const Tensor& lse_in, int64_t heads, float scale, Tensor* dq, Tensor* dk,
                        Tensor* dv) {
    require(q_in, q_in, "attention_backward q");
    for (const Tensor* t : {&dout_in, &k_in, &v_in, &out_in}) require(*t, q_in, "attention_backward operand");
    const Tensor dout = contiguous(dout_in), q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in),
                 out = contiguous(out_in), lse = contiguous(lse_in);
    SD3_ASSERT(lse.dtype() == DType::F32 && lse.device() == q.device(), "attention_backward: lse must be f32 on ",
               q.device().str());
    const AttentionShape s = attention_shape(q, k, heads, scale, false);
    SD3_ASSERT(attention_supported(s.head_dim), "CUDA attention backward: head dim ", s.head_dim,
               " has only the chunked forward; the backward is built for head dims 8, 16, 32 and 64 (the MMDiT's 64)");
    *dq = empty_like(q);
    *dk = empty_like(k);
    *dv = empty_like(v);
    Context& ctx = ctx_of(q);
    const size_t ws = attention_bwd_workspace(s, q.dtype(), ctx.deterministic_attention());
    Exec ex = ctx.exec(ws);
    ex.scratch_bytes = ws;  // as in attention_fwd
    cuda::attention_bwd(ex, dq->raw(), dk->raw(), dv->raw(), dout.raw(), q.raw(), k.raw(), v.raw(), out.raw(),
                        lse.data<float>(), nullptr, s, q.dtype());
}

Tensor modulate(const Tensor& x_in, const Tensor& shift, const Tensor& scale) {
    require(x_in, x_in, "modulate x");
    require(shift, x_in, "modulate shift");
    require(scale, x_in, "modulate scale");
    const Tensor x = contiguous(x_in);
    Tensor y = empty_like(x);
    cuda::modulate_fwd(ctx_of(x).exec(), y.raw(), x.raw(), shift.raw(), scale.raw(), x.size(0), x.size(1), x.size(2),
                       shift.stride(0), x.dtype());
    return y;
}

bool layer_norm_modulate_fits(const Tensor& x, const Tensor& shift, const Tensor& scale) {
    // A non-contiguous x is copied into a fresh allocation first, which is aligned: only a contiguous x's address
    // counts.
    return cuda::layer_norm_modulate_fits(x.is_contiguous() ? x.raw() : nullptr, shift.raw(), scale.raw(), x.size(2),
                                          shift.stride(0), x.dtype());
}

Tensor layer_norm_modulate(const Tensor& x_in, const Tensor& shift, const Tensor& scale, float eps, Tensor* xhat,
                           Tensor* mean, Tensor* rstd) {
    require(x_in, x_in, "layer_norm_modulate x");
    require(shift, x_in, "layer_norm_modulate shift");
    require(scale, x_in, "layer_norm_modulate scale");
    const Tensor x = contiguous(x_in);
    Tensor y = empty_like(x);
    if (xhat != nullptr) {
        const int64_t rows = x.size(0) * x.size(1);
        *xhat = empty_like(x);
        *mean = Tensor::empty({rows}, DType::F32, x.device());
        *rstd = Tensor::empty({rows}, DType::F32, x.device());
    }
    cuda::layer_norm_modulate_fwd(ctx_of(x).exec(), y.raw(), x.raw(), shift.raw(), scale.raw(), x.size(0), x.size(1),
                                  x.size(2), shift.stride(0), eps, x.dtype(), xhat != nullptr ? xhat->raw() : nullptr,
                                  mean != nullptr ? mean->data<float>() : nullptr,
                                  rstd != nullptr ? rstd->data<float>() : nullptr);
    return y;
}

Tensor modulate_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& scale, Tensor* dshift,
                         Tensor* dscale) {
    require(dy_in, x_in, "modulate_backward dy");
    require(x_in, x_in, "modulate_backward x");
    require(scale, x_in, "modulate_backward scale");
    if (dshift != nullptr) require_grad(*dshift, x_in, "modulate_backward dshift");
    if (dscale != nullptr) require_grad(*dscale, x_in, "modulate_backward dscale");
    const Tensor dy = contiguous(dy_in), x = contiguous(x_in);
    const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
    Tensor dx = empty_like(x);
    cuda::modulate_bwd(ctx_of(x).exec(modulate_bwd_workspace(B, T, D)), dx.raw(), raw_or_null(dshift),
                       raw_or_null(dscale), dy.raw(), x.raw(), scale.raw(), B, T, D, scale.stride(0), x.dtype(),
                       grad_dtype(dshift, dscale, x.dtype()));
    return dx;
}

void gated_add_(Tensor& x, const Tensor& gate, const Tensor& a_in) {
    require(x, x, "gated_add x");
    require(gate, x, "gated_add gate");
    require(a_in, x, "gated_add a");
    const Tensor a = contiguous(a_in);
    cuda::gated_add_fwd(ctx_of(x).exec(), x.raw(), gate.raw(), a.raw(), x.size(0), x.size(1), x.size(2),
                        gate.stride(0), x.dtype());
}

Tensor gated_add_backward(const Tensor& dx_in, const Tensor& a_in, const Tensor& gate, Tensor* dgate) {
    require(dx_in, dx_in, "gated_add_backward dx");
    require(a_in, dx_in, "gated_add_backward a");
    require(gate, dx_in, "gated_add_backward gate");
    if (dgate != nullptr) require_grad(*dgate, dx_in, "gated_add_backward dgate");
    const Tensor dx = contiguous(dx_in), a = contiguous(a_in);
    const int64_t B = dx.size(0), T = dx.size(1), D = dx.size(2);
    Tensor da = empty_like(dx);
    cuda::gated_add_bwd(ctx_of(dx).exec(gated_add_bwd_workspace(B, T, D)), da.raw(), raw_or_null(dgate), dx.raw(),
                        a.raw(), gate.raw(), B, T, D, gate.stride(0), dx.dtype(),
                        dgate != nullptr ? dgate->dtype() : dx.dtype());
    return da;
}

Tensor patchify(const Tensor& img_in, int64_t p, cpu::PatchLayout layout) {
    require(img_in, img_in, "patchify input");
    const Tensor img = contiguous(img_in);
    const int64_t B = img.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
    Tensor tokens = Tensor::empty({B, (H / p) * (W / p), C * p * p}, img.dtype(), img.device());
    cuda::patchify(ctx_of(img).exec(), tokens.raw(), img.raw(), B, C, H, W, p, layout, img.dtype());
    return tokens;
}

Tensor unpatchify(const Tensor& tokens_in, int64_t channels, int64_t h, int64_t w, int64_t p,
                  cpu::PatchLayout layout) {
    require(tokens_in, tokens_in, "unpatchify input");
    const Tensor tokens = contiguous(tokens_in);
    Tensor img = Tensor::empty({tokens.size(0), channels, h, w}, tokens.dtype(), tokens.device());
    cuda::unpatchify(ctx_of(tokens).exec(), img.raw(), tokens.raw(), tokens.size(0), channels, h, w, p, layout,
                     tokens.dtype());
    return img;
}

Tensor timestep_embedding(const Tensor& t_in, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                          float max_period, DType dtype) {
    SD3_ASSERT(t_in.dtype() == DType::F32, "timestep_embedding: timesteps must be f32 (bf16 cannot hold 999), got ",
               t_in.describe());
    SD3_ASSERT(is_float16_or_32(dtype), "timestep_embedding: result dtype ", dtype_name(dtype));
    const Tensor t = contiguous(t_in);
    Tensor out = Tensor::empty({t.size(0), dim}, dtype, t.device());
    cuda::timestep_embedding(ctx_of(t).exec(), out.raw(), t.data<float>(), t.size(0), dim, flip_sin_to_cos,
                             downscale_freq_shift, max_period, dtype);
    return out;
}

void add_(Tensor& y, const Tensor& x_in, float a) {
    require(y, y, "add_ destination");
    require(x_in, y, "add_ source");
    const Tensor x = contiguous(x_in);
    cuda::axpy(ctx_of(y).exec(), y.raw(), x.raw(), a, y.numel(), y.dtype());
}

void add_rows_(Tensor& y, const Tensor& x_in) {
    require(y, y, "add_rows_ destination");
    require(x_in, y, "add_rows_ source");
    const Tensor x = contiguous(x_in);
    cuda::add_rows(ctx_of(y).exec(), y.raw(), x.raw(), y.size(0), x.numel(), y.dtype());
}

Tensor dropout(const Tensor& x_in, float p, uint64_t seed) {
    require(x_in, x_in, "dropout input");
    const Tensor x = contiguous(x_in);
    Tensor y = empty_like(x);
    cuda::dropout_fwd(ctx_of(x).exec(), y.raw(), x.raw(), x.numel(), p, seed, x.dtype());
    return y;
}

Tensor dropout_backward(const Tensor& dy_in, float p, uint64_t seed) {
    require(dy_in, dy_in, "dropout_backward dy");
    const Tensor dy = contiguous(dy_in);
    Tensor dx = empty_like(dy);
    cuda::dropout_bwd(ctx_of(dy).exec(), dx.raw(), dy.raw(), dy.numel(), p, seed, dy.dtype());
    return dx;
}

Tensor upsample_nearest2x(const Tensor& x_in) {
    require(x_in, x_in, "upsample_nearest2x");
    const Tensor x = contiguous(x_in);
    Tensor y = Tensor::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, x.dtype(), x.device());
    cuda::upsample_nearest2x(ctx_of(x).exec(), y.raw(), x.raw(), x.size(0) * x.size(1), x.size(2), x.size(3),
                             x.dtype());
    return y;
}

Tensor pad_right_bottom(const Tensor& x_in, int64_t right, int64_t bottom) {
    require(x_in, x_in, "pad_right_bottom");
    const Tensor x = contiguous(x_in);
    Tensor y = Tensor::empty({x.size(0), x.size(1), x.size(2) + bottom, x.size(3) + right}, x.dtype(), x.device());
    cuda::pad_right_bottom(ctx_of(x).exec(), y.raw(), x.raw(), x.size(0) * x.size(1), x.size(2), x.size(3), right,
                           bottom, x.dtype());
    return y;
}

}  // namespace sd3::cuda::tensor_ops
