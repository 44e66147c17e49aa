// Element-wise kernels (activations and their derivatives, add/mul/scale, strided copy with dtype conversion, the
// guided Euler step of the sampler, the batched transpose around cuDNN's convolutions) and the ordered two-stage
// column sums behind every parameter-gradient reduction.
// Activation formulas are the CPU spec's (ops/cpu/activation.cpp), in float32.
#include <algorithm>

#include "ops/cpu/sampling_ops.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float act_fwd(float v, Activation act) {
    switch (act) {
        case Activation::SILU: return v * sigmoid(v);
        case Activation::GELU_TANH: return gelu_tanh(v);
        case Activation::GELU_ERF: return 0.5f * v * (1.0f + erff(v * kInvSqrt2));
        case Activation::QUICK_GELU: return v * sigmoid(1.702f * v);
    }
    return 0.0f;
}

__device__ __forceinline__ float act_grad(float v, Activation act) {
    switch (act) {
        case Activation::SILU: {
            const float s = sigmoid(v);
            return s * (1.0f + v * (1.0f - s));
        }
        case Activation::GELU_TANH: return gelu_tanh_grad(v);
        case Activation::GELU_ERF: {
            const float cdf = 0.5f * (1.0f + erff(v * kInvSqrt2));
            const float pdf = expf(-0.5f * v * v) * 0.3989422804014327f;
            return cdf + v * pdf;
        }
        case Activation::QUICK_GELU: {
            const float s = sigmoid(1.702f * v);
            return s + 1.702f * v * s * (1.0f - s);
        }
    }
    return 0.0f;
}

template <typename T>
__global__ void activation_fwd_kernel(T* y, const T* x, int64_t n, Activation act) {
    SD3_GRID_STRIDE(i, n)
        y[i] = from_f<T>(act_fwd(to_f(x[i]), act));
}

template <typename T>
__global__ void activation_bwd_kernel(T* dx, const T* dy, const T* x, int64_t n, Activation act) {
    SD3_GRID_STRIDE(i, n)
        dx[i] = from_f<T>(to_f(dy[i]) * act_grad(to_f(x[i]), act));
}

template <typename T>
__global__ void activation_fwd_vec_kernel(T* y, const T* x, int64_t vecs, Activation act) {
    constexpr int L = Vec<T>::kLanes;
    SD3_GRID_STRIDE(i, vecs) {
        Vec<T> v;
        v.load(x + i * L);
#pragma unroll
        for (int k = 0; k < L; ++k) v.v[k] = act_fwd(v.v[k], act);
        v.store(y + i * L);
    }
}

template <typename T>
__global__ void activation_bwd_vec_kernel(T* dx, const T* dy, const T* x, int64_t vecs, Activation act) {
    constexpr int L = Vec<T>::kLanes;
    SD3_GRID_STRIDE(i, vecs) {
        Vec<T> g, v;
        g.load(dy + i * L);
        v.load(x + i * L);
#pragma unroll
        for (int k = 0; k < L; ++k) g.v[k] = g.v[k] * act_grad(v.v[k], act);
        g.store(dx + i * L);
    }
}

template <typename T>
__global__ void binary_kernel(T* y, const T* a, const T* b, int64_t n, Binary op) {
    SD3_GRID_STRIDE(i, n) {
        const float va = to_f(a[i]), vb = to_f(b[i]);
        y[i] = from_f<T>(op == Binary::ADD ? va + vb : va * vb);
    }
}

template <typename T>
__global__ void scale_kernel(T* y, const T* x, float s, int64_t n) {
    SD3_GRID_STRIDE(i, n)
        y[i] = from_f<T>(to_f(x[i]) * s);
}

struct StridedLayout {
    int64_t shape[kMaxDims];
    int64_t src_strides[kMaxDims];
    int64_t dst_strides[kMaxDims];
    int ndim;
};

template <typename D, typename S>
__global__ void copy_strided_kernel(D* dst, const S* src, StridedLayout l, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        int64_t rest = i, so = 0, dof = 0;
        for (int d = l.ndim - 1; d >= 0; --d) {
            const int64_t idx = rest % l.shape[d];
            rest /= l.shape[d];
            so += idx * l.src_strides[d];
            dof += idx * l.dst_strides[d];
        }
        dst[dof] = from_f<D>(to_f(src[so]));
    }
}

// Stage 1 of a column sum: block (x: 256 columns, y: one chunk of rows).
template <typename T>
__global__ void column_partials_kernel(float* partial, const T* src, int64_t rows, int64_t cols, int64_t rows_per) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int64_t r0 = blockIdx.y * rows_per, r1 = min(rows, r0 + rows_per);
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; ++r) acc += to_f(src[r * cols + c]);
    partial[blockIdx.y * cols + c] = acc;
}

