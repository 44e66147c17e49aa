// Kernels behind model_ops.h (except attention): adaLN modulation and gated residuals with their ordered token
// reductions, patchify/unpatchify, the timestep sinusoid, position embeddings, axpy, the counter-based dropout
// and the VAE's upsample/pad. Formulas follow the CPU spec (ops/cpu/mmdit_ops.cpp, ops/cpu/vae_ops.cpp) term by
// term, in float32.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"
#include "ops/cuda/model_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void modulate_fwd_kernel(T* y, const T* x, const T* shift, const T* scale, int64_t tokens, int64_t dim,
                                    int64_t stride, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        const int64_t d = i % dim, b = i / (tokens * dim);
        const float sc = to_f(scale[b * stride + d]), sh = to_f(shift[b * stride + d]);
        y[i] = from_f<T>(to_f(x[i]) * (1.0f + sc) + sh);
    }
}

// Stage 1 of the token reductions behind modulate_bwd and gated_add_bwd: out = dy * c, where c is one adaLN row
// (1 + scale for modulate, gate for gated_add), with one f32 partial per (b, chunk, d) of p1 = Σ dy and
// p2 = Σ dy * other (x for modulate, a for gated_add). Block (x: kReduceThreads * kCols columns, y: a chunk of
// tokens, z: batch element); out, p1, p2 each skipped when null. Rows are read kRowsInFlight at a time, their loads
// in one branch-free run (rows past the chunk's end re-read its last row and are not used), so each thread keeps
// them all outstanding: loads under a per-row branch were issued one row at a time, about 20 µs a launch whatever
// the number of rows. The sums still add the rows in token order.
constexpr int kReduceThreads = 64;
constexpr int kRowsInFlight = 8;

template <typename T, int kCols>
__global__ void scale_rows_token_sums_kernel(T* out, float* p1, float* p2, const T* dy, const T* other, const T* coef,
                                             bool one_plus_coef, int64_t tokens, int64_t dim, int64_t stride,
                                             int64_t per_chunk) {
    const int64_t d = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * kCols, b = blockIdx.z;
    if (d >= dim) return;
    const int64_t t0 = blockIdx.y * per_chunk, t1 = min(tokens, t0 + per_chunk);
    float c[kCols], s1[kCols] = {}, s2[kCols] = {};
    load_cols<T, kCols>(coef + b * stride + d, c);
    if (one_plus_coef) {
#pragma unroll
        for (int k = 0; k < kCols; ++k) c[k] = 1.0f + c[k];
    }
    for (int64_t t = t0; t < t1; t += kRowsInFlight) {
        const int rows = t1 - t < kRowsInFlight ? static_cast<int>(t1 - t) : kRowsInFlight;
        float g[kRowsInFlight][kCols], ov[kRowsInFlight][kCols];
#pragma unroll
        for (int r = 0; r < kRowsInFlight; ++r) {
            const int64_t i = (b * tokens + (r < rows ? t + r : t1 - 1)) * dim + d;
            load_cols<T, kCols>(dy + i, g[r]);
            load_cols<T, kCols>(other + i, ov[r]);
        }
#pragma unroll
        for (int r = 0; r < kRowsInFlight; ++r) {
            if (r >= rows) break;
            float o[kCols];
#pragma unroll
            for (int k = 0; k < kCols; ++k) {
                o[k] = g[r][k] * c[k];
                s1[k] += g[r][k];
                s2[k] += g[r][k] * ov[r][k];
            }
            if (out != nullptr) store_cols<T, kCols>(out + (b * tokens + t + r) * dim + d, o);
        }
    }
    const int64_t at = (b * gridDim.y + blockIdx.y) * dim + d;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
        if (p1 != nullptr) p1[at + k] = s1[k];
        if (p2 != nullptr) p2[at + k] = s2[k];
    }
}

