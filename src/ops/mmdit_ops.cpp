// Shape checks and device dispatch for ops/mmdit_ops.h: shapes are checked here for every device, then CUDA
// tensors go to ops/cuda/tensor_ops_model (f32, bf16, f16) and the rest to the CPU loops (f32).
#include "ops/mmdit_ops.h"

#include "core/check.h"
#include "ops/dispatch.h"

namespace sd3::ops {

namespace {

void require_f32(const Tensor& t, const char* what) {
    SD3_ASSERT(t.defined(), what, " is undefined");
    SD3_ASSERT(t.dtype() == DType::F32 && t.device().is_cpu(), what,
               ": the CPU backend takes f32 (CUDA tensors take f32, bf16 or f16), got ", t.describe());
}

// A [B, D] view whose rows may be strided (a chunk of an adaLN output) but whose columns are contiguous.
void require_rows(const Tensor& t, int64_t batch, int64_t dim, const char* what) {
    SD3_ASSERT(t.defined(), what, " is undefined");
    SD3_ASSERT(t.dim() == 2 && t.size(0) == batch && t.size(1) == dim && t.stride(1) == 1, what, " must be [", batch,
               ", ", dim, "] with contiguous rows, got ", t.describe());
}

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), DType::F32, t.device()); }

cpu::AttentionShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale) {
    SD3_ASSERT(q.dim() == 3 && k.dim() == 3 && v.shape() == k.shape() && q.size(0) == k.size(0) &&
                   q.size(2) == k.size(2) && q.size(2) % heads == 0,
               "attention: q ", q.describe(), " k ", k.describe(), " v ", v.describe(), " heads ", heads);
    return cpu::AttentionShape{q.size(0), heads, q.size(1), k.size(1), q.size(2) / heads, scale, false};
}

}  // namespace

Tensor zeros(const Shape& shape, Device device, DType dtype) {
    SD3_ON_CUDA_DEVICE(device, zeros(shape, device, dtype));
    SD3_ASSERT(device.is_cpu(), "zeros on ", device.str(), ": this build has no CUDA backend");
    return Tensor::zeros(shape, dtype);
}

Tensor copy(const Tensor& x) {
    SD3_ASSERT(x.defined(), "copy of an undefined tensor");
    SD3_ON_CUDA(x, copy(x));
    return x.clone();
}

Tensor slice_contiguous(const Tensor& x, int dim, int64_t start, int64_t end) {
    const Tensor view = x.slice(dim, start, end);
    return view.is_contiguous() ? view : copy(view);
}

Tensor linear_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in, Tensor* dw, Tensor* db,
                       bool need_dx, float alpha) {
    SD3_ASSERT(dy_in.defined() && w_in.defined(), "linear_backward: dy and w are required");
    SD3_ASSERT(x_in.defined() || dw == nullptr, "linear_backward: dw needs the forward input");
    const int64_t K = w_in.size(1), N = w_in.size(0), M = dy_in.numel() / N;
    SD3_ASSERT(w_in.dim() == 2 && dy_in.size(-1) == N && (!x_in.defined() || x_in.numel() == M * K),
               "linear_backward: dy ", dy_in.describe(), " x ", x_in.defined() ? x_in.describe() : "(none)", " w ",
               w_in.describe());
    if (dw != nullptr) SD3_ASSERT(dw->is_contiguous() && dw->shape() == w_in.shape(), "linear_backward dw ", dw->describe());
    if (db != nullptr) SD3_ASSERT(db->is_contiguous() && db->numel() == N, "linear_backward db ", db->describe());
    SD3_ASSERT(db == nullptr || alpha == 1.0f, "linear_backward: a bias gradient with alpha ", alpha);
    SD3_ON_CUDA(dy_in, linear_backward(dy_in, x_in, w_in, dw, db, need_dx, alpha));
    require_f32(dy_in, "linear_backward dy");
    const Tensor dy = dy_in.contiguous(), w = w_in.contiguous();
    const Tensor x = x_in.defined() ? x_in.contiguous() : Tensor();
    Tensor dx;
    if (need_dx) {
        Shape s = dy.shape();
        s.back() = K;
        dx = Tensor::empty(s, DType::F32, dy.device());
    }
    cpu::linear_bwd(need_dx ? dx.data<float>() : nullptr, dw != nullptr ? dw->data<float>() : nullptr,
                    db != nullptr ? db->data<float>() : nullptr, dy.data<float>(),
                    x.defined() ? x.data<float>() : nullptr, w.data<float>(), M, K, N, alpha);
    return dx;
}

