// LayerNorm, RMSNorm (forward and backward) and GroupNorm (forward) kernels: one warp per row, statistics in
// float32 (GroupNorm's long groups in double, over chunks of each group), parameter gradients through ordered
// two-stage column sums.
// Formulas follow the CPU spec (ops/cpu/norm.cpp) term by term.
#include <algorithm>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"
#include "ops/cuda/model_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row, 256 threads
constexpr int kThreads = 256;

template <typename T>
__global__ void layer_norm_fwd_kernel(T* y, float* mean_out, float* rstd_out, const T* x, const T* w, const T* b,
                                      int64_t rows, int64_t cols, float eps) {
    const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const T* xr = x + r * cols;
    float s = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) s += to_f(xr[c]);
    const float m = warp_sum(s) / static_cast<float>(cols);
    float v = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) {
        const float d = to_f(xr[c]) - m;
        v += d * d;
    }
    const float rs = rsqrtf(warp_sum(v) / static_cast<float>(cols) + eps);
    T* yr = y + r * cols;
    for (int64_t c = lane; c < cols; c += 32) {
        float n = (to_f(xr[c]) - m) * rs;
        if (w != nullptr) n *= to_f(w[c]);
        if (b != nullptr) n += to_f(b[c]);
        yr[c] = from_f<T>(n);
    }
    if (lane == 0) {
        if (mean_out != nullptr) mean_out[r] = m;
        if (rstd_out != nullptr) rstd_out[r] = rs;
    }
}

// What the vector LayerNorm writes from row r's normalized values n = (x - mean) * rstd, columns [c, c + lanes).
// AffineOut: n * w + b (either may be null), the plain LayerNorm.
template <typename T>
struct AffineOut {
    const T* w;
    const T* b;
    __device__ __forceinline__ void apply(Vec<T>& v, int64_t, int64_t c) const {
        Vec<T> vw, vb;
        if (w != nullptr) vw.load(w + c);
        if (b != nullptr) vb.load(b + c);
#pragma unroll
        for (int k = 0; k < Vec<T>::kLanes; ++k) {
            if (w != nullptr) v.v[k] *= vw.v[k];
            if (b != nullptr) v.v[k] += vb.v[k];
        }
    }
};
// ModulateOut: adaLN's n * (1 + scale) + shift with the sample's rows of scale and shift (row r belongs to sample
// r / tokens; `stride` between samples), n first rounded to T: what layer_norm then modulate would store. With
// `xhat` (rows `cols` apart), n itself is stored there too, as layer_norm would.
template <typename T>
struct ModulateOut {
    const T* shift;
    const T* scale;
    int64_t tokens, stride;
    T* xhat;
    int64_t cols;
    __device__ __forceinline__ void apply(Vec<T>& v, int64_t r, int64_t c) const {
        if (xhat != nullptr) v.store(xhat + r * cols + c);
        Vec<T> sc, sh;
        const int64_t at = r / tokens * stride + c;
        sc.load(scale + at);
        sh.load(shift + at);
#pragma unroll
        for (int k = 0; k < Vec<T>::kLanes; ++k) v.v[k] = to_f(from_f<T>(v.v[k])) * (1.0f + sc.v[k]) + sh.v[k];
    }
};

// The same with 16-byte vectors (rows a whole number of them, every operand aligned): each lane sums its own
// vectors' elements, so the sums group differently from the scalar kernel's; both are fixed orders.
template <typename T, typename Out>
__global__ void layer_norm_fwd_vec_kernel(T* y, float* mean_out, float* rstd_out, const T* x, Out out, int64_t rows,
                                          int64_t cols, float eps) {
    constexpr int L = Vec<T>::kLanes;
    const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const T* xr = x + r * cols;
    float s = 0.0f;
    for (int64_t c = lane * L; c < cols; c += 32 * L) {
        Vec<T> v;
        v.load(xr + c);
#pragma unroll
        for (int k = 0; k < L; ++k) s += v.v[k];
    }
    const float m = warp_sum(s) / static_cast<float>(cols);
    float var = 0.0f;
    for (int64_t c = lane * L; c < cols; c += 32 * L) {
        Vec<T> v;
        v.load(xr + c);
#pragma unroll
        for (int k = 0; k < L; ++k) var += (v.v[k] - m) * (v.v[k] - m);
    }
    const float rs = rsqrtf(warp_sum(var) / static_cast<float>(cols) + eps);
    T* yr = y + r * cols;
    for (int64_t c = lane * L; c < cols; c += 32 * L) {
        Vec<T> v;
        v.load(xr + c);
#pragma unroll
        for (int k = 0; k < L; ++k) v.v[k] = (v.v[k] - m) * rs;
        out.apply(v, r, c);
        v.store(yr + c);
    }
    if (lane == 0) {
        if (mean_out != nullptr) mean_out[r] = m;
        if (rstd_out != nullptr) rstd_out[r] = rs;
    }
}