template <typename T>
__global__ void sum_partials_kernel(T* dst, const float* partial, int64_t chunks, int64_t cols) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int64_t k = 0; k < chunks; ++k) acc += partial[k * cols + c];
    dst[c] = from_f<T>(to_f(dst[c]) + acc);
}

// One 32x32 tile per block (32 x 8 threads), through shared memory so both the read and the write are coalesced.
template <typename T>
__global__ void transpose_kernel(T* out, const T* in, int64_t rows, int64_t cols, const T* col_bias) {
    __shared__ float tile[32][33];
    const int64_t base = static_cast<int64_t>(blockIdx.z) * rows * cols;
    for (int64_t r0 = blockIdx.y * int64_t{32}; r0 < rows; r0 += gridDim.y * int64_t{32}) {
        const int64_t c0 = blockIdx.x * int64_t{32};
        for (int i = threadIdx.y; i < 32; i += 8) {
            const int64_t r = r0 + i, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[i][threadIdx.x] = to_f(in[base + r * cols + c]);
        }
        __syncthreads();
        for (int i = threadIdx.y; i < 32; i += 8) {
            const int64_t c = c0 + i, r = r0 + threadIdx.x;
            if (r < rows && c < cols) {
                float v = tile[threadIdx.x][i];
                if (col_bias != nullptr) v += to_f(col_bias[c]);
                out[base + c * rows + r] = from_f<T>(v);
            }
        }
        __syncthreads();
    }
}

// x [n] and v [n] (or [2n], unconditional half first, with guidance), as ops::guided_euler_step_ on the CPU.
__global__ void guided_euler_kernel(float* x, const float* v, int64_t n, bool cfg, float guidance_scale, float dt) {
    SD3_GRID_STRIDE(i, n) {
        const float vel = cfg ? cpu::cfg_guided(v[i], v[n + i], guidance_scale) : v[i];
        x[i] = cpu::euler_step(x[i], dt, vel);
    }
}

template <typename T>
__global__ void fill_rows_kernel(T* y, const T* bias, int64_t rows, int64_t cols) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {  // rows over y: no division per element
        const T v = bias[r];
        for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
             c += static_cast<int64_t>(gridDim.x) * blockDim.x)
            y[r * cols + c] = v;
    }
}

}  // namespace

void guided_euler_step(const Exec& ex, float* x, const float* v, int64_t n, bool cfg, float guidance_scale,
                       float dt) {
    if (n == 0) return;
    guided_euler_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(x, v, n, cfg, guidance_scale, dt);
    SD3_CUDA_LAUNCHED();
}

void activation_fwd(const Exec& ex, void* y, const void* x, int64_t n, Activation act, DType dt) {
    if (n == 0) return;
    if (vectorizable(n, dt, {y, x})) {
        const int64_t vecs = n / vec_lanes(dt);
        SD3_DISPATCH_FLOAT(dt, T, activation_fwd_vec_kernel<T><<<grid_for(vecs, kThreads), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(y), static_cast<const T*>(x), vecs, act));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, activation_fwd_kernel<T><<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), n, act));
    SD3_CUDA_LAUNCHED();
}

void activation_bwd(const Exec& ex, void* dx, const void* dy, const void* x, int64_t n, Activation act, DType dt) {
    if (n == 0) return;
    if (vectorizable(n, dt, {dx, dy, x})) {
        const int64_t vecs = n / vec_lanes(dt);
        SD3_DISPATCH_FLOAT(dt, T, activation_bwd_vec_kernel<T><<<grid_for(vecs, kThreads), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x), vecs,
                                      act));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, activation_bwd_kernel<T><<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x), n, act));
    SD3_CUDA_LAUNCHED();
}

void binary(const Exec& ex, void* y, const void* a, const void* b, int64_t n, Binary op, DType dt) {
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, binary_kernel<T><<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(a), static_cast<const T*>(b), n, op));
    SD3_CUDA_LAUNCHED();
}

void scale(const Exec& ex, void* y, const void* x, float s, int64_t n, DType dt) {
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, scale_kernel<T><<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), s, n));
    SD3_CUDA_LAUNCHED();
}