Tensor linear_backward_gelu_tanh(const Tensor& dy, const Tensor& w, const Tensor& pre) {
    SD3_ASSERT(dy.defined() && w.defined() && pre.defined() && w.dim() == 2 && dy.size(-1) == w.size(0) &&
                   pre.size(-1) == w.size(1) && dy.numel() / w.size(0) == pre.numel() / w.size(1),
               "linear_backward_gelu_tanh: dy ", dy.defined() ? dy.describe() : "(none)", " w ",
               w.defined() ? w.describe() : "(none)", " pre ", pre.defined() ? pre.describe() : "(none)");
    SD3_ON_CUDA(dy, linear_backward_gelu_tanh(dy, w, pre));
    return activation_backward(linear_backward(dy, Tensor(), w, nullptr, nullptr), pre, Activation::GELU_TANH);
}

void linear_acc_(Tensor& y, const Tensor& x, const Tensor& w, float alpha, bool w_is_kn) {
    SD3_ASSERT(y.defined() && x.defined() && w.defined() && w.dim() == 2, "linear_acc_: y, x and a 2-D w are required");
    const int64_t N = w_is_kn ? w.size(1) : w.size(0), K = w_is_kn ? w.size(0) : w.size(1);
    SD3_ASSERT(y.is_contiguous() && x.size(-1) == K && y.size(-1) == N && x.numel() / K == y.numel() / N,
               "linear_acc_: y ", y.describe(), " x ", x.describe(), " w ", w.describe(), w_is_kn ? " [K, N]" : " [N, K]");
    SD3_ON_CUDA(y, linear_acc_(y, x, w, alpha, w_is_kn));
    require_f32(y, "linear_acc_ y");
    const Tensor xc = x.contiguous(), wc = w.contiguous();
    cpu::gemm(false, !w_is_kn, y.numel() / N, N, K, alpha, xc.data<float>(), K, wc.data<float>(), w_is_kn ? N : K, 1.0f,
              y.data<float>(), N);
}

Tensor layer_norm_fwd(const Tensor& x_in, float eps, Tensor* mean, Tensor* rstd) {
    SD3_ASSERT(x_in.defined() && x_in.dim() >= 1, "layer_norm input ", x_in.defined() ? x_in.describe() : "undefined");
    SD3_ON_CUDA(x_in, layer_norm_fwd(x_in, eps, mean, rstd));
    require_f32(x_in, "layer_norm input");
    const Tensor x = x_in.contiguous();
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    Tensor y = empty_like(x);
    *mean = Tensor::empty({rows}, DType::F32, x.device());
    *rstd = Tensor::empty({rows}, DType::F32, x.device());
    cpu::layer_norm_fwd(y.data<float>(), mean->data<float>(), rstd->data<float>(), x.data<float>(), nullptr, nullptr,
                        rows, cols, eps);
    return y;
}

Tensor layer_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& mean, const Tensor& rstd,
                           const Tensor& add) {
    SD3_ASSERT(dy_in.shape() == x_in.shape(), "layer_norm_backward: dy ", dy_in.describe(), " x ", x_in.describe());
    SD3_ASSERT(!add.defined() || add.shape() == x_in.shape(), "layer_norm_backward: add ", add.describe(), " x ",
               x_in.describe());
    const int64_t cols = x_in.size(-1), rows = x_in.numel() / cols;
    SD3_ASSERT(mean.numel() == rows && rstd.numel() == rows, "layer_norm_backward: statistics");
    SD3_ON_CUDA(x_in, layer_norm_backward(dy_in, x_in, mean, rstd, add));
    require_f32(x_in, "layer_norm_backward x");
    const Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
    Tensor dx = empty_like(x);
    cpu::layer_norm_bwd(dx.data<float>(), nullptr, nullptr, dy.data<float>(), x.data<float>(), nullptr,
                        mean.contiguous().data<float>(), rstd.contiguous().data<float>(), rows, cols);
    if (add.defined()) add_(dx, add);
    return dx;
}