// dx of LayerNorm, one row per warp, plus dx_add where given (a residual branch's gradient). Each thread owns runs
// of kCols adjacent columns: 1, or Vec<T>'s lanes where every operand is aligned to them (16-byte accesses instead
// of 2-byte ones, which used a quarter of each memory transaction; a 1536-wide row's second pass comes from the
// L1 that the first filled). The same math per element either way.
template <typename T, int kCols>
__global__ void layer_norm_bwd_dx_kernel(T* dx, const T* dy, const T* x, const T* w, const float* mean,
                                         const float* rstd, const T* dx_add, int64_t rows, int64_t cols) {
    const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const T* xr = x + r * cols;
    const T* gr = dy + r * cols;
    const float m = mean[r], rs = rstd[r];
    // dy·w and x̂ of the kCols columns at c.
    auto load = [&](int64_t c, float (&g)[kCols], float (&xh)[kCols]) {
        load_cols<T, kCols>(gr + c, g);
        load_cols<T, kCols>(xr + c, xh);
        float wv[kCols];
        if (w != nullptr) load_cols<T, kCols>(w + c, wv);
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            xh[k] = (xh[k] - m) * rs;
            if (w != nullptr) g[k] *= wv[k];
        }
    };
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t c = lane * kCols; c < cols; c += 32 * kCols) {
        float g[kCols], xh[kCols];
        load(c, g, xh);
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            sg += g[k];
            sgx += g[k] * xh[k];
        }
    }
    const float mg = warp_sum(sg) / static_cast<float>(cols), mgx = warp_sum(sgx) / static_cast<float>(cols);
    T* dr = dx + r * cols;
    const T* ar = dx_add != nullptr ? dx_add + r * cols : nullptr;
    for (int64_t c = lane * kCols; c < cols; c += 32 * kCols) {
        float g[kCols], xh[kCols], a[kCols];
        load(c, g, xh);
        if (ar != nullptr) load_cols<T, kCols>(ar + c, a);
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
            g[k] = rs * (g[k] - mg - xh[k] * mgx);
            if (ar != nullptr) g[k] += a[k];
        }
        store_cols<T, kCols>(dr + c, g);
    }
}

// Stage 1 of dw (Σ dy·x̂) and db (Σ dy) for LayerNorm, or of dw (Σ dy·x·rstd) for RMSNorm (mean == null).
template <typename T>
__global__ void norm_param_partials_kernel(float* pw, float* pb, const T* dy, const T* x, const float* mean,
                                           const float* rstd, int64_t rows, int64_t cols, int64_t rows_per) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int64_t r0 = blockIdx.y * rows_per, r1 = min(rows, r0 + rows_per);
    float aw = 0.0f, ab = 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
        const float g = to_f(dy[r * cols + c]);
        const float xv = to_f(x[r * cols + c]);
        const float xhat = mean != nullptr ? (xv - mean[r]) * rstd[r] : xv * rstd[r];
        aw += g * xhat;
        ab += g;
    }
    pw[blockIdx.y * cols + c] = aw;
    if (pb != nullptr) pb[blockIdx.y * cols + c] = ab;
}

template <typename T>
__global__ void rms_norm_fwd_kernel(T* y, float* rstd_out, const T* x, const T* w, int64_t rows, int64_t cols,
                                    float eps) {
    const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const T* xr = x + r * cols;
    float ss = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) {
        const float v = to_f(xr[c]);
        ss += v * v;
    }
    // T5LayerNorm: variance in fp32, x * rsqrt(var + eps), then * weight.
    const float rs = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(cols) + eps);
    T* yr = y + r * cols;
    for (int64_t c = lane; c < cols; c += 32) {
        const float n = to_f(xr[c]) * rs;
        yr[c] = from_f<T>(w != nullptr ? to_f(w[c]) * n : n);
    }
    if (lane == 0 && rstd_out != nullptr) rstd_out[r] = rs;
}

