// Dequantization of frozen weights in every format of ops/cpu/quant_ops.h (f32/f16/bf16 casts, fp8 e4m3 cast,
// int8 with a per-row absmax, bitsandbytes NF4) into bf16/f16/f32 for cuBLASLt, and the linear layer over such a
// weight. The arithmetic is the CPU spec's (ops/cpu/quant.cpp), element for element, so the dequantized weight
// equals the CPU's before its rounding to dt. Layer by layer for now (DESIGN.md "Numerics" allows it); a
// per-tile dequantizing GEMM that never writes the whole dequantized weight is the next step.
#include <cuda_fp8.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

using cpu::QuantFormat;
using cpu::QuantWeightView;

// bitsandbytes' NF4 code book, the values of cpu::kNF4Code.
__constant__ float kNf4Codes[16] = {SD3_NF4_CODE_VALUES};

template <typename T>
__global__ void dequantize_kernel(T* dst, QuantWeightView w) {
    const int64_t n = w.rows * w.cols;
    SD3_GRID_STRIDE(i, n) {
        float v = 0.0f;
        switch (w.format) {
            case QuantFormat::F32: v = static_cast<const float*>(w.data)[i]; break;
            case QuantFormat::F16: v = __half2float(static_cast<const __half*>(w.data)[i]); break;
            case QuantFormat::BF16: v = __bfloat162float(static_cast<const __nv_bfloat16*>(w.data)[i]); break;
            case QuantFormat::FP8_E4M3: {
                __nv_fp8_e4m3 q;
                q.__x = static_cast<const __nv_fp8_storage_t*>(w.data)[i];
                v = static_cast<float>(q);
                break;
            }
            case QuantFormat::INT8_ROW: {
                const float s = w.scale[i / w.cols] / 127.0f;  // the spec's order: absmax / 127, then times q
                v = static_cast<float>(static_cast<const int8_t*>(w.data)[i]) * s;
                break;
            }
            case QuantFormat::NF4: {
                const uint8_t byte = static_cast<const uint8_t*>(w.data)[i / 2];
                const int code = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
                v = kNf4Codes[code] * w.scale[i / w.block_size];
                break;
            }
        }
        dst[i] = from_f<T>(v);
    }
}

}  // namespace

void dequantize(const Exec& ex, void* dst, DType dt, const QuantWeightView& w) {
    SD3_ASSERT(w.data != nullptr, "dequantize: no weight data");
    SD3_ASSERT((w.format != QuantFormat::INT8_ROW && w.format != QuantFormat::NF4) || w.scale != nullptr,
               "dequantize: ", cpu::quant_format_name(w.format), " weight without its scales");
    SD3_ASSERT(w.format != QuantFormat::NF4 || w.block_size > 0, "dequantize: NF4 block size ", w.block_size);
    const int64_t n = w.rows * w.cols;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, dequantize_kernel<T><<<grid_for(n, 256), 256, 0, ex.stream>>>(static_cast<T*>(dst), w));
    SD3_CUDA_LAUNCHED();
}

namespace {
// A weight stored in the compute dtype (T5 kept in bf16, say) is its own dequantization: the GEMM reads it where
// it is, without a copy into the scratch.
bool stored_in(const QuantWeightView& w, DType dt) {
    return (w.format == QuantFormat::F32 && dt == DType::F32) || (w.format == QuantFormat::F16 && dt == DType::F16) ||
           (w.format == QuantFormat::BF16 && dt == DType::BF16);
}
}  // namespace

size_t linear_fwd_quantized_workspace(const QuantWeightView& w, DType dt) {
    return stored_in(w, dt) ? 0 : static_cast<size_t>(w.rows * w.cols) * dtype_size(dt);
}

void linear_fwd_quantized(const Exec& ex, void* y, const void* x, const QuantWeightView& w, const void* b, int64_t M,
                          DType dt) {
    if (stored_in(w, dt)) {
        linear_fwd(ex, y, x, w.data, b, M, w.cols, w.rows, dt);
        return;
    }
    SD3_ASSERT(ex.scratch_bytes >= linear_fwd_quantized_workspace(w, dt), "linear_fwd_quantized: scratch of ",
               ex.scratch_bytes, " bytes, needs ", linear_fwd_quantized_workspace(w, dt));
    dequantize(ex, ex.scratch, dt, w);
    linear_fwd(ex, y, x, ex.scratch, b, M, w.cols, w.rows, dt);
}

}  // namespace sd3::cuda