Tensor rms_norm_fwd(const Tensor& x_in, const Tensor& w, float eps, Tensor* rstd) {
    SD3_ASSERT(x_in.defined() && x_in.dim() >= 1, "rms_norm input ", x_in.defined() ? x_in.describe() : "undefined");
    const int64_t cols = x_in.size(-1), rows = x_in.numel() / cols;
    if (w.defined()) SD3_ASSERT(w.numel() == cols && w.is_contiguous(), "rms_norm weight ", w.describe());
    SD3_ON_CUDA(x_in, rms_norm_fwd(x_in, w, eps, rstd));
    require_f32(x_in, "rms_norm input");
    const Tensor x = x_in.contiguous();
    Tensor y = empty_like(x);
    *rstd = Tensor::empty({rows}, DType::F32, x.device());
    cpu::rms_norm_fwd(y.data<float>(), rstd->data<float>(), x.data<float>(), w.defined() ? w.data<float>() : nullptr,
                      rows, cols, eps);
    return y;
}

Tensor rms_norm_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w, const Tensor& rstd, Tensor* dw) {
    SD3_ASSERT(dy_in.shape() == x_in.shape(), "rms_norm_backward: dy ", dy_in.describe(), " x ", x_in.describe());
    const int64_t cols = x_in.size(-1), rows = x_in.numel() / cols;
    SD3_ASSERT(rstd.numel() == rows, "rms_norm_backward: rstd ", rstd.describe());
    if (dw != nullptr) SD3_ASSERT(dw->is_contiguous() && dw->numel() == cols, "rms_norm_backward dw ", dw->describe());
    SD3_ON_CUDA(x_in, rms_norm_backward(dy_in, x_in, w, rstd, dw));
    require_f32(x_in, "rms_norm_backward x");
    const Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
    Tensor dx = empty_like(x);
    cpu::rms_norm_bwd(dx.data<float>(), dw != nullptr ? dw->data<float>() : nullptr, dy.data<float>(),
                      x.data<float>(), w.defined() ? w.contiguous().data<float>() : nullptr,
                      rstd.contiguous().data<float>(), rows, cols);
    return dx;
}

Tensor activation_backward(const Tensor& dy_in, const Tensor& x_in, Activation act) {
    SD3_ASSERT(dy_in.shape() == x_in.shape(), "activation_backward: dy ", dy_in.describe(), " x ", x_in.describe());
    SD3_ON_CUDA(x_in, activation_backward(dy_in, x_in, act));
    require_f32(x_in, "activation_backward x");
    const Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
    Tensor dx = empty_like(x);
    cpu::activation_bwd(dx.data<float>(), dy.data<float>(), x.data<float>(), x.numel(), act);
    return dx;
}

Tensor attention_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t heads, float scale,
                     Tensor* lse) {
    const cpu::AttentionShape s = attention_shape(q_in, k_in, v_in, heads, scale);
    SD3_ON_CUDA(q_in, attention_fwd(q_in, k_in, v_in, heads, scale, lse));
    require_f32(q_in, "attention q");
    const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    Tensor out = empty_like(q);
    *lse = Tensor::empty({s.batch, heads, s.q_len}, DType::F32, q.device());
    cpu::attention_fwd(out.data<float>(), lse->data<float>(), q.data<float>(), k.data<float>(), v.data<float>(),
                       nullptr, s);
    return out;
}

