// Shape checks and device dispatch for ops.h: CUDA tensors go to ops/cuda/tensor_ops, the rest to ops/cpu.
#include "ops/ops.h"

#include "core/check.h"
#include "ops/cpu/sampling_ops.h"
#include "ops/dispatch.h"

namespace sd3::ops {

namespace {

void require_f32_cpu(const Tensor& t, const char* what) {
    SD3_ASSERT(t.defined(), what, " is undefined");
    SD3_ASSERT(t.dtype() == DType::F32, what, " must be f32, got ", t.describe());
    SD3_ASSERT(t.device().is_cpu(), what, ": only the CPU backend is built into this op so far, got ", t.describe());
}

const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.contiguous().data<float>() : nullptr; }

Shape with_last(const Shape& s, int64_t last) {
    Shape out = s;
    out.back() = last;
    return out;
}

}  // namespace

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& b, float alpha) {
    SD3_ON_CUDA(x_in, linear(x_in, w_in, b, alpha));
    require_f32_cpu(x_in, "linear input");
    require_f32_cpu(w_in, "linear weight");
    const Tensor x = x_in.contiguous(), w = w_in.contiguous();
    const int64_t K = x.size(-1), N = w.size(0);
    SD3_ASSERT(w.dim() == 2 && w.size(1) == K, "linear: input ", x.describe(), " vs weight ", w.describe());
    if (b.defined()) SD3_ASSERT(b.numel() == N, "linear: bias ", b.describe(), " for ", N, " outputs");
    Tensor y = Tensor::empty(with_last(x.shape(), N), DType::F32, x.device());
    const Tensor bc = b.defined() ? b.contiguous() : Tensor();
    cpu::linear_fwd(y.data<float>(), x.data<float>(), w.data<float>(), ptr_or_null(bc), x.numel() / K, K, N, alpha);
    return y;
}

Tensor linear_gelu_tanh(const Tensor& x, const Tensor& w, const Tensor& b, Tensor* pre) {
    SD3_ON_CUDA(x, linear_gelu_tanh(x, w, b, pre));
    const Tensor p = linear(x, w, b);
    if (pre != nullptr) *pre = p;
    return activation(p, Activation::GELU_TANH);
}

Tensor layer_norm(const Tensor& x_in, const Tensor& w, const Tensor& b, float eps) {
    SD3_ON_CUDA(x_in, layer_norm(x_in, w, b, eps));
    require_f32_cpu(x_in, "layer_norm input");
    const Tensor x = x_in.contiguous();
    const int64_t cols = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
    const Tensor wc = w.defined() ? w.contiguous() : Tensor(), bc = b.defined() ? b.contiguous() : Tensor();
    cpu::layer_norm_fwd(y.data<float>(), nullptr, nullptr, x.data<float>(), ptr_or_null(wc), ptr_or_null(bc),
                        x.numel() / cols, cols, eps);
    return y;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& w, float eps) {
    SD3_ON_CUDA(x_in, rms_norm(x_in, w, eps));
    require_f32_cpu(x_in, "rms_norm input");
    const Tensor x = x_in.contiguous();
    const int64_t cols = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
    const Tensor wc = w.defined() ? w.contiguous() : Tensor();
    cpu::rms_norm_fwd(y.data<float>(), nullptr, x.data<float>(), ptr_or_null(wc), x.numel() / cols, cols, eps);
    return y;
}

Tensor group_norm(const Tensor& x_in, const Tensor& w, const Tensor& b, int64_t groups, float eps) {
    SD3_ON_CUDA(x_in, group_norm(x_in, w, b, groups, eps));
    require_f32_cpu(x_in, "group_norm input");
    const Tensor x = x_in.contiguous();
    SD3_ASSERT(x.dim() >= 2 && x.size(1) % groups == 0, "group_norm: ", x.describe(), " with ", groups, " groups");
    Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
    const Tensor wc = w.contiguous(), bc = b.contiguous();
    cpu::group_norm_fwd(y.data<float>(), x.data<float>(), wc.data<float>(), bc.data<float>(), x.size(0), x.size(1),
                        x.numel() / (x.size(0) * x.size(1)), groups, eps);
    return y;
}

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& b, int64_t stride, int64_t pad) {
    SD3_ON_CUDA(x_in, conv2d(x_in, w_in, b, stride, pad));
    require_f32_cpu(x_in, "conv2d input");
    require_f32_cpu(w_in, "conv2d weight");
    const Tensor x = x_in.contiguous(), w = w_in.contiguous();
    SD3_ASSERT(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1), "conv2d: input ", x.describe(), " weight ",
               w.describe());
    const int64_t ho = (x.size(2) + 2 * pad - w.size(2)) / stride + 1;
    const int64_t wo = (x.size(3) + 2 * pad - w.size(3)) / stride + 1;
    Tensor y = Tensor::empty({x.size(0), w.size(0), ho, wo}, DType::F32, x.device());
    const Tensor bc = b.defined() ? b.contiguous() : Tensor();
    cpu::conv2d_fwd(y.data<float>(), x.data<float>(), w.data<float>(), ptr_or_null(bc), x.size(0), x.size(1),
                    x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), stride, pad);
    return y;
}