template <typename T>
__global__ void gated_add_fwd_kernel(T* x, const T* gate, const T* a, int64_t tokens, int64_t dim, int64_t stride,
                                     int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        const int64_t d = i % dim, b = i / (tokens * dim);
        x[i] = from_f<T>(to_f(x[i]) + to_f(gate[b * stride + d]) * to_f(a[i]));
    }
}

// The Vec forms of the forward kernels above (common.cuh): the same math, L elements per thread.
template <typename T>
__global__ void modulate_fwd_vec_kernel(T* y, const T* x, const T* shift, const T* scale, int64_t tokens, int64_t dim,
                                        int64_t stride, int64_t vecs) {
    constexpr int L = Vec<T>::kLanes;
    SD3_GRID_STRIDE(i, vecs) {
        const int64_t e = i * L, d = e % dim, b = e / (tokens * dim);
        Vec<T> v, sc, sh;
        v.load(x + e);
        sc.load(scale + b * stride + d);
        sh.load(shift + b * stride + d);
#pragma unroll
        for (int k = 0; k < L; ++k) v.v[k] = v.v[k] * (1.0f + sc.v[k]) + sh.v[k];
        v.store(y + e);
    }
}

template <typename T>
__global__ void gated_add_fwd_vec_kernel(T* x, const T* gate, const T* a, int64_t tokens, int64_t dim, int64_t stride,
                                         int64_t vecs) {
    constexpr int L = Vec<T>::kLanes;
    SD3_GRID_STRIDE(i, vecs) {
        const int64_t e = i * L, d = e % dim, b = e / (tokens * dim);
        Vec<T> v, g, av;
        v.load(x + e);
        g.load(gate + b * stride + d);
        av.load(a + e);
#pragma unroll
        for (int k = 0; k < L; ++k) v.v[k] = v.v[k] + g.v[k] * av.v[k];
        v.store(x + e);
    }
}

template <typename T>
__global__ void axpy_vec_kernel(T* y, const T* x, float a, int64_t vecs) {
    constexpr int L = Vec<T>::kLanes;
    SD3_GRID_STRIDE(i, vecs) {
        Vec<T> vy, vx;
        vy.load(y + i * L);
        vx.load(x + i * L);
#pragma unroll
        for (int k = 0; k < L; ++k) vy.v[k] = __fadd_rn(vy.v[k], __fmul_rn(a, vx.v[k]));
        vy.store(y + i * L);
    }
}

// Stage 2: dst[b * stride + d] += Σ_k partial[(b * chunks + k) * dim + d]. Block (x: 32 columns, y:
// kPartialLanes lanes) of batch element blockIdx.y: lane l sums chunks l, l + kPartialLanes, ... in order, then
// lane 0 adds the lanes' sums in lane order, so the result is the same on every run.
constexpr int kPartialLanes = 8;

template <typename G>
__global__ void sum_token_partials_kernel(G* dst, const float* partial, int64_t chunks, int64_t dim, int64_t stride) {
    __shared__ float lane_sums[kPartialLanes][32];
    const int64_t d = blockIdx.x * int64_t{32} + threadIdx.x, b = blockIdx.y;
    float acc = 0.0f;
    if (d < dim) {
#pragma unroll 4
        for (int64_t k = threadIdx.y; k < chunks; k += kPartialLanes) acc += partial[(b * chunks + k) * dim + d];
    }
    lane_sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y != 0 || d >= dim) return;
    float total = 0.0f;
#pragma unroll
    for (int l = 0; l < kPartialLanes; ++l) total += lane_sums[l][threadIdx.x];
    G* o = dst + b * stride + d;
    *o = from_f<G>(to_f(*o) + total);
}

// The token element and image element paired by cpu::patchify, from the token-side flat index.
__device__ __forceinline__ int64_t patch_image_index(int64_t tok, int64_t channels, int64_t h, int64_t w, int64_t p,
                                                     PatchLayout layout) {
    const int64_t width = channels * p * p, wp = w / p, n = (h / p) * wp;
    const int64_t col = tok % width, token = (tok / width) % n, b = tok / (width * n);
    const int64_t i = token / wp, j = token % wp;
    int64_t c, py, px;
    if (layout == PatchLayout::CHANNEL_FIRST) {
        c = col / (p * p);
        py = (col / p) % p;
        px = col % p;
    } else {
        c = col % channels;
        py = col / (p * channels);
        px = (col / channels) % p;
    }
    return ((b * channels + c) * h + i * p + py) * w + j * p + px;
}