template <typename T>
__global__ void rms_norm_bwd_dx_kernel(T* dx, const T* dy, const T* x, const T* w, const float* rstd, int64_t rows,
                                       int64_t cols) {
    const int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const T* xr = x + r * cols;
    const T* gr = dy + r * cols;
    const float rs = rstd[r];
    float dot = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) {
        const float g = w != nullptr ? to_f(gr[c]) * to_f(w[c]) : to_f(gr[c]);
        dot += g * to_f(xr[c]);
    }
    const float k = warp_sum(dot) * rs * rs * rs / static_cast<float>(cols);
    T* dr = dx + r * cols;
    for (int64_t c = lane; c < cols; c += 32) {
        const float g = w != nullptr ? to_f(gr[c]) * to_f(w[c]) : to_f(gr[c]);
        dr[c] = from_f<T>(rs * g - to_f(xr[c]) * k);
    }
}

// One block per (batch, group); a group is channels/groups contiguous channels of `spatial` elements.
// GroupNorm in three passes, each spread over `chunks` blocks per (sample, group) so that a VAE layer's 32
// groups fill the GPU (one block per group left most of it idle: 143 ms per 1024² decode). Pass 1 writes each
// chunk's double sum; pass 2 each chunk's double sum of squared deviations from the mean; pass 3 normalizes.
// Every block re-derives the mean (and rstd) from the previous pass's partials in chunk order, so the result does
// not depend on the launch. Group `bg` (sample * groups + group) is the contiguous run x[bg * n, (bg + 1) * n).
__device__ __forceinline__ double group_total(const double* partials, int64_t bg, int chunks) {
    double t = 0.0;
    for (int c = 0; c < chunks; ++c) t += partials[bg * chunks + c];
    return t;
}

template <typename T>
__global__ void group_sums_kernel(double* part_sum, double* part_var, const T* x, int64_t n, int64_t chunk,
                                  bool deviations) {
    __shared__ double red[32];
    const int64_t bg = blockIdx.y;
    const int chunks = static_cast<int>(gridDim.x);
    const T* xg = x + bg * n;
    const int64_t end = min(n, (blockIdx.x + 1) * chunk);
    const double m = deviations ? group_total(part_sum, bg, chunks) / static_cast<double>(n) : 0.0;
    double s = 0.0;
    for (int64_t i = blockIdx.x * chunk + threadIdx.x; i < end; i += blockDim.x) {
        const double d = to_f(xg[i]) - m;
        s += deviations ? d * d : d;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) (deviations ? part_var : part_sum)[bg * chunks + blockIdx.x] = s;
}

template <typename T>
__global__ void group_norm_apply_kernel(T* y, const T* x, const T* w, const T* b, const double* part_sum,
                                        const double* part_var, int64_t channels, int64_t spatial, int64_t groups,
                                        int64_t chunk, float eps) {
    const int64_t bg = blockIdx.y, g = bg % groups, cpg = channels / groups, n = cpg * spatial;
    const int chunks = static_cast<int>(gridDim.x);
    const double m = group_total(part_sum, bg, chunks) / static_cast<double>(n);
    const double var = group_total(part_var, bg, chunks) / static_cast<double>(n);
    const float mf = static_cast<float>(m), rs = static_cast<float>(1.0 / sqrt(var + eps));
    const T* xg = x + bg * n;
    T* yg = y + bg * n;
    const int64_t end = min(n, (blockIdx.x + 1) * chunk);
    for (int64_t i = blockIdx.x * chunk + threadIdx.x; i < end; i += blockDim.x) {
        const int64_t ch = g * cpg + static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(spatial));
        yg[i] = from_f<T>((to_f(xg[i]) - mf) * rs * to_f(w[ch]) + to_f(b[ch]));
    }
}

// Chunks per group: about 16K elements each, at most 64.
int64_t group_chunks(int64_t n) { return std::min<int64_t>(64, std::max<int64_t>(1, ceil_div(n, 16384))); }

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>(ceil_div(rows, kRowsPerBlock)); }

