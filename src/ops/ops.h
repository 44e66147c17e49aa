// Tensor-level numeric operations: check shapes and dtypes, allocate the result on the input's device, and call
// the backend (ops/cpu/ today; ops/cuda/ launchers take the same raw arguments). Models and nn/ blocks call
// these, never a backend directly, so one model code path serves every device.
// All tensors are float32 and contiguous unless a function says otherwise.
#pragma once

#include "core/tensor.h"
#include "ops/cpu/cpu_ops.h"

namespace sd3::ops {

using cpu::Activation;

// alpha · x [..., K] · w[N, K]ᵀ + b[N] -> [..., N]; b may be undefined. alpha scales the product, not the bias (a
// LoRA adapter's scaled up-projection carrying its layer's bias, nn/linear.cpp).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = {}, float alpha = 1.0f);
// activation(linear(x, w, b), GELU_TANH); with `pre`, also the pre-activation linear(x, w, b) (what the backward,
// linear_backward_gelu_tanh, needs). CUDA applies the GELU in the GEMM's epilogue, on the float32 result before its
// one rounding to the storage dtype (the separate ops round the pre-activation too: the two differ by at most an
// ulp of that dtype); the CPU computes the separate ops.
Tensor linear_gelu_tanh(const Tensor& x, const Tensor& w, const Tensor& b = {}, Tensor* pre = nullptr);
// LayerNorm over the last dimension; w and b may be undefined (no affine).
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);
// RMSNorm over the last dimension; w may be undefined.
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps);
// GroupNorm of x [B, C, H, W] with affine w, b [C].
Tensor group_norm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, float eps);
// Conv2d of x [B, Cin, H, W] with w [Cout, Cin, kh, kw], b [Cout] (may be undefined).
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, int64_t stride, int64_t pad);
Tensor activation(const Tensor& x, Activation act);
// In place (a non-contiguous x is replaced by a new tensor): the VAE's full-resolution activations are 256-512 MiB.
void activation_(Tensor& x, Activation act);
// Multi-head attention: q [B, Tq, H*D], k and v [B, Tk, H*D] -> [B, Tq, H*D]; bias [H, Tq, Tk] may be undefined.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, bool causal = false,
                 const Tensor& bias = {});

// Element-wise, same shapes (b may also broadcast as described).
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, float s);
// Concatenation along dimension `dim`.
Tensor cat(const std::vector<Tensor>& parts, int dim);
// One denoising step in place on `latents` (f32, contiguous, [B, ...]) from the model's velocity `v` (f32 on the
// same device): with guidance_scale > 1, v is [2B, ...], unconditional half first, and is guided first
// (diffusers: do_classifier_free_guidance = guidance_scale > 1); then the flow-matching Euler step from sigma to
// sigma_next. The arithmetic is ops/cpu/sampling_ops.h's on every device.
void guided_euler_step_(Tensor& latents, const Tensor& v, float guidance_scale, float sigma, float sigma_next);

}  // namespace sd3::ops