// The inverse: the token-side index of an image element.
__device__ __forceinline__ int64_t patch_token_index(int64_t im, int64_t channels, int64_t h, int64_t w, int64_t p,
                                                     PatchLayout layout) {
    const int64_t x = im % w, y = (im / w) % h, c = (im / (w * h)) % channels, b = im / (w * h * channels);
    const int64_t i = y / p, py = y % p, j = x / p, px = x % p, wp = w / p, n = (h / p) * wp;
    const int64_t col = layout == PatchLayout::CHANNEL_FIRST ? (c * p + py) * p + px : (py * p + px) * channels + c;
    return (b * n + i * wp + j) * (channels * p * p) + col;
}

template <typename T>
__global__ void patchify_kernel(T* tokens, const T* img, int64_t channels, int64_t h, int64_t w, int64_t p,
                                PatchLayout layout, int64_t n) {
    SD3_GRID_STRIDE(i, n) tokens[i] = img[patch_image_index(i, channels, h, w, p, layout)];
}

template <typename T>
__global__ void unpatchify_kernel(T* img, const T* tokens, int64_t channels, int64_t h, int64_t w, int64_t p,
                                  PatchLayout layout, int64_t n) {
    SD3_GRID_STRIDE(i, n) img[i] = tokens[patch_token_index(i, channels, h, w, p, layout)];
}

template <typename T>
__global__ void timestep_kernel(T* out, const float* t, int64_t half, bool flip, float neg_log, float shift,
                                int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        const int64_t k = i % half, b = i / half;
        // The CPU's float32 steps: (neg_log * k) / (half - shift), exp, t * f, sin and cos; the transcendental
        // functions in double, rounded once to float (glibc's float versions are correctly rounded nearly always).
        const float e = __fdiv_rn(__fmul_rn(neg_log, static_cast<float>(k)), __fsub_rn(static_cast<float>(half), shift));
        const float f = static_cast<float>(exp(static_cast<double>(e)));
        const float a = __fmul_rn(t[b], f);
        const float s = static_cast<float>(sin(static_cast<double>(a)));
        const float c = static_cast<float>(cos(static_cast<double>(a)));
        T* o = out + b * 2 * half;
        o[k] = from_f<T>(flip ? c : s);
        o[half + k] = from_f<T>(flip ? s : c);
    }
}

template <typename T>
__global__ void axpy_kernel(T* y, const T* x, float a, int64_t n) {
    SD3_GRID_STRIDE(i, n) y[i] = from_f<T>(__fadd_rn(to_f(y[i]), __fmul_rn(a, to_f(x[i]))));
}

template <typename T>
__global__ void add_rows_kernel(T* y, const T* x, int64_t row, int64_t n) {
    SD3_GRID_STRIDE(i, n) y[i] = from_f<T>(to_f(y[i]) + to_f(x[i % row]));
}

// cpu::dropout_uniform, bit for bit: splitmix64's finalizer of (seed, index), top 24 bits as a float in [0, 1).
__device__ __forceinline__ float dropout_uniform(uint64_t seed, uint64_t index) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
__global__ void dropout_kernel(T* y, const T* x, float p, float keep_scale, uint64_t seed, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        y[i] = dropout_uniform(seed, static_cast<uint64_t>(i)) >= p ? from_f<T>(__fmul_rn(to_f(x[i]), keep_scale))
                                                                     : from_f<T>(0.0f);
    }
}

template <typename T>
__global__ void upsample2x_kernel(T* y, const T* x, int64_t h, int64_t w, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        const int64_t c = i % (2 * w), r = (i / (2 * w)) % (2 * h), plane = i / (4 * h * w);
        y[i] = x[(plane * h + r / 2) * w + c / 2];
    }
}

