// Dequantization of frozen weights (int8 per-row, fp8 e4m3/e5m2, bitsandbytes NF4) into bf16/f16/f32 for
// cuBLASLt, and the linear layer over such a weight. Layer by layer for now (DESIGN.md "Numerics" allows it);
// a per-tile dequantizing GEMM that never writes the whole dequantized weight is the next step.
#include <cuda_fp8.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

// bitsandbytes' NF4 code book (research/gpu-components.md §4b): normal quantiles scaled to [-1, 1].
__constant__ float kNf4Codes[16] = {-1.0f,
                                    -0.6961928009986877f,
                                    -0.5250730514526367f,
                                    -0.39491748809814453f,
                                    -0.28444138169288635f,
                                    -0.18477343022823334f,
                                    -0.09105003625154495f,
                                    0.0f,
                                    0.07958029955625534f,
                                    0.16093020141124725f,
                                    0.24611230194568634f,
                                    0.33791524171829224f,
                                    0.44070982933044434f,
                                    0.5626170039176941f,
                                    0.7229568362236023f,
                                    1.0f};

template <typename T>
__global__ void dequantize_kernel(T* dst, QuantWeight w, int64_t N, int64_t K) {
    const int64_t n = N * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = 0.0f;
        switch (w.format) {
            case QuantFormat::INT8_ROW:
                v = static_cast<float>(static_cast<const int8_t*>(w.data)[i]) * w.scale[i / K];
                break;
            case QuantFormat::FP8_E4M3: {
                __nv_fp8_e4m3 q;
                q.__x = static_cast<const __nv_fp8_storage_t*>(w.data)[i];
                v = static_cast<float>(q);
                if (w.scale != nullptr) v *= w.scale[i / K];
                break;
            }
            case QuantFormat::FP8_E5M2: {
                __nv_fp8_e5m2 q;
                q.__x = static_cast<const __nv_fp8_storage_t*>(w.data)[i];
                v = static_cast<float>(q);
                if (w.scale != nullptr) v *= w.scale[i / K];
                break;
            }
            case QuantFormat::NF4: {
                const uint8_t byte = static_cast<const uint8_t*>(w.data)[i / 2];
                const int code = (i % 2 == 0) ? (byte >> 4) : (byte & 0xF);
                v = kNf4Codes[code] * w.scale[i / w.block];
                break;
            }
        }
        dst[i] = from_f<T>(v);
    }
}

}  // namespace

void dequantize(const Exec& ex, void* dst, DType dt, const QuantWeight& w, int64_t N, int64_t K) {
    SD3_ASSERT(w.data != nullptr, "dequantize: no weight data");
    SD3_ASSERT(w.format == QuantFormat::FP8_E4M3 || w.format == QuantFormat::FP8_E5M2 || w.scale != nullptr,
               "dequantize: this format needs its scales");
    SD3_ASSERT(w.format != QuantFormat::NF4 || w.block > 0, "dequantize: NF4 block size ", w.block);
    const int64_t n = N * K;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, dequantize_kernel<T><<<grid_for(n, 256), 256, 0, ex.stream>>>(static_cast<T*>(dst), w,
                                                                                            N, K));
    SD3_CUDA_LAUNCHED();
}

size_t linear_fwd_quantized_workspace(int64_t N, int64_t K, DType dt) {
    return static_cast<size_t>(N * K) * dtype_size(dt);
}

void linear_fwd_quantized(const Exec& ex, void* y, const void* x, const QuantWeight& w, const void* b, int64_t M,
                          int64_t K, int64_t N, DType dt) {
    SD3_ASSERT(ex.scratch_bytes >= linear_fwd_quantized_workspace(N, K, dt), "linear_fwd_quantized: scratch of ",
               ex.scratch_bytes, " bytes, needs ", linear_fwd_quantized_workspace(N, K, dt));
    dequantize(ex, ex.scratch, dt, w, N, K);
    linear_fwd(ex, y, x, ex.scratch, b, M, K, N, dt);
}

}  // namespace sd3::cuda