void param_partials(const Exec& ex, float* pw, float* pb, const void* dy, const void* x, const float* mean,
                    const float* rstd, int64_t rows, int64_t cols, DType dt) {
    const int64_t chunks = detail::reduce_chunks(rows);
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kThreads)), static_cast<unsigned>(chunks));
    SD3_DISPATCH_FLOAT(dt, T, norm_param_partials_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                  pw, pb, static_cast<const T*>(dy), static_cast<const T*>(x), mean, rstd, rows, cols,
                                  ceil_div(rows, chunks)));
    SD3_CUDA_LAUNCHED();
}

}  // namespace

void layer_norm_fwd(const Exec& ex, void* y, float* mean, float* rstd, const void* x, const void* w, const void* b,
                    int64_t rows, int64_t cols, float eps, DType dt) {
    if (rows == 0) return;
    if (vectorizable(cols, dt, {y, x, w, b})) {
        SD3_DISPATCH_FLOAT(dt, T, layer_norm_fwd_vec_kernel<T><<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(y), mean, rstd, static_cast<const T*>(x),
                                      AffineOut<T>{static_cast<const T*>(w), static_cast<const T*>(b)}, rows, cols,
                                      eps));
        SD3_CUDA_LAUNCHED();
        return;
    }
    SD3_DISPATCH_FLOAT(dt, T, layer_norm_fwd_kernel<T><<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), mean, rstd, static_cast<const T*>(x),
                                  static_cast<const T*>(w), static_cast<const T*>(b), rows, cols, eps));
    SD3_CUDA_LAUNCHED();
}

bool layer_norm_modulate_fits(const void* x, const void* shift, const void* scale, int64_t dim, int64_t stride,
                              DType dt) {
    return aligned_runs(vec_lanes(dt), dt, {dim, stride}, {x, shift, scale});
}

void layer_norm_modulate_fwd(const Exec& ex, void* y, const void* x, const void* shift, const void* scale,
                             int64_t batch, int64_t tokens, int64_t dim, int64_t stride, float eps, DType dt,
                             void* xhat, float* mean, float* rstd) {
    SD3_ASSERT(aligned_runs(vec_lanes(dt), dt, {dim, stride}, {y, x, shift, scale, xhat}),
               "layer_norm_modulate_fwd: dim, stride or an address is not a whole number of 16-byte vectors");
    const int64_t rows = batch * tokens;
    if (rows == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, layer_norm_fwd_vec_kernel<T><<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), mean, rstd, static_cast<const T*>(x),
                                  ModulateOut<T>{static_cast<const T*>(shift), static_cast<const T*>(scale), tokens,
                                                 stride, static_cast<T*>(xhat), dim},
                                  rows, dim, eps));
    SD3_CUDA_LAUNCHED();
}

size_t layer_norm_bwd_workspace(int64_t rows, int64_t cols) {
    return static_cast<size_t>(2 * detail::reduce_chunks(rows) * cols) * sizeof(float);
}

void layer_norm_bwd(const Exec& ex, void* dx, void* dw, void* db, const void* dy, const void* x, const void* w,
                    const float* mean, const float* rstd, int64_t rows, int64_t cols, DType dt, DType grad_dt,
                    const void* dx_add) {
    if (rows == 0) return;
    if (dx != nullptr) {
        const bool vec = aligned_runs(vec_lanes(dt), dt, {cols}, {dx, dy, x, w, dx_add});
        SD3_DISPATCH_FLOAT(dt, T, {
            const auto kernel = vec ? layer_norm_bwd_dx_kernel<T, Vec<T>::kLanes> : layer_norm_bwd_dx_kernel<T, 1>;
            kernel<<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(w),
                mean, rstd, static_cast<const T*>(dx_add), rows, cols);
        });
        SD3_CUDA_LAUNCHED();
    }
    if (dw == nullptr && db == nullptr) return;
    SD3_ASSERT(ex.scratch_bytes >= layer_norm_bwd_workspace(rows, cols), "layer_norm_bwd: scratch of ",
               ex.scratch_bytes, " bytes, needs ", layer_norm_bwd_workspace(rows, cols));
    const int64_t chunks = detail::reduce_chunks(rows);
    float* pw = static_cast<float*>(ex.scratch);
    float* pb = pw + chunks * cols;
    param_partials(ex, pw, pb, dy, x, mean, rstd, rows, cols, dt);
    if (dw != nullptr) detail::sum_partials_into(ex, dw, grad_dt, pw, chunks, cols);
    if (db != nullptr) detail::sum_partials_into(ex, db, grad_dt, pb, chunks, cols);
}

