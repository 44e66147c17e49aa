// Shape checks and CPU dispatch for ops/quant_linear.h.
#include "ops/quant_linear.h"

#include "core/check.h"
#include "ops/dispatch.h"

namespace sd3::ops {

Tensor linear_quantized(const Tensor& x_in, const cpu::QuantWeightView& w, const Tensor& b) {
    // An input on a CUDA device runs there (f32, bf16 or f16); the view must then point at device memory.
    SD3_ON_CUDA(x_in, linear_quantized(x_in, w, b));
    SD3_ASSERT(x_in.defined() && x_in.dtype() == DType::F32 && x_in.device().is_cpu(),
               "linear_quantized: input must be f32 on the CPU, got ", x_in.describe());
    const Tensor x = x_in.contiguous();
    const int64_t K = x.size(-1);
    SD3_ASSERT(w.cols == K && w.data != nullptr, "linear_quantized: input ", x.describe(), " vs weight [", w.rows, ", ",
               w.cols, "] (", cpu::quant_format_name(w.format), ")");
    if (b.defined()) SD3_ASSERT(b.numel() == w.rows, "linear_quantized: bias ", b.describe(), " for ", w.rows, " outputs");
    Shape out_shape = x.shape();
    out_shape.back() = w.rows;
    Tensor y = Tensor::empty(out_shape, DType::F32, x.device());  // [..., out]
    const Tensor bc = b.defined() ? b.contiguous() : Tensor();
    cpu::quant_linear_fwd(y.data<float>(), x.data<float>(), w, bc.defined() ? bc.data<float>() : nullptr,
                          x.numel() / K);
    return y;
}

Tensor dequantize_weight(const cpu::QuantWeightView& w, DType dtype, Device device) {
#ifdef SD3_HAVE_CUDA
    if (device.type == DeviceType::CUDA) return cuda::tensor_ops::dequantize_weight(w, dtype, device);
#endif
    SD3_ASSERT(device.is_cpu() && dtype == DType::F32, "dequantize_weight: f32 on the CPU, got ", dtype_name(dtype),
               " on ", device.str());
    Tensor out = Tensor::empty({w.rows, w.cols}, DType::F32);
    cpu::dequantize_rows(out.data<float>(), w, 0, w.rows);
    return out;
}

}  // namespace sd3::ops
