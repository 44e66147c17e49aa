// Tensor-level operations for training and the MMDiT: the backward passes of ops.h's linear, layer norm, RMS norm,
// activations and attention (with the forward's saved statistics), and the MMDiT-specific ops of
// ops/cpu/mmdit_ops.h. Same contract as ops.h: check shapes, allocate results on the input's device, dispatch to
// the backend (CPU: f32; CUDA: f32, bf16 or f16, all operands alike, except that accumulated parameter gradients
// may be f32 beside 16-bit activations). Gradient convention: `accumulate into` arguments (+=) are parameter-like gradients;
// returned tensors are fresh activation gradients (=).
#pragma once

#include "core/tensor.h"
#include "ops/cpu/mmdit_ops.h"
#include "ops/ops.h"

namespace sd3::ops {

using cpu::PatchLayout;

// ---- backward passes of ops.h ----
// Returns dx [..., K] = alpha·dy·w (undefined when !need_dx). Accumulates dw [N, K] += alpha·dyᵀ·x and db [N] += Σ dy
// when given (db only with alpha 1). x may be undefined when dw is not asked for. alpha folds a scale of dy (a LoRA
// adapter's) into the GEMMs instead of a pass over dy.
Tensor linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dw, Tensor* db, bool need_dx = true,
                       float alpha = 1.0f);
// In place: y [..., N] += alpha·x [..., K]·wᵀ for w [N, K], or += alpha·x·w for w [K, N] when `w_is_kn`; y contiguous.
// One GEMM that accumulates (on CUDA y is its C operand, read in the epilogue behind the math), where a product and
// an add_ would each pass over y: a frozen layer's product added to what its LoRA adapters wrote, an adapter's
// input gradient into the layer's.
void linear_acc_(Tensor& y, const Tensor& x, const Tensor& w, float alpha, bool w_is_kn = false);
// d pre [..., K] = activation_backward(linear_backward(dy, {}, w, ...), pre, GELU_TANH): the input gradient of a
// linear layer w [N, K] whose input was GELU-tanh(pre), through that GELU. CUDA applies GELU' in the GEMM's
// epilogue (one pass less over the 4D-wide activations); the CPU computes the separate ops.
Tensor linear_backward_gelu_tanh(const Tensor& dy, const Tensor& w, const Tensor& pre);
// LayerNorm without affine over the last dimension, saving mean and rstd [rows] for the backward.
Tensor layer_norm_fwd(const Tensor& x, float eps, Tensor* mean, Tensor* rstd);
// Returns dx, plus `add` when given (x's shape: a residual branch's gradient, summed in the same pass on CUDA).
Tensor layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                           const Tensor& add = {});
// RMSNorm over the last dimension with weight w (may be undefined), saving rstd [rows].
Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor* rstd);
// Returns dx; accumulates dw when given.
Tensor rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw);
Tensor activation_backward(const Tensor& dy, const Tensor& x, Activation act);
// Attention as ops::attention, saving lse [B, H, Tq].
Tensor attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, Tensor* lse);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, int64_t heads, float scale, Tensor* dq, Tensor* dk, Tensor* dv);

// ---- allocation and copies on the tensor's device (model code never calls the CPU-only Tensor copies) ----
Tensor zeros(const Shape& shape, Device device, DType dtype = DType::F32);
// A contiguous copy of x on its device.
Tensor copy(const Tensor& x);
// x.slice(dim, start, end) when that view is contiguous (a batch of one's token range: it shares x's memory),
// else a contiguous copy of it.
Tensor slice_contiguous(const Tensor& x, int dim, int64_t start, int64_t end);

// ---- MMDiT ops ----
// x [B, T, D]; shift and scale [B, D] (row-strided views of the adaLN output are fine).
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);
// modulate(layer_norm_fwd(x, eps, mean, rstd), shift, scale): one pass over x on CUDA (the same stored values as
// the two ops), the two ops elsewhere. With `xhat` (then also mean and rstd), the LayerNorm's output is stored too:
// what training keeps for the backward.
Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps,
                           Tensor* xhat = nullptr, Tensor* mean = nullptr, Tensor* rstd = nullptr);
// Returns dx; accumulates into dshift and dscale [B, D] (views of the adaLN output gradient) when given.
Tensor modulate_backward(const Tensor& dy, const Tensor& x, const Tensor& scale, Tensor* dshift, Tensor* dscale);
// In place: x [B, T, D] += gate [B, D] * a [B, T, D].
void gated_add_(Tensor& x, const Tensor& gate, const Tensor& a);
// Returns da = dx * gate; accumulates dgate [B, D] += Σ_t dx * a when given.
Tensor gated_add_backward(const Tensor& dx, const Tensor& a, const Tensor& gate, Tensor* dgate);
// img [B, C, H, W] -> tokens [B, (H/p)(W/p), C p p].
Tensor patchify(const Tensor& img, int64_t p, PatchLayout layout);
// tokens [B, (H/p)(W/p), C p p] -> img [B, C, H, W].
Tensor unpatchify(const Tensor& tokens, int64_t channels, int64_t h, int64_t w, int64_t p, PatchLayout layout);
// t [B] float32 -> [B, dim] (diffusers Timesteps) in `dtype` (f32 on the CPU; any of f32/bf16/f16 on CUDA).
Tensor timestep_embedding(const Tensor& t, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                          float max_period = 10000.0f, DType dtype = DType::F32);
// In place: y += a * x (same shape).
void add_(Tensor& y, const Tensor& x, float a = 1.0f);
// In place: y [B, ...] += x broadcast over the first dimension (x.numel() * B == y.numel()), e.g. position rows.
void add_rows_(Tensor& y, const Tensor& x);
// Inverted dropout with a counter-based mask (ops/cpu/mmdit_ops.h); the backward draws the same mask.
Tensor dropout(const Tensor& x, float p, uint64_t seed);
Tensor dropout_backward(const Tensor& dy, float p, uint64_t seed);

}  // namespace sd3::ops