void rms_norm_fwd(const Exec& ex, void* y, float* rstd, const void* x, const void* w, int64_t rows, int64_t cols,
                  float eps, DType dt) {
    if (rows == 0) return;
    SD3_DISPATCH_FLOAT(dt, T, rms_norm_fwd_kernel<T><<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), rstd, static_cast<const T*>(x), static_cast<const T*>(w), rows,
                                  cols, eps));
    SD3_CUDA_LAUNCHED();
}

size_t rms_norm_bwd_workspace(int64_t rows, int64_t cols) {
    return static_cast<size_t>(detail::reduce_chunks(rows) * cols) * sizeof(float);
}

void rms_norm_bwd(const Exec& ex, void* dx, void* dw, const void* dy, const void* x, const void* w, const float* rstd,
                  int64_t rows, int64_t cols, DType dt, DType grad_dt) {
    if (rows == 0) return;
    if (dx != nullptr) {
        SD3_DISPATCH_FLOAT(dt, T, rms_norm_bwd_dx_kernel<T><<<row_blocks(rows), kThreads, 0, ex.stream>>>(
                                      static_cast<T*>(dx), static_cast<const T*>(dy), static_cast<const T*>(x),
                                      static_cast<const T*>(w), rstd, rows, cols));
        SD3_CUDA_LAUNCHED();
    }
    if (dw == nullptr) return;
    SD3_ASSERT(ex.scratch_bytes >= rms_norm_bwd_workspace(rows, cols), "rms_norm_bwd: scratch of ", ex.scratch_bytes,
               " bytes, needs ", rms_norm_bwd_workspace(rows, cols));
    const int64_t chunks = detail::reduce_chunks(rows);
    float* pw = static_cast<float*>(ex.scratch);
    param_partials(ex, pw, nullptr, dy, x, nullptr, rstd, rows, cols, dt);
    detail::sum_partials_into(ex, dw, grad_dt, pw, chunks, cols);
}

size_t group_norm_fwd_workspace(int64_t batch, int64_t channels, int64_t spatial, int64_t groups) {
    if (groups <= 0 || channels % groups != 0) return 0;
    return static_cast<size_t>(2 * batch * groups * group_chunks(channels / groups * spatial)) * sizeof(double);
}

void group_norm_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t batch,
                    int64_t channels, int64_t spatial, int64_t groups, float eps, DType dt) {
    SD3_ASSERT(groups > 0 && channels % groups == 0, "group_norm: ", channels, " channels in ", groups, " groups");
    if (batch * groups == 0) return;
    const int64_t n = channels / groups * spatial, chunks = group_chunks(n), chunk = ceil_div(n, chunks);
    SD3_ASSERT(n < (int64_t{1} << 32) && batch * groups <= 65535, "group_norm: groups of ", n, " elements, ",
               batch * groups, " of them");
    SD3_ASSERT(ex.scratch_bytes >= group_norm_fwd_workspace(batch, channels, spatial, groups),
               "group_norm_fwd: scratch of ", ex.scratch_bytes, " bytes, needs ",
               group_norm_fwd_workspace(batch, channels, spatial, groups));
    double* part_sum = static_cast<double*>(ex.scratch);
    double* part_var = part_sum + batch * groups * chunks;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(batch * groups));
    for (const bool deviations : {false, true}) {
        SD3_DISPATCH_FLOAT(dt, T, group_sums_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                      part_sum, part_var, static_cast<const T*>(x), n, chunk, deviations));
        SD3_CUDA_LAUNCHED();
    }
    SD3_DISPATCH_FLOAT(dt, T, group_norm_apply_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                  static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(w),
                                  static_cast<const T*>(b), part_sum, part_var, channels, spatial, groups, chunk,
                                  eps));
    SD3_CUDA_LAUNCHED();
}

}  // namespace sd3::cuda