void copy_strided(const Exec& ex, void* dst, DType dst_dt, const int64_t* dst_strides, const void* src, DType src_dt,
                  const int64_t* src_strides, const int64_t* shape, int ndim) {
    SD3_ASSERT(ndim >= 0 && ndim <= kMaxDims, "copy_strided: ", ndim, " dimensions (at most ", kMaxDims, ")");
    // Collapse the layout first: size-1 dimensions go, and a dimension merges into the next where both tensors
    // step over it as one run. A cat or a token slice then becomes rows of contiguous elements, and the copy
    // does fewer index divisions per element (or none: the memcpy below).
    StridedLayout l{};
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) {
        n *= shape[d];
        if (shape[d] == 1) continue;
        const int k = l.ndim - 1;
        if (k >= 0 && l.src_strides[k] == shape[d] * src_strides[d] && l.dst_strides[k] == shape[d] * dst_strides[d]) {
            l.shape[k] *= shape[d];
            l.src_strides[k] = src_strides[d];
            l.dst_strides[k] = dst_strides[d];
            continue;
        }
        l.shape[l.ndim] = shape[d];
        l.src_strides[l.ndim] = src_strides[d];
        l.dst_strides[l.ndim] = dst_strides[d];
        ++l.ndim;
    }
    if (n == 0) return;
    const int last = l.ndim - 1;
    if (dst_dt == src_dt && l.ndim <= 2 && (last < 0 || (l.src_strides[last] == 1 && l.dst_strides[last] == 1))) {
        // Rows of contiguous elements of one dtype that do not overlap (no broadcast): the runtime's 2-D copy.
        const size_t es = dtype_size(dst_dt);
        const size_t width = static_cast<size_t>(last < 0 ? 1 : l.shape[last]) * es;
        const size_t rows = l.ndim == 2 ? static_cast<size_t>(l.shape[0]) : 1;
        const size_t dpitch = l.ndim == 2 ? static_cast<size_t>(l.dst_strides[0]) * es : width;
        const size_t spitch = l.ndim == 2 ? static_cast<size_t>(l.src_strides[0]) * es : width;
        if (dpitch >= width && spitch >= width) {
            SD3_CUDA_CHECK(
                cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, ex.stream));
            return;
        }
    }
    SD3_DISPATCH_FLOAT(dst_dt, D,
                       SD3_DISPATCH_FLOAT(src_dt, S,
                                          copy_strided_kernel<D, S><<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(
                                              static_cast<D*>(dst), static_cast<const S*>(src), l, n)));
    SD3_CUDA_LAUNCHED();
}

void transpose_batched(const Exec& ex, void* out, const void* in, int64_t batch, int64_t rows, int64_t cols, DType dt,
                       const void* col_bias) {
    if (batch * rows * cols == 0) return;
    SD3_ASSERT(batch <= 65535 && cols <= int64_t{65535} * 32, "transpose_batched: ", batch, " matrices of ", rows, "x",
               cols);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, 32)),
                    static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 32), 65535)), static_cast<unsigned>(batch));
    SD3_DISPATCH_FLOAT(dt, T, transpose_kernel<T><<<grid, dim3(32, 8), 0, ex.stream>>>(
                                  static_cast<T*>(out), static_cast<const T*>(in), rows, cols,
                                  static_cast<const T*>(col_bias)));
    SD3_CUDA_LAUNCHED();
}

namespace detail {

int64_t reduce_chunks(int64_t rows) {
    // About 32 rows per chunk, at most 512 chunks: enough blocks to fill the GPU (a 4096-token row of adaLN
    // gradients makes 128 chunks per 512-column slice), little stage-2 work.
    const int64_t chunks = ceil_div(rows, 32);
    return chunks < 1 ? 1 : (chunks > 512 ? 512 : chunks);
}

void sum_partials_into(const Exec& ex, void* dst, DType dst_dt, const float* partial, int64_t chunks, int64_t cols) {
    if (cols == 0) return;
    SD3_DISPATCH_FLOAT(dst_dt, T, sum_partials_kernel<T><<<ceil_div(cols, kThreads), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(dst), partial, chunks, cols));
    SD3_CUDA_LAUNCHED();
}

void column_partials(const Exec& ex, float* partial, const void* src, DType dt, int64_t rows, int64_t cols) {
    const int64_t chunks = reduce_chunks(rows);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kThreads)), static_cast<unsigned>(chunks));
    SD3_DISPATCH_FLOAT(dt, T, column_partials_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                  partial, static_cast<const T*>(src), rows, cols, ceil_div(rows, chunks)));
    SD3_CUDA_LAUNCHED();
}

void fill_rows(const Exec& ex, void* y, const void* bias, int64_t rows, int64_t cols, DType dt) {
    if (rows * cols == 0) return;
    const dim3 grid(grid_for(cols, kThreads), static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
    SD3_DISPATCH_FLOAT(dt, T, fill_rows_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(bias), rows, cols));
    SD3_CUDA_LAUNCHED();
}

}  // namespace detail

}  // namespace sd3::cuda