Tensor activation(const Tensor& x_in, Activation act) {
    SD3_ON_CUDA(x_in, activation(x_in, act));
    require_f32_cpu(x_in, "activation input");
    const Tensor x = x_in.contiguous();
    Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
    cpu::activation_fwd(y.data<float>(), x.data<float>(), x.numel(), act);
    return y;
}

void activation_(Tensor& x, Activation act) {
    if (!x.is_contiguous()) {
        x = activation(x, act);
        return;
    }
    SD3_ON_CUDA(x, activation_(x, act));
    require_f32_cpu(x, "activation input");
    cpu::activation_fwd(x.data<float>(), x.data<float>(), x.numel(), act);  // element-wise: aliasing is safe
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t heads, float scale, bool causal,
                 const Tensor& bias) {
    SD3_ON_CUDA(q_in, attention(q_in, k_in, v_in, heads, scale, causal, bias));
    require_f32_cpu(q_in, "attention q");
    const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    SD3_ASSERT(q.dim() == 3 && k.dim() == 3 && v.shape() == k.shape() && q.size(0) == k.size(0) &&
                   q.size(2) == k.size(2) && q.size(2) % heads == 0,
               "attention: q ", q.describe(), " k ", k.describe(), " v ", v.describe(), " heads ", heads);
    cpu::AttentionShape s{q.size(0), heads, q.size(1), k.size(1), q.size(2) / heads, scale, causal};
    if (bias.defined()) SD3_ASSERT(bias.numel() == heads * s.q_len * s.kv_len, "attention bias ", bias.describe());
    Tensor out = Tensor::empty(q.shape(), DType::F32, q.device());
    const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
    cpu::attention_fwd(out.data<float>(), nullptr, q.data<float>(), k.data<float>(), v.data<float>(), ptr_or_null(bc), s);
    return out;
}

namespace {
template <typename F>
Tensor binary(const Tensor& a_in, const Tensor& b_in, F f, const char* name) {
    require_f32_cpu(a_in, name);
    require_f32_cpu(b_in, name);
    const Tensor a = a_in.contiguous(), b = b_in.contiguous();
    SD3_ASSERT(a.shape() == b.shape(), name, ": ", a.describe(), " vs ", b.describe());
    Tensor y = Tensor::empty(a.shape(), DType::F32, a.device());
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* py = y.data<float>();
    for (int64_t i = 0; i < a.numel(); ++i) py[i] = f(pa[i], pb[i]);
    return y;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
    SD3_ON_CUDA(a, add(a, b));
    return binary(a, b, [](float x, float y) { return x + y; }, "add");
}
Tensor mul(const Tensor& a, const Tensor& b) {
    SD3_ON_CUDA(a, mul(a, b));
    return binary(a, b, [](float x, float y) { return x * y; }, "mul");
}

Tensor scale(const Tensor& a_in, float s) {
    SD3_ON_CUDA(a_in, scale(a_in, s));
    require_f32_cpu(a_in, "scale");
    Tensor y = a_in.clone();
    float* p = y.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i) p[i] *= s;
    return y;
}

Tensor cat(const std::vector<Tensor>& parts, int dim) {
    SD3_ASSERT(!parts.empty(), "cat of nothing");
    SD3_ON_CUDA(parts[0], cat(parts, dim));
    const int nd = parts[0].dim();
    if (dim < 0) dim += nd;
    Shape shape = parts[0].shape();
    shape[dim] = 0;
    for (const Tensor& p : parts) {
        SD3_ASSERT(p.dim() == nd, "cat: rank mismatch");
        shape[dim] += p.size(dim);
    }
    Tensor out = Tensor::empty(shape, parts[0].dtype(), parts[0].device());
    int64_t at = 0;
    for (const Tensor& p : parts) {
        out.slice(dim, at, at + p.size(dim)).copy_from(p);
        at += p.size(dim);
    }
    return out;
}

void guided_euler_step_(Tensor& latents, const Tensor& v_in, float guidance_scale, float sigma, float sigma_next) {
    const bool cfg = guidance_scale > 1.0f;
    SD3_ASSERT(latents.dtype() == DType::F32 && latents.is_contiguous() && v_in.dtype() == DType::F32 &&
                   v_in.device() == latents.device() && v_in.numel() == (cfg ? 2 : 1) * latents.numel() &&
                   (!cfg || v_in.size(0) == 2 * latents.size(0)),
               "denoising step: latents ", latents.describe(), ", velocity ", v_in.describe(), ", guidance ",
               guidance_scale);
    const float dt = sigma_next - sigma;  // 0-dim float32 tensors in the reference
    SD3_ON_CUDA(latents, guided_euler_step_(latents, v_in, cfg, guidance_scale, dt));
    const Tensor v = v_in.contiguous();
    const int64_t n = latents.numel();
    float* x = latents.data<float>();
    const float* pv = v.data<float>();
    for (int64_t i = 0; i < n; ++i)
        x[i] = cpu::euler_step(x[i], dt, cfg ? cpu::cfg_guided(pv[i], pv[n + i], guidance_scale) : pv[i]);
}

}  // namespace sd3::ops