template <typename T>
__global__ void pad_kernel(T* y, const T* x, int64_t h, int64_t w, int64_t ho, int64_t wo, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        const int64_t c = i % wo, r = (i / wo) % ho, plane = i / (ho * wo);
        y[i] = (r < h && c < w) ? x[(plane * h + r) * w + c] : from_f<T>(0.0f);
    }
}

#undef SD3_GRID_STRIDE

unsigned blocks(int64_t n) { return grid_for(n, kThreads); }

// Stage 2 of a token reduction into `dst` (grad_dt, rows `stride` apart).
void sum_token_partials(const Exec& ex, void* dst, DType grad_dt, const float* partial, int64_t batch, int64_t chunks,
                        int64_t dim, int64_t stride) {
    const dim3 grid(static_cast<unsigned>(ceil_div(dim, 32)), static_cast<unsigned>(batch));
    SD3_DISPATCH_FLOAT(grad_dt, G, sum_token_partials_kernel<G><<<grid, dim3(32, kPartialLanes), 0, ex.stream>>>(
                                       static_cast<G*>(dst), partial, chunks, dim, stride));
    SD3_CUDA_LAUNCHED();
}

dim3 reduce_grid(int64_t batch, int64_t tokens, int64_t dim, int cols) {
    SD3_ASSERT(batch <= 65535, "adaLN gradient reduction over a batch of ", batch, ": at most 65535 (grid y, z)");
    return dim3(static_cast<unsigned>(ceil_div(dim, kReduceThreads * cols)),
                static_cast<unsigned>(detail::reduce_chunks(tokens)), static_cast<unsigned>(batch));
}

// Stage 1 (scale_rows_token_sums_kernel) into the partials p1, p2 (each [batch, reduce_chunks(tokens), dim] f32,
// or null), zeroed where there are no tokens, then stage 2 of each into d1, d2 (grad_dt, rows `stride` apart).
void scale_rows_token_sums(const Exec& ex, void* out, void* d1, float* p1, void* d2, float* p2, const void* dy,
                           const void* other, const void* coef, bool one_plus_coef, int64_t batch, int64_t tokens,
                           int64_t dim, int64_t stride, DType dt, DType grad_dt) {
    const int64_t chunks = detail::reduce_chunks(tokens);
    if (tokens > 0) {
        // 16-byte vectors of columns per thread where every row and adaLN chunk starts on one, else pairs, else
        // single columns.
        const std::initializer_list<const void*> ptrs = {out, dy, other, coef};
        const int cols = aligned_runs(vec_lanes(dt), dt, {dim, stride}, ptrs) ? static_cast<int>(vec_lanes(dt))
                         : aligned_runs(2, dt, {dim, stride}, ptrs)           ? 2
                                                                              : 1;
        SD3_DISPATCH_FLOAT(dt, T, {
            constexpr int kVec = Vec<T>::kLanes;
            const auto kernel = cols == kVec ? scale_rows_token_sums_kernel<T, kVec>
                                : cols == 2  ? scale_rows_token_sums_kernel<T, 2>
                                             : scale_rows_token_sums_kernel<T, 1>;
            kernel<<<reduce_grid(batch, tokens, dim, cols), kReduceThreads, 0, ex.stream>>>(
                static_cast<T*>(out), p1, p2, static_cast<const T*>(dy), static_cast<const T*>(other),
                static_cast<const T*>(coef), one_plus_coef, tokens, dim, stride, ceil_div(tokens, chunks));
        });
        SD3_CUDA_LAUNCHED();
    } else {
        const size_t bytes = static_cast<size_t>(batch * chunks * dim) * sizeof(float);
        if (p1 != nullptr) SD3_CUDA_CHECK(cudaMemsetAsync(p1, 0, bytes, ex.stream));
        if (p2 != nullptr) SD3_CUDA_CHECK(cudaMemsetAsync(p2, 0, bytes, ex.stream));
    }
    if (d1 != nullptr) sum_token_partials(ex, d1, grad_dt, p1, batch, chunks, dim, stride);
    if (d2 != nullptr) sum_token_partials(ex, d2, grad_dt, p2, batch, chunks, dim, stride);
}

}  // namespace

