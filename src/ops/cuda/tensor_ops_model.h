// Tensor-level CUDA operations behind ops/mmdit_ops.h and the VAE ops of ops/cpu/vae_ops.h: dtype and device
// checks, device-side contiguous inputs, results allocated on the device, then the launchers of cuda_ops.h and
// model_ops.h. Tensors are F32, BF16 or F16, all operands of a call alike; parameter-like
// gradients (dw, db, dshift, dscale, dgate) may instead be F32 (master gradients). Shape rules are the CPU's
// (ops/mmdit_ops.cpp), which checks them before dispatching here. No CUDA header here.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/mmdit_ops.h"

namespace sd3::cuda::tensor_ops {

// ---- allocation and copies ----
Tensor zeros(const Shape& shape, Device device, DType dtype);
Tensor copy(const Tensor& x);

// ---- backward passes of ops.h ----
Tensor linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dw, Tensor* db, bool need_dx,
                       float alpha);
void linear_acc_(Tensor& y, const Tensor& x, const Tensor& w, float alpha, bool w_is_kn);
Tensor linear_backward_gelu_tanh(const Tensor& dy, const Tensor& w, const Tensor& pre);
Tensor layer_norm_fwd(const Tensor& x, float eps, Tensor* mean, Tensor* rstd);
Tensor layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd, const Tensor& add);
Tensor rms_norm_fwd(const Tensor& x, const Tensor& w, float eps, Tensor* rstd);
Tensor rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw);
Tensor activation_backward(const Tensor& dy, const Tensor& x, cpu::Activation act);
// Flash attention where the head dim is built (cuda::attention_supported), the chunked path elsewhere (forward only).
Tensor attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, Tensor* lse);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, int64_t heads, float scale, Tensor* dq, Tensor* dk, Tensor* dv);
// The chunked attention of model_ops.h on contiguous q, k, v (and bias [H, Tq, Tk] or undefined); lse may be null.
Tensor attention_chunked(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, bool causal,
                         const Tensor& bias, Tensor* lse);

// ---- MMDiT ops ----
Tensor modulate(const Tensor& x, const Tensor& shift, const Tensor& scale);
// Whether the one-pass kernel takes this layout (cuda::layer_norm_modulate_fits); layer_norm_modulate asserts it.
bool layer_norm_modulate_fits(const Tensor& x, const Tensor& shift, const Tensor& scale);
Tensor layer_norm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale, float eps, Tensor* xhat,
                           Tensor* mean, Tensor* rstd);
Tensor modulate_backward(const Tensor& dy, const Tensor& x, const Tensor& scale, Tensor* dshift, Tensor* dscale);
void gated_add_(Tensor& x, const Tensor& gate, const Tensor& a);
Tensor gated_add_backward(const Tensor& dx, const Tensor& a, const Tensor& gate, Tensor* dgate);
Tensor patchify(const Tensor& img, int64_t p, cpu::PatchLayout layout);
Tensor unpatchify(const Tensor& tokens, int64_t channels, int64_t h, int64_t w, int64_t p, cpu::PatchLayout layout);
Tensor timestep_embedding(const Tensor& t, int64_t dim, bool flip_sin_to_cos, float downscale_freq_shift,
                          float max_period, DType dtype);
void add_(Tensor& y, const Tensor& x, float a);
void add_rows_(Tensor& y, const Tensor& x);
Tensor dropout(const Tensor& x, float p, uint64_t seed);
Tensor dropout_backward(const Tensor& dy, float p, uint64_t seed);

// ---- VAE ----
Tensor upsample_nearest2x(const Tensor& x);
Tensor pad_right_bottom(const Tensor& x, int64_t right, int64_t bottom);

}  // namespace sd3::cuda::tensor_ops
