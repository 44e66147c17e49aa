// GEMMs with one side of at most 16 (a LoRA adapter's rank), which cuBLASLt runs at a fraction of the memory
// bandwidth they need (measured: 2.4x the time of one pass over the wide operand). Two shapes, both memory-bound
// passes over the wide operand with float32 accumulation in a fixed order (bit-identical reruns):
//   rows:      C[M, N] = alpha·A[M, K]·op(B) + beta·C with N <= 16: a warp per row of A, op(B) in shared memory
//              (h = x·Aᵀ and dh = dy·B of an adapter);
//   reduction: C[M, N] = alpha·A[K, M]ᵀ·B[K, N] + beta·C with M or N <= 16 and K (rows) long: row chunks write
//              float32 partials into the cuBLASLt workspace, which a second kernel adds in chunk order (dA, dB).
#include <algorithm>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda::detail {

namespace {

constexpr int kMaxNarrow = 16;
constexpr int kThreads = 256;
constexpr int kRowsPerChunk = 64;
constexpr size_t kMaxSharedBytes = 48 << 10;

// C[m, n] = alpha·acc + beta·C[m, n]; C is not read when beta is 0 (it may hold anything).
template <typename TC>
__device__ __forceinline__ void store_scaled(TC* c, float acc, float alpha, float beta) {
    *c = from_f<TC>(beta == 0.0f ? alpha * acc : alpha * acc + beta * to_f(*c));
}

template <typename T, typename TC, bool kTransB, bool kVec>
__global__ void skinny_rows_kernel(TC* C, const T* A, const T* B, int64_t M, int N, int K, int64_t lda, int64_t ldb,
                                   int64_t ldc, float alpha, float beta) {
    extern __shared__ __align__(16) unsigned char shared_raw[];
    T* Bs = reinterpret_cast<T*>(shared_raw);  // op(B)ᵀ: [N][K]
    for (int i = threadIdx.x; i < N * K; i += blockDim.x) {
        const int n = i / K, k = i % K;
        Bs[i] = kTransB ? B[n * ldb + k] : B[static_cast<int64_t>(k) * ldb + n];
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    constexpr int L = kVec ? Vec<T>::kLanes : 1;
    for (int64_t m = blockIdx.x * static_cast<int64_t>(warps) + warp; m < M;
         m += static_cast<int64_t>(gridDim.x) * warps) {
        const T* a = A + m * lda;
        float acc[kMaxNarrow] = {};
        for (int k = lane * L; k < K; k += 32 * L) {
            float av[L];
            if constexpr (kVec) {
                Vec<T> v;
                v.load(a + k);
#pragma unroll
                for (int l = 0; l < L; ++l) av[l] = v.v[l];
            } else {
                av[0] = to_f(a[k]);
            }
#pragma unroll
            for (int n = 0; n < kMaxNarrow; ++n) {
                if (n >= N) break;
#pragma unroll
                for (int l = 0; l < L; ++l) acc[n] += av[l] * to_f(Bs[n * K + k + l]);
            }
        }
        float mine = 0.0f;
#pragma unroll
        for (int n = 0; n < kMaxNarrow; ++n) {
            if (n >= N) break;
            const float s = warp_sum(acc[n]);
            if (lane == n) mine = s;
        }
        if (lane < N) store_scaled(C + m * ldc + lane, mine, alpha, beta);
    }
}

// Stage 1: block (x: kThreads wide columns, y: a chunk of kRowsPerChunk rows). The narrow operand's rows of the
// chunk go through shared memory; partial[(chunk * S + j) * W + w] = Σ_rows narrow[k, j] · wide[k, w].
template <typename T>
__global__ void skinny_reduce_partials_kernel(float* partial, const T* narrow, const T* wide, int64_t K, int S, int64_t W,
                                              int64_t ld_narrow, int64_t ld_wide) {
    __shared__ float ns[kRowsPerChunk * kMaxNarrow];
    const int64_t k0 = blockIdx.y * static_cast<int64_t>(kRowsPerChunk);
    const int rows = static_cast<int>(min(static_cast<int64_t>(kRowsPerChunk), K - k0));
    for (int i = threadIdx.x; i < rows * S; i += blockDim.x)
        ns[i] = to_f(narrow[(k0 + i / S) * ld_narrow + i % S]);
    __syncthreads();
    const int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (w >= W) return;
    float acc[kMaxNarrow] = {};
    for (int r = 0; r < rows; ++r) {
        const float wv = to_f(wide[(k0 + r) * ld_wide + w]);
#pragma unroll
        for (int j = 0; j < kMaxNarrow; ++j) {
            if (j >= S) break;
            acc[j] += ns[r * S + j] * wv;
        }
    }
#pragma unroll
    for (int j = 0; j < kMaxNarrow; ++j) {
        if (j >= S) break;
        partial[(static_cast<int64_t>(blockIdx.y) * S + j) * W + w] = acc[j];
    }
}

// Stage 2: the chunks in order, into C[j, w] (narrow side first: M = S) or C[w, j] (N = S).
template <typename TC>
__global__ void skinny_reduce_sum_kernel(TC* C, const float* partial, int64_t chunks, int S, int64_t W, int64_t ldc,
                                         bool narrow_rows, float alpha, float beta) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < S * W;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t j = i / W, w = i % W;
        float acc = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) acc += partial[(c * S + j) * W + w];
        store_scaled(C + (narrow_rows ? j * ldc + w : w * ldc + j), acc, alpha, beta);
    }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool skinny_gemm(const Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void* A, int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab,
                 DType c) {
    if (M == 0 || N == 0 || K == 0) return false;
    const size_t es = dtype_size(ab);
    if (!trans_a && N <= kMaxNarrow && M >= 256 && K <= INT32_MAX / kMaxNarrow &&
        static_cast<size_t>(N * K) * es <= kMaxSharedBytes) {
        const int L = static_cast<int>(16 / es);
        const bool vec = aligned16(A) && lda % L == 0 && K % L == 0;
        const size_t shared = static_cast<size_t>(N * K) * es;
        const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(M, kThreads / 32), 4 * 132));
        SD3_DISPATCH_FLOAT(ab, T, SD3_DISPATCH_FLOAT(c, TC, {
            auto launch = [&](auto kernel) {
                kernel<<<blocks, kThreads, shared, ex.stream>>>(static_cast<TC*>(C), static_cast<const T*>(A),
                                                                static_cast<const T*>(B), M, static_cast<int>(N),
                                                                static_cast<int>(K), lda, ldb, ldc, alpha, beta);
            };
            if (trans_b) vec ? launch(skinny_rows_kernel<T, TC, true, true>) : launch(skinny_rows_kernel<T, TC, true, false>);
            else vec ? launch(skinny_rows_kernel<T, TC, false, true>) : launch(skinny_rows_kernel<T, TC, false, false>);
        }));
        SD3_CUDA_LAUNCHED();
        return true;
    }
    if (trans_a && !trans_b && (M <= kMaxNarrow || N <= kMaxNarrow) && K >= 256) {
        // A is stored [K, M], B [K, N]: the narrow one of the two gives S, the other the wide side W.
        const bool narrow_is_a = M <= kMaxNarrow;
        const int S = static_cast<int>(narrow_is_a ? M : N);
        const int64_t W = narrow_is_a ? N : M;
        const int64_t chunks = ceil_div(K, kRowsPerChunk);
        const size_t bytes = static_cast<size_t>(chunks * S * W) * sizeof(float);
        if (bytes > ex.blas_workspace_bytes) return false;
        float* partial = static_cast<float*>(ex.blas_workspace);
        const dim3 grid(static_cast<unsigned>(ceil_div(W, kThreads)), static_cast<unsigned>(chunks));
        SD3_DISPATCH_FLOAT(ab, T, skinny_reduce_partials_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                                      partial, static_cast<const T*>(narrow_is_a ? A : B),
                                      static_cast<const T*>(narrow_is_a ? B : A), K, S, W, narrow_is_a ? lda : ldb,
                                      narrow_is_a ? ldb : lda));
        SD3_CUDA_LAUNCHED();
        SD3_DISPATCH_FLOAT(c, TC, skinny_reduce_sum_kernel<TC><<<grid_for(S * W, kThreads), kThreads, 0, ex.stream>>>(
                                      static_cast<TC*>(C), partial, chunks, S, W, ldc, narrow_is_a, alpha, beta));
        SD3_CUDA_LAUNCHED();
        return true;
    }
    return false;
}

}  // namespace sd3::cuda::detail