void attention_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                        const Tensor& out_in, const Tensor& lse, int64_t heads, float scale, Tensor* dq, Tensor* dk,
                        Tensor* dv) {
    const cpu::AttentionShape s = attention_shape(q_in, k_in, v_in, heads, scale);
    SD3_ASSERT(dout_in.shape() == q_in.shape() && out_in.shape() == q_in.shape(), "attention_backward: dout ",
               dout_in.describe());
    SD3_ASSERT(lse.numel() == s.batch * heads * s.q_len, "attention_backward: lse ", lse.describe());
    SD3_ON_CUDA(q_in, attention_backward(dout_in, q_in, k_in, v_in, out_in, lse, heads, scale, dq, dk, dv));
    require_f32(q_in, "attention_backward q");
    const Tensor dout = dout_in.contiguous(), q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(),
                 out = out_in.contiguous();
    *dq = empty_like(q);
    *dk = empty_like(k);
    *dv = empty_like(v);
    cpu::attention_bwd(dq->data<float>(), dk->data<float>(), dv->data<float>(), dout.data<float>(), q.data<float>(),
                       k.data<float>(), v.data<float>(), out.data<float>(), lse.contiguous().data<float>(), nullptr, s);
}

Tensor modulate(const Tensor& x_in, const Tensor& shift, const Tensor& scale) {
    SD3_ASSERT(x_in.defined() && x_in.dim() == 3, "modulate x must be [B, T, D], got ",
               x_in.defined() ? x_in.describe() : "undefined");
    const int64_t B = x_in.size(0), T = x_in.size(1), D = x_in.size(2);
    require_rows(shift, B, D, "modulate shift");
    require_rows(scale, B, D, "modulate scale");
    SD3_ASSERT(shift.stride(0) == scale.stride(0), "modulate: shift and scale must share a row stride");
    SD3_ON_CUDA(x_in, modulate(x_in, shift, scale));
    require_f32(x_in, "modulate x");
    const Tensor x = x_in.contiguous();
    Tensor y = empty_like(x);
    cpu::modulate_fwd(y.data<float>(), x.data<float>(), shift.data<float>(), scale.data<float>(), B, T, D,
                      shift.stride(0));
    return y;
}

Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor* xhat,
                           Tensor* mean, Tensor* rstd) {
    SD3_ASSERT(x.defined() && x.dim() == 3, "layer_norm_modulate x must be [B, T, D], got ",
               x.defined() ? x.describe() : "undefined");
    require_rows(shift, x.size(0), x.size(2), "layer_norm_modulate shift");
    require_rows(scale, x.size(0), x.size(2), "layer_norm_modulate scale");
    SD3_ASSERT(shift.stride(0) == scale.stride(0), "layer_norm_modulate: shift and scale must share a row stride");
    SD3_ASSERT((xhat == nullptr) == (mean == nullptr) && (mean == nullptr) == (rstd == nullptr),
               "layer_norm_modulate: xhat, mean and rstd are asked for together");
    SD3_ON_CUDA_IF(x, layer_norm_modulate_fits(x, shift, scale),
                   layer_norm_modulate(x, shift, scale, eps, xhat, mean, rstd));
    // The CPU, or a layout CUDA's one-pass kernel does not take: the two ops (the same stored values).
    Tensor m, r;
    const Tensor n = layer_norm_fwd(x, eps, mean != nullptr ? mean : &m, rstd != nullptr ? rstd : &r);
    if (xhat != nullptr) *xhat = n;
    return modulate(n, shift, scale);
}

