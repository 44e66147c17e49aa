// Tensor-level weight-only quantized Linear: x [..., in] · dequant(w)[out, in]ᵀ (+ b) -> [..., out], float32.
// The weight is a raw view (ops/cpu/quant_ops.h) so this layer does not depend on io/; io/quant.h's
// QuantizedMatrix::view() makes one. CPU today; the CUDA backend adds its dispatch here.
#pragma once

#include "core/tensor.h"
#include "ops/cpu/quant_ops.h"

namespace sd3::ops {

Tensor linear_quantized(const Tensor& x, const cpu::QuantWeightView& w, const Tensor& b = {});
// The whole weight [rows, cols] dequantized to `dtype` on `device` (where the view's memory is).
Tensor dequantize_weight(const cpu::QuantWeightView& w, DType dtype, Device device);

}  // namespace sd3::ops