void modulate_fwd(const Exec& ex, void* y, const void* x, const void* shift, const void* scale, int64_t batch,
                  int64_t tokens, int64_t dim, int64_t stride, DType dt) {
    const int64_t n = batch * tokens * dim;
    if (n == 0) return;
    if (aligned_runs(vec_lanes(dt), dt, {dim, stride}, {y, x, shift, scale})) {
        const int64_t vecs = n / vec_lanes(dt);
        SD3_DISPATCH_FLOAT(dt, T, modulate_fwd_vec_kernel<T><<<blocks(vecs), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(shift),
                                      static_cast<const T*>(scale), tokens, dim, stride, vecs));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, modulate_fwd_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(shift),
                                  static_cast<const T*>(scale), tokens, dim, stride, n));
    SD3_CUDA_LAUNCHED();
}

size_t modulate_bwd_workspace(int64_t batch, int64_t tokens, int64_t dim) {
    return 2 * static_cast<size_t>(batch * detail::reduce_chunks(tokens) * dim) * sizeof(float);
}

void modulate_bwd(const Exec& ex, void* dx, void* dshift, void* dscale, const void* dy, const void* x,
                  const void* scale, int64_t batch, int64_t tokens, int64_t dim, int64_t stride, DType dt,
                  DType grad_dt) {
    if (batch * dim == 0) return;
    const size_t half = static_cast<size_t>(batch * detail::reduce_chunks(tokens) * dim);
    float* p1 = nullptr;
    float* p2 = nullptr;
    if (dshift != nullptr || dscale != nullptr) {
        SD3_ASSERT(ex.scratch_bytes >= modulate_bwd_workspace(batch, tokens, dim), "modulate_bwd: scratch of ",
                   ex.scratch_bytes, " bytes, needs ", modulate_bwd_workspace(batch, tokens, dim));
        if (dshift != nullptr) p1 = static_cast<float*>(ex.scratch);
        if (dscale != nullptr) p2 = static_cast<float*>(ex.scratch) + half;
    }
    scale_rows_token_sums(ex, dx, dshift, p1, dscale, p2, dy, x, scale, true, batch, tokens, dim, stride, dt, grad_dt);
}

void gated_add_fwd(const Exec& ex, void* x, const void* gate, const void* a, int64_t batch, int64_t tokens,
                   int64_t dim, int64_t stride, DType dt) {
    const int64_t n = batch * tokens * dim;
    if (n == 0) return;
    if (aligned_runs(vec_lanes(dt), dt, {dim, stride}, {x, gate, a})) {
        const int64_t vecs = n / vec_lanes(dt);
        SD3_DISPATCH_FLOAT(dt, T, gated_add_fwd_vec_kernel<T><<<blocks(vecs), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(x), static_cast<const T*>(gate), static_cast<const T*>(a),
                                      tokens, dim, stride, vecs));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, gated_add_fwd_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(x), static_cast<const T*>(gate), static_cast<const T*>(a), tokens,
                                  dim, stride, n));
    SD3_CUDA_LAUNCHED();
}

size_t gated_add_bwd_workspace(int64_t batch, int64_t tokens, int64_t dim) {
    return static_cast<size_t>(batch * detail::reduce_chunks(tokens) * dim) * sizeof(float);
}