Tensor modulate_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& scale, Tensor* dshift, Tensor* dscale) {
    SD3_ASSERT(dy_in.shape() == x_in.shape() && x_in.dim() == 3, "modulate_backward: dy ", dy_in.describe(), " x ",
               x_in.describe());
    const int64_t B = x_in.size(0), T = x_in.size(1), D = x_in.size(2);
    require_rows(scale, B, D, "modulate_backward scale");
    // The kernel takes one row stride for scale, dshift and dscale; all are chunks of [B, k*D] tensors.
    const int64_t stride = scale.stride(0);
    if (dshift != nullptr) require_rows(*dshift, B, D, "modulate_backward dshift");
    if (dscale != nullptr) require_rows(*dscale, B, D, "modulate_backward dscale");
    SD3_ASSERT((dshift == nullptr || dshift->stride(0) == stride) && (dscale == nullptr || dscale->stride(0) == stride),
               "modulate_backward: scale and its gradients must share a row stride");
    SD3_ON_CUDA(x_in, modulate_backward(dy_in, x_in, scale, dshift, dscale));
    require_f32(x_in, "modulate_backward x");
    const Tensor dy = dy_in.contiguous(), x = x_in.contiguous();
    Tensor dx = empty_like(x);
    cpu::modulate_bwd(dx.data<float>(), dshift != nullptr ? dshift->data<float>() : nullptr,
                      dscale != nullptr ? dscale->data<float>() : nullptr, dy.data<float>(), x.data<float>(),
                      scale.data<float>(), B, T, D, stride);
    return dx;
}

void gated_add_(Tensor& x, const Tensor& gate, const Tensor& a) {
    SD3_ASSERT(x.defined() && x.is_contiguous() && x.dim() == 3, "gated_add x must be contiguous [B, T, D], got ",
               x.defined() ? x.describe() : "undefined");
    SD3_ASSERT(a.shape() == x.shape(), "gated_add: a ", a.describe(), " x ", x.describe());
    require_rows(gate, x.size(0), x.size(2), "gated_add gate");
    SD3_ON_CUDA(x, gated_add_(x, gate, a));
    require_f32(x, "gated_add x");
    cpu::gated_add_fwd(x.data<float>(), gate.data<float>(), a.contiguous().data<float>(), x.size(0), x.size(1),
                       x.size(2), gate.stride(0));
}

Tensor gated_add_backward(const Tensor& dx_in, const Tensor& a_in, const Tensor& gate, Tensor* dgate) {
    SD3_ASSERT(a_in.shape() == dx_in.shape() && dx_in.dim() == 3, "gated_add_backward: dx ", dx_in.describe(), " a ",
               a_in.describe());
    const int64_t B = dx_in.size(0), T = dx_in.size(1), D = dx_in.size(2);
    require_rows(gate, B, D, "gated_add_backward gate");
    if (dgate != nullptr) {
        require_rows(*dgate, B, D, "gated_add_backward dgate");
        SD3_ASSERT(dgate->stride(0) == gate.stride(0), "gated_add_backward: gate and dgate must share a row stride");
    }
    SD3_ON_CUDA(dx_in, gated_add_backward(dx_in, a_in, gate, dgate));
    require_f32(dx_in, "gated_add_backward dx");
    const Tensor dx = dx_in.contiguous(), a = a_in.contiguous();
    Tensor da = empty_like(dx);
    cpu::gated_add_bwd(da.data<float>(), dgate != nullptr ? dgate->data<float>() : nullptr, dx.data<float>(),
                       a.data<float>(), gate.data<float>(), B, T, D, gate.stride(0));
    return da;
}

Tensor patchify(const Tensor& img_in, int64_t p, PatchLayout layout) {
    SD3_ASSERT(img_in.defined() && img_in.dim() == 4 && img_in.size(2) % p == 0 && img_in.size(3) % p == 0,
               "patchify: ", img_in.defined() ? img_in.describe() : "undefined", " with patch ", p);
    SD3_ON_CUDA(img_in, patchify(img_in, p, layout));
    require_f32(img_in, "patchify input");
    const Tensor img = img_in.contiguous();
    const int64_t B = img.size(0), C = img.size(1), H = img.size(2), W = img.size(3);
    Tensor tokens = Tensor::empty({B, (H / p) * (W / p), C * p * p}, DType::F32, img.device());
    cpu::patchify(tokens.data<float>(), img.data<float>(), B, C, H, W, p, layout);
    return tokens;
}

