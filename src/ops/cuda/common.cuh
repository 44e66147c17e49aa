// Shared device helpers for the kernels of ops/cuda: loads and stores of the storage dtypes as float32,
// warp reductions, launch checks and the dtype switch that instantiates each kernel for F32, BF16 and F16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "core/check.h"
#include "core/dtype.h"

namespace sd3::cuda {

#define SD3_CUDA_CHECK(expr)                                                                              \
    do {                                                                                                  \
        const cudaError_t sd3_err_ = (expr);                                                              \
        SD3_ASSERT(sd3_err_ == cudaSuccess, #expr, " failed: ", cudaGetErrorString(sd3_err_));            \
    } while (0)

// After a kernel launch: a bad launch configuration is a bug in the launcher.
#define SD3_CUDA_LAUNCHED() SD3_CUDA_CHECK(cudaGetLastError())

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024), in a fixed order; every thread
// gets the result. `shared` holds 32 values.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : F(0);
    return warp_sum(v);
}

// Maximum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 values.
__device__ __forceinline__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// GELU, tanh approximation (ops/cpu/activation.cpp), and its derivative: the activation kernels and the GEMM
// fallback's epilogues.
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoeff = 0.044715f;
__device__ __forceinline__ float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + kGeluCoeff * v * v * v)));
}
__device__ __forceinline__ float gelu_tanh_grad(float v) {
    const float t = tanhf(kSqrt2OverPi * (v + kGeluCoeff * v * v * v));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoeff * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
}

// 16-byte vectors of a storage dtype (8 bf16/f16 or 4 f32 elements) as float32 lanes: element-wise kernels move
// whole vectors where every operand is aligned to them, the same math per element, so the same results.
// Vec<T, 2> is a pair of elements (one 4- or 8-byte access) for kernels whose threads own two columns.
template <int kBytes>
struct RawBytes;
template <>
struct RawBytes<4> {
    using type = uint32_t;
};
template <>
struct RawBytes<8> {
    using type = uint2;
};
template <>
struct RawBytes<16> {
    using type = uint4;
};

template <typename T, int kCount = 16 / sizeof(T)>
struct Vec {
    static constexpr int kLanes = kCount;
    using Raw = typename RawBytes<kCount * sizeof(T)>::type;
    float v[kLanes];
    __device__ __forceinline__ void load(const T* p) {
        const Raw raw = *reinterpret_cast<const Raw*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int k = 0; k < kLanes; ++k) v[k] = to_f(e[k]);
    }
    __device__ __forceinline__ void store(T* p) const {
        Raw raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int k = 0; k < kLanes; ++k) e[k] = from_f<T>(v[k]);
        *reinterpret_cast<Raw*>(p) = raw;
    }
};

// kCols adjacent elements as float32, in one access when kCols > 1 (a pair, or a whole Vec<T>): kernels whose
// threads own runs of columns read and write them through these, the same math for every run length.
template <typename T, int kCols>
__device__ __forceinline__ void load_cols(const T* p, float (&v)[kCols]) {
    if constexpr (kCols == 1) {
        v[0] = to_f(*p);
    } else {
        Vec<T, kCols> w;
        w.load(p);
#pragma unroll
        for (int k = 0; k < kCols; ++k) v[k] = w.v[k];
    }
}
template <typename T, int kCols>
__device__ __forceinline__ void store_cols(T* p, const float (&v)[kCols]) {
    if constexpr (kCols == 1) {
        *p = from_f<T>(v[0]);
    } else {
        Vec<T, kCols> w;
#pragma unroll
        for (int k = 0; k < kCols; ++k) w.v[k] = v[k];
        w.store(p);
    }
}

// Elements of `dt` in one 16-byte vector: Vec<T>'s lanes.
inline int64_t vec_lanes(DType dt) { return 16 / static_cast<int64_t>(dtype_size(dt)); }

// True when every count (elements of `dt`) is a whole number of `lanes`-element runs and every pointer (null ones
// count as aligned) is aligned to such a run: the condition for kernels that move `lanes` elements at once.
inline bool aligned_runs(int64_t lanes, DType dt, std::initializer_list<int64_t> counts,
                         std::initializer_list<const void*> ptrs) {
    for (int64_t n : counts)
        if (n % lanes != 0) return false;
    const uintptr_t bytes = static_cast<uintptr_t>(lanes) * dtype_size(dt);
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
    return true;
}

// `n` elements make whole 16-byte vectors and every pointer is aligned to one: the condition for the Vec kernels.
inline bool vectorizable(int64_t n, DType dt, std::initializer_list<const void*> ptrs) {
    return aligned_runs(vec_lanes(dt), dt, {n}, ptrs);
}

// A grid-stride loop of `i` over [0, n).
#define SD3_GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// Grid size for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int threads) {
    const int64_t blocks = ceil_div(n, threads);
    return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace sd3::cuda

// Runs `body` with `T` bound to the device type of storage dtype `dt` (F32, BF16 or F16).
#define SD3_DISPATCH_FLOAT(dt, T, ...)                                                              \
    do {                                                                                            \
        switch (dt) {                                                                               \
            case ::sd3::DType::F32: {                                                               \
                using T = float;                                                                    \
                __VA_ARGS__;                                                                        \
            } break;                                                                                \
            case ::sd3::DType::BF16: {                                                              \
                using T = __nv_bfloat16;                                                            \
                __VA_ARGS__;                                                                        \
            } break;                                                                                \
            case ::sd3::DType::F16: {                                                               \
                using T = __half;                                                                   \
                __VA_ARGS__;                                                                        \
            } break;                                                                                \
            default:                                                                                \
                SD3_ASSERT(false, "CUDA kernels take f32, bf16 or f16, got ", ::sd3::dtype_name(dt)); \
        }                                                                                           \
    } while (0)