void gated_add_bwd(const Exec& ex, void* da, void* dgate, const void* dx, const void* a, const void* gate,
                   int64_t batch, int64_t tokens, int64_t dim, int64_t stride, DType dt, DType grad_dt) {
    if (batch * dim == 0) return;
    float* partial = nullptr;
    if (dgate != nullptr) {
        SD3_ASSERT(ex.scratch_bytes >= gated_add_bwd_workspace(batch, tokens, dim), "gated_add_bwd: scratch of ",
                   ex.scratch_bytes, " bytes, needs ", gated_add_bwd_workspace(batch, tokens, dim));
        partial = static_cast<float*>(ex.scratch);
    }
    // da = dx * gate; dgate += Σ dx * a (the kernel's Σ dx is not asked for).
    scale_rows_token_sums(ex, da, nullptr, nullptr, dgate, partial, dx, a, gate, false, batch, tokens, dim, stride, dt,
                          grad_dt);
}

void patchify(const Exec& ex, void* tokens, const void* img, int64_t batch, int64_t channels, int64_t h, int64_t w,
              int64_t p, PatchLayout layout, DType dt) {
    const int64_t n = batch * channels * h * w;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, patchify_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(tokens), static_cast<const T*>(img), channels, h, w, p, layout, n));
    SD3_CUDA_LAUNCHED();
}

void unpatchify(const Exec& ex, void* img, const void* tokens, int64_t batch, int64_t channels, int64_t h, int64_t w,
                int64_t p, PatchLayout layout, DType dt) {
    const int64_t n = batch * channels * h * w;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, unpatchify_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(img), static_cast<const T*>(tokens), channels, h, w, p, layout, n));
    SD3_CUDA_LAUNCHED();
}

void timestep_embedding(const Exec& ex, void* out, const float* t, int64_t batch, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float max_period, DType out_dt) {
    const int64_t half = dim / 2, n = batch * half;
    if (n == 0) return;
    // As the CPU: -ln(max_period) in double, rounded to float32 (PyTorch casts the Python scalar to the tensor's dtype).
    const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
    SD3_DISPATCH_FLOAT(out_dt, T, timestep_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(out), t, half, flip_sin_to_cos, neg_log, downscale_freq_shift, n));
    SD3_CUDA_LAUNCHED();
}

void axpy(const Exec& ex, void* y, const void* x, float a, int64_t n, DType dt) {
    if (n == 0) return;
    if (vectorizable(n, dt, {y, x})) {
        const int64_t vecs = n / vec_lanes(dt);
        SD3_DISPATCH_FLOAT(dt, T, axpy_vec_kernel<T><<<blocks(vecs), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(y), static_cast<const T*>(x), a, vecs));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, axpy_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), a, n));
    SD3_CUDA_LAUNCHED();
}

void add_rows(const Exec& ex, void* y, const void* x, int64_t batch, int64_t n, DType dt) {
    if (batch * n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, add_rows_kernel<T><<<blocks(batch * n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), n, batch * n));
    SD3_CUDA_LAUNCHED();
}

void dropout_fwd(const Exec& ex, void* y, const void* x, int64_t n, float p, uint64_t seed, DType dt) {
    if (n == 0) return;
    const float keep_scale = 1.0f / (1.0f - p);  // the CPU's float32 expression
    SD3_DISPATCH_FLOAT(dt, T, dropout_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), p, keep_scale, seed, n));
    SD3_CUDA_LAUNCHED();
}

void dropout_bwd(const Exec& ex, void* dx, const void* dy, int64_t n, float p, uint64_t seed, DType dt) {
    dropout_fwd(ex, dx, dy, n, p, seed, dt);
}

void upsample_nearest2x(const Exec& ex, void* y, const void* x, int64_t planes, int64_t h, int64_t w, DType dt) {
    const int64_t n = planes * 4 * h * w;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, upsample2x_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), h, w, n));
    SD3_CUDA_LAUNCHED();
}

void pad_right_bottom(const Exec& ex, void* y, const void* x, int64_t planes, int64_t h, int64_t w, int64_t right,
                      int64_t bottom, DType dt) {
    const int64_t ho = h + bottom, wo = w + right, n = planes * ho * wo;
    if (n == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, pad_kernel<T><<<blocks(n), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), h, w, ho, wo, n));
    SD3_CUDA_LAUNCHED();
}

}  // namespace sd3::cuda