Tensor unpatchify(const Tensor& tokens_in, int64_t channels, int64_t h, int64_t w, int64_t p, PatchLayout layout) {
    SD3_ASSERT(tokens_in.defined() && tokens_in.dim() == 3 && h % p == 0 && w % p == 0 &&
                   tokens_in.size(1) == (h / p) * (w / p) && tokens_in.size(2) == channels * p * p,
               "unpatchify: ", tokens_in.defined() ? tokens_in.describe() : "undefined", " to ", channels, "x", h,
               "x", w, " with patch ", p);
    SD3_ON_CUDA(tokens_in, unpatchify(tokens_in, channels, h, w, p, layout));
    require_f32(tokens_in, "unpatchify input");
    const Tensor tokens = tokens_in.contiguous();
    Tensor img = Tensor::empty({tokens.size(0), channels, h, w}, DType::F32, tokens.device());
    cpu::unpatchify(img.data<float>(), tokens.data<float>(), tokens.size(0), channels, h, w, p, layout);
    return img;
}

Tensor timestep_embedding(const Tensor& t_in, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                          float max_period, DType dtype) {
    SD3_ASSERT(t_in.defined() && t_in.dim() == 1 && dim % 2 == 0, "timestep_embedding: t ",
               t_in.defined() ? t_in.describe() : "undefined", " dim ", dim);
    SD3_ON_CUDA(t_in, timestep_embedding(t_in, dim, flip_sin_to_cos, downscale_freq_shift, max_period, dtype));
    require_f32(t_in, "timestep");
    SD3_ASSERT(dtype == DType::F32, "timestep_embedding: the CPU backend returns f32, asked for ", dtype_name(dtype));
    const Tensor t = t_in.contiguous();
    Tensor out = Tensor::empty({t.size(0), dim}, DType::F32, t.device());
    cpu::timestep_embedding(out.data<float>(), t.data<float>(), t.size(0), dim, flip_sin_to_cos, downscale_freq_shift,
                            max_period);
    return out;
}

void add_(Tensor& y, const Tensor& x, float a) {
    SD3_ASSERT(y.defined() && x.defined() && y.is_contiguous() && y.numel() == x.numel(), "add_: ", y.describe(),
               " += ", x.describe());
    SD3_ON_CUDA(y, add_(y, x, a));
    require_f32(y, "add_ destination");
    cpu::axpy(y.data<float>(), x.contiguous().data<float>(), a, y.numel());
}

void add_rows_(Tensor& y, const Tensor& x) {
    SD3_ASSERT(y.defined() && x.defined() && y.is_contiguous() && y.dim() >= 1 && y.size(0) > 0 &&
                   x.numel() * y.size(0) == y.numel(),
               "add_rows_: ", y.describe(), " += rows of ", x.describe());
    SD3_ON_CUDA(y, add_rows_(y, x));
    require_f32(y, "add_rows_ destination");
    cpu::add_rows(y.data<float>(), x.contiguous().data<float>(), y.size(0), x.numel());
}

Tensor dropout(const Tensor& x_in, float p, uint64_t seed) {
    SD3_ASSERT(x_in.defined() && p >= 0.0f && p < 1.0f, "dropout probability ", p);
    SD3_ON_CUDA(x_in, dropout(x_in, p, seed));
    require_f32(x_in, "dropout input");
    const Tensor x = x_in.contiguous();
    Tensor y = empty_like(x);
    cpu::dropout_fwd(y.data<float>(), x.data<float>(), x.numel(), p, seed);
    return y;
}

Tensor dropout_backward(const Tensor& dy_in, float p, uint64_t seed) {
    SD3_ASSERT(dy_in.defined() && p >= 0.0f && p < 1.0f, "dropout probability ", p);
    SD3_ON_CUDA(dy_in, dropout_backward(dy_in, p, seed));
    require_f32(dy_in, "dropout_backward dy");
    const Tensor dy = dy_in.contiguous();
    Tensor dx = empty_like(dy);
    cpu::dropout_bwd(dx.data<float>(), dy.data<float>(), dy.numel(), p, seed);
    return dx;
}

}  // namespace sd3::ops
