// GEMM through cuBLASLt (llm.c's row-major-over-column-major mapping, research/gpu-components.md §2.1), with a
// plain shared-memory tiled kernel for the shapes, alignments or dtype mixes cuBLASLt has no algorithm for;
// nn.Linear forward/backward and conv2d (im2col in pixel chunks + GEMM: where cuDNN's convolution does not serve)
// built on it.
#include <cublasLt.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

#define SD3_CUBLAS_CHECK(expr)                                                                  \
    do {                                                                                        \
        const cublasStatus_t sd3_st_ = (expr);                                                  \
        SD3_ASSERT(sd3_st_ == CUBLAS_STATUS_SUCCESS, #expr, " failed with cuBLAS status ",     \
                   static_cast<int>(sd3_st_));                                                  \
    } while (0)

cudaDataType_t cuda_type(DType dt) {
    switch (dt) {
        case DType::F32: return CUDA_R_32F;
        case DType::BF16: return CUDA_R_16BF;
        case DType::F16: return CUDA_R_16F;
        default: SD3_ASSERT(false, "gemm takes f32, bf16 or f16, got ", dtype_name(dt));
    }
    return CUDA_R_32F;
}

// The largest power of two (at most 256) dividing both the address and the row stride in bytes.
uint32_t alignment_of(const void* p, int64_t ld, DType dt) {
    uint64_t a = reinterpret_cast<uint64_t>(p) | static_cast<uint64_t>(ld * static_cast<int64_t>(dtype_size(dt)));
    uint32_t align = 256;
    while (align > 1 && (a & (align - 1)) != 0) align >>= 1;
    return align;
}

constexpr int kTile = 16;

// C = epi(alpha * op(A)·op(B) + beta * C + bias[n]) (cuda_ops.h); fp32 accumulation. Only where cuBLASLt
// declines.
template <typename TA, typename TC>
__global__ void gemm_fallback_kernel(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const TA* A,
                                     int64_t lda, const TA* B, int64_t ldb, float beta, TC* C, int64_t ldc,
                                     const TC* bias, Epilogue epi, TC* aux) {
    __shared__ float As[kTile][kTile + 1];
    __shared__ float Bs[kTile][kTile + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t m = blockIdx.y * (int64_t)kTile + ty, n = blockIdx.x * (int64_t)kTile + tx;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kTile) {
        const int64_t ka = k0 + tx, kb = k0 + ty;
        const int64_t am = blockIdx.y * (int64_t)kTile + ty, bn = blockIdx.x * (int64_t)kTile + tx;
        As[ty][tx] = (am < M && ka < K) ? to_f(ta ? A[ka * lda + am] : A[am * lda + ka]) : 0.0f;
        Bs[ty][tx] = (kb < K && bn < N) ? to_f(tb ? B[bn * ldb + kb] : B[kb * ldb + bn]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();
    }
    if (m < M && n < N) {
        float v = alpha * acc;
        if (beta != 0.0f) v += beta * to_f(C[m * ldc + n]);
        if (bias != nullptr) v += to_f(bias[n]);
        switch (epi) {
            case Epilogue::NONE: break;
            case Epilogue::GELU: v = gelu_tanh(v); break;
            case Epilogue::GELU_AUX:
                aux[m * ldc + n] = from_f<TC>(v);
                v = gelu_tanh(v);
                break;
            case Epilogue::DGELU: v *= gelu_tanh_grad(to_f(aux[m * ldc + n])); break;
        }
        C[m * ldc + n] = from_f<TC>(v);
    }
}

void gemm_fallback(const Exec& ex, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                   int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab, DType c,
                   const void* bias, Epilogue epi, void* aux) {
    const dim3 block(kTile, kTile);
    const dim3 grid(static_cast<unsigned>(ceil_div(N, kTile)), static_cast<unsigned>(ceil_div(M, kTile)));
    SD3_DISPATCH_FLOAT(ab, TA,
                       SD3_DISPATCH_FLOAT(c, TC,
                                          gemm_fallback_kernel<TA, TC><<<grid, block, 0, ex.stream>>>(
                                              ta, tb, M, N, K, alpha, static_cast<const TA*>(A), lda,
                                              static_cast<const TA*>(B), ldb, beta, static_cast<TC*>(C), ldc,
                                              static_cast<const TC*>(bias), epi, static_cast<TC*>(aux))));
    SD3_CUDA_LAUNCHED();
}

// A LoRA adapter's GEMMs have one dimension of its rank r. For r = 4, cuBLASLt's kernels ran at a third to a half
// of the memory bandwidth these memory-bound products allow (sd3_gpu_bench: 11-18 µs each at 4096 x 1536, against
// 8-10 µs at r = 16), so for r = 4 and 8 the two shapes below take loops over the wide operand instead. Both
// accumulate in float32 in a fixed order: the same bits on every run.
constexpr int kSkinnyThreads = 64;

// op(B)[k][n] for row-major B: B[n][k] when trans_b, else B[k][n].
template <typename T>
__device__ __forceinline__ float op_b(const T* B, int64_t ldb, bool trans_b, int64_t k, int64_t n) {
    return to_f(trans_b ? B[n * ldb + k] : B[k * ldb + n]);
}

// Inner dimension R: C[M,N] = alpha·A[M,R]·op(B) + beta·C (+ bias[N]), e.g. y = s·h·Bᵀ + b. Each thread keeps
// op(B) and the bias for its L columns (a 16-byte vector of C, or 1) in registers and walks rows blockIdx.y,
// blockIdx.y + gridDim.y, ..., kSkinnyRows of them at a time, their loads in branch-free runs before the first
// store (rows past M re-read row M - 1 and are not stored): loads under a per-row branch went out one row at a time.
constexpr int kSkinnyRows = 4;

template <typename T, int R, int L>
__global__ void gemm_small_k_kernel(int64_t M, int64_t N, float alpha, const T* A, int64_t lda, const T* B,
                                    int64_t ldb, bool trans_b, bool b_vec, float beta, T* C, int64_t ldc,
                                    const T* bias) {
    const int64_t n0 = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * L;
    if (n0 >= N) return;
    float bias_l[L] = {};
    if (bias != nullptr) load_cols<T, L>(bias + n0, bias_l);
    // op(B)'s L columns by 16-byte vectors where `b_vec`: R runs of row n0.. when B is [K, N], else (B [N, R] with
    // ldb = R) the L·R contiguous elements of rows n0..n0+L. Element by element, a warp's loads of B touched 16
    // cache lines each (trans_b), which took longer than the pass over C.
    float b[R][L];
    if (L > 1 && b_vec && !trans_b) {
#pragma unroll
        for (int k = 0; k < R; ++k) load_cols<T, L>(B + k * ldb + n0, b[k]);
    } else if (L > 1 && b_vec) {
#pragma unroll
        for (int j = 0; j < R; ++j) {
            float v[L];
            load_cols<T, L>(B + n0 * R + j * L, v);
#pragma unroll
            for (int e = 0; e < L; ++e) b[(j * L + e) % R][(j * L + e) / R] = v[e];
        }
    } else {
#pragma unroll
        for (int k = 0; k < R; ++k)
#pragma unroll
            for (int l = 0; l < L; ++l) b[k][l] = op_b(B, ldb, trans_b, k, n0 + l);
    }
    for (int64_t m0 = blockIdx.y; m0 < M; m0 += int64_t{kSkinnyRows} * gridDim.y) {
        float a[kSkinnyRows][R], c[kSkinnyRows][L];
        int64_t row[kSkinnyRows];
#pragma unroll
        for (int i = 0; i < kSkinnyRows; ++i) {
            const int64_t m = m0 + i * int64_t{gridDim.y};
            row[i] = m < M ? m : M - 1;
#pragma unroll
            for (int k = 0; k < R; ++k) a[i][k] = to_f(A[row[i] * lda + k]);
        }
        if (beta != 0.0f) {
#pragma unroll
            for (int i = 0; i < kSkinnyRows; ++i) load_cols<T, L>(C + row[i] * ldc + n0, c[i]);
        }
#pragma unroll
        for (int i = 0; i < kSkinnyRows; ++i) {
            const int64_t m = m0 + i * int64_t{gridDim.y};
            if (m >= M) break;
            float out[L];
#pragma unroll
            for (int l = 0; l < L; ++l) {
                float acc = 0.0f;
#pragma unroll
                for (int k = 0; k < R; ++k) acc += a[i][k] * b[k][l];
                out[l] = (beta != 0.0f ? alpha * acc + beta * c[i][l] : alpha * acc) + bias_l[l];
            }
            store_cols<T, L>(C + m * ldc + n0, out);
        }
    }
}

// Output width R: C[M,R] = alpha·A[M,K]·op(B) + beta·C, e.g. h = x·Aᵀ. One warp per kSmallNRows rows of A (each
// run of op(B) it loads serves them all: one load per row, where a warp per row loaded R runs of B beside each run
// of A), its lanes over K in runs of L elements, then a warp sum per output. L > 1 needs 16-byte vectors of A and of
// op(B): rows of B when trans_b, else B's rows R elements apart (a run of L rows is then L·R contiguous elements).
// Each output sums in the same order as with a warp per row.
constexpr int kSmallNRows = 4;

template <typename T, int R, int L>
__global__ void gemm_small_n_kernel(int64_t M, int64_t K, float alpha, const T* A, int64_t lda, const T* B,
                                    int64_t ldb, bool trans_b, float beta, T* C, int64_t ldc) {
    const int64_t m0 = (blockIdx.x * (int64_t)(blockDim.x / 32) + (threadIdx.x >> 5)) * kSmallNRows;
    const int lane = threadIdx.x & 31;
    if (m0 >= M) return;
    float acc[kSmallNRows][R] = {};
    const T* a_rows[kSmallNRows];
#pragma unroll
    for (int i = 0; i < kSmallNRows; ++i) a_rows[i] = A + (m0 + i < M ? m0 + i : M - 1) * lda;  // past M: re-read
#pragma unroll 2  // a 1536-wide row is 6 runs of 8
    for (int64_t k0 = lane * L; k0 < K; k0 += 32 * L) {
        float b[L][R];
        if constexpr (L == 1) {
#pragma unroll
            for (int n = 0; n < R; ++n) b[0][n] = op_b(B, ldb, trans_b, k0, n);
        } else if (trans_b) {
#pragma unroll
            for (int n = 0; n < R; ++n) {  // a vector of row n
                float v[L];
                load_cols<T, L>(B + n * ldb + k0, v);
#pragma unroll
                for (int l = 0; l < L; ++l) b[l][n] = v[l];
            }
        } else if constexpr (L > 1) {
#pragma unroll
            for (int j = 0; j < R; ++j) {  // L·R contiguous elements, j-th vector of L
                float v[L];
                load_cols<T, L>(B + k0 * R + j * L, v);
#pragma unroll
                for (int e = 0; e < L; ++e) b[(j * L + e) / R][(j * L + e) % R] = v[e];
            }
        }
        float a[kSmallNRows][L];
#pragma unroll
        for (int i = 0; i < kSmallNRows; ++i) load_cols<T, L>(a_rows[i] + k0, a[i]);
#pragma unroll
        for (int i = 0; i < kSmallNRows; ++i)
#pragma unroll
            for (int l = 0; l < L; ++l)
#pragma unroll
                for (int n = 0; n < R; ++n) acc[i][n] += a[i][l] * b[l][n];
    }
#pragma unroll
    for (int i = 0; i < kSmallNRows; ++i) {
#pragma unroll
        for (int n = 0; n < R; ++n) {
            const float v = warp_sum(acc[i][n]);
            if (lane == n && m0 + i < M) {
                T* c = C + (m0 + i) * ldc + n;
                *c = from_f<T>(beta != 0.0f ? alpha * v + beta * to_f(*c) : alpha * v);
            }
        }
    }
}

template <int R>
bool gemm_skinny_rank(const Exec& ex, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
                      int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType dt,
                      const void* bias) {
    const int64_t lanes = vec_lanes(dt);
    if (K == R && N >= 8 * R) {
        const bool vec = aligned_runs(lanes, dt, {N, ldc}, {C, bias});
        const bool b_vec = aligned_runs(lanes, dt, {trans_b ? lanes : ldb}, {B}) && (!trans_b || ldb == R);
        const int64_t per_thread = vec ? lanes : 1;
        const dim3 grid(static_cast<unsigned>(ceil_div(N, per_thread * kSkinnyThreads)),
                        static_cast<unsigned>(std::min<int64_t>(M, 1024)));
        SD3_DISPATCH_FLOAT(dt, T, {
            constexpr int kVec = Vec<T>::kLanes;
            const auto kernel = vec ? gemm_small_k_kernel<T, R, kVec> : gemm_small_k_kernel<T, R, 1>;
            kernel<<<grid, kSkinnyThreads, 0, ex.stream>>>(M, N, alpha, static_cast<const T*>(A), lda,
                                                           static_cast<const T*>(B), ldb, trans_b, b_vec, beta,
                                                           static_cast<T*>(C), ldc, static_cast<const T*>(bias));
        });
        SD3_CUDA_LAUNCHED();
        return true;
    }
    if (N == R && K >= 8 * R && bias == nullptr) {
        const bool vec = aligned_runs(lanes, dt, {K, lda}, {A, B}) &&
                         (trans_b ? ldb % lanes == 0 : ldb == R);
        constexpr int kWarpsPerBlock = 8;
        const auto grid = static_cast<unsigned>(ceil_div(M, kWarpsPerBlock * kSmallNRows));
        SD3_DISPATCH_FLOAT(dt, T, {
            constexpr int kVec = Vec<T>::kLanes;
            const auto kernel = vec ? gemm_small_n_kernel<T, R, kVec> : gemm_small_n_kernel<T, R, 1>;
            kernel<<<grid, 32 * kWarpsPerBlock, 0, ex.stream>>>(M, K, alpha, static_cast<const T*>(A), lda,
                                                               static_cast<const T*>(B), ldb, trans_b, beta,
                                                               static_cast<T*>(C), ldc);
        });
        SD3_CUDA_LAUNCHED();
        return true;
    }
    return false;
}

// The rank-4 and rank-8 kernels for C = alpha·A·op(B) + beta·C without transposed A or epilogue, in one dtype (a
// bias only with inner dimension R); false when the problem is not one of their shapes. (The weight gradients
// dA = dhᵀ·x and dB = dyᵀ·h stay on cuBLASLt's split-K: two-stage kernels of our own took 3.1 ms of a 512² update
// against its 3.0, run 10.)
bool gemm_skinny(const Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void* A, int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab,
                 DType c, const void* bias) {
    if (trans_a || ab != c) return false;
    return gemm_skinny_rank<4>(ex, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, c, bias) ||
           gemm_skinny_rank<8>(ex, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, c, bias);
}

// What a cuBLASLt call depends on besides its pointers: the descriptors and the heuristic's algorithm are made once
// per distinct key and reused (creating them and asking the heuristic costs more host time than a small GEMM
// runs on the device; a training step makes about two thousand GEMMs of a few hundred shapes).
struct GemmKey {
    cublasLtHandle_t blas;
    bool trans_a, trans_b, bias;
    Epilogue epi;
    int64_t M, N, K, lda, ldb, ldc;
    DType ab, c;
    uint32_t al_a, al_b, al_c;
    size_t workspace;
    bool operator==(const GemmKey&) const = default;
};

struct GemmKeyHash {
    size_t operator()(const GemmKey& k) const {
        uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
        auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
        mix(reinterpret_cast<uint64_t>(k.blas));
        mix(k.trans_a | k.trans_b << 1 | k.bias << 2 | static_cast<uint64_t>(k.epi) << 3);
        for (int64_t v : {k.M, k.N, k.K, k.lda, k.ldb, k.ldc}) mix(static_cast<uint64_t>(v));
        mix(static_cast<uint64_t>(k.ab) << 8 | static_cast<uint64_t>(k.c));
        mix(uint64_t{k.al_a} << 32 | uint64_t{k.al_b} << 16 | k.al_c);
        mix(k.workspace);
        return static_cast<size_t>(h);
    }
};

struct GemmPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool found = false;  // false: cuBLASLt has no algorithm for it, the tiled kernel runs
};

GemmPlan make_plan(const GemmKey& k) {
    GemmPlan p;
    // Row-major C[M,N] is column-major Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our B and its "B" our A.
    SD3_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));  // fp32 math, TF32 off
    const cublasOperation_t op_a = k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = k.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (k.bias || k.epi != Epilogue::NONE) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        switch (k.epi) {
            case Epilogue::NONE: break;
            case Epilogue::GELU: epi = k.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU; break;
            case Epilogue::GELU_AUX: epi = k.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX; break;
            case Epilogue::DGELU: epi = CUBLASLT_EPILOGUE_DGELU; break;
        }
        SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    }
    if (k.epi == Epilogue::GELU_AUX || k.epi == Epilogue::DGELU) {
        // aux is laid out as C (column-major Cᵀ to cuBLASLt: rows of ldc elements) in C's dtype.
        const int64_t ld = k.ldc;
        const cudaDataType_t at = cuda_type(k.c);
        SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
        SD3_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &at, sizeof(at)));
    }
    if (k.bias) {
        const cudaDataType_t bt = cuda_type(k.c);
        SD3_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, cuda_type(k.ab), k.trans_b ? k.K : k.N, k.trans_b ? k.N : k.K,
                                                k.ldb));
    SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, cuda_type(k.ab), k.trans_a ? k.M : k.K, k.trans_a ? k.K : k.M,
                                                k.lda));
    SD3_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lc, cuda_type(k.c), k.N, k.M, k.ldc));
    cublasLtMatmulPreference_t pref = nullptr;
    SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = k.workspace;
    SD3_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // Odd sizes and views are not 256-byte aligned (cuBLASLt's default assumption): state the real alignment.
    SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.al_a,
                                                          sizeof(k.al_a)));
    SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.al_b,
                                                          sizeof(k.al_b)));
    SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k.al_c,
                                                          sizeof(k.al_c)));
    SD3_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k.al_c,
                                                          sizeof(k.al_c)));
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(k.blas, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &heur,
                                                             &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p.found = hs == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.found) p.algo = heur.algo;
    return p;
}

// Tries cuBLASLt; false when it has no algorithm for this problem.
bool gemm_lt(const Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
             int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab, DType c,
             const void* bias, Epilogue epi, void* aux) {
    if (ex.blas == nullptr || K == 0) return false;
    // A mix cuBLASLt supports: equal dtypes, or 16-bit operands with an f32 result.
    if (ab != c && !(c == DType::F32 && (ab == DType::BF16 || ab == DType::F16))) return false;
    // cuBLASLt's auxiliary output wants a row stride of 8 elements and a 16-byte aligned pointer.
    if (aux != nullptr && (ldc % 8 != 0 || reinterpret_cast<uintptr_t>(aux) % 16 != 0)) return false;
    const GemmKey key{ex.blas, trans_a, trans_b, bias != nullptr, epi, M, N, K, lda, ldb, ldc, ab, c,
                      alignment_of(B, ldb, ab), alignment_of(A, lda, ab), alignment_of(C, ldc, c),
                      ex.blas_workspace_bytes};
    // Plans live as long as the process (their handles' lifetime); one host thread issues a device's work, but
    // the lock keeps concurrent callers correct.
    static std::mutex mutex;
    static std::unordered_map<GemmKey, GemmPlan, GemmKeyHash> plans;
    std::unique_lock<std::mutex> lock(mutex);
    auto it = plans.find(key);
    if (it == plans.end()) it = plans.emplace(key, make_plan(key)).first;
    const GemmPlan& p = it->second;
    if (!p.found) return false;
    if (bias != nullptr)
        SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (aux != nullptr)
        SD3_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                                        sizeof(aux)));
    SD3_CUBLAS_CHECK(cublasLtMatmul(ex.blas, p.desc, &alpha, B, p.la, A, p.lb, &beta, C, p.lc, C, p.lc, &p.algo,
                                    ex.blas_workspace, ex.blas_workspace_bytes, ex.stream));
    return true;
}

// Column matrix rows (one per input channel and kernel tap) over blockIdx.y, pixels of the chunk over x, in 32-bit
// index math (a flat 64-bit index cost several 64-bit divisions per element). It stays memory-bound all the same:
// the column matrix is kh*kw times the input, which is why cuDNN takes the convolutions where it can.
template <typename T>
__global__ void im2col_kernel(T* cols, const T* x, int h, int wd, int kh, int kw, int stride, int pad, int wo,
                              int p0, int P, int patch) {
    for (int p = blockIdx.y; p < patch; p += gridDim.y) {
        const int c = p / (kh * kw), ky = (p / kw) % kh, kx = p % kw;
        const T* xc = x + static_cast<int64_t>(c) * h * wd;
        T* row = cols + static_cast<int64_t>(p) * P;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < P; j += gridDim.x * blockDim.x) {
            const int pix = p0 + j, oy = pix / wo, ox = pix - oy * wo;
            const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
            row[j] = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? xc[static_cast<int64_t>(iy) * wd + ix]
                                                                : from_f<T>(0.0f);
        }
    }
}

}  // namespace

void gemm(const Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
          int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab, DType c,
          const void* bias, Epilogue epi, void* aux) {
    if (M == 0 || N == 0) return;
    const bool with_aux = epi == Epilogue::GELU_AUX || epi == Epilogue::DGELU;
    SD3_ASSERT(with_aux == (aux != nullptr), "gemm: the GELU_AUX and DGELU epilogues, and only they, take aux");
    SD3_ASSERT(epi != Epilogue::DGELU || bias == nullptr, "gemm: DGELU takes no bias");
    if (epi == Epilogue::NONE &&
        gemm_skinny(ex, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ab, c, bias))
        return;
    if (gemm_lt(ex, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ab, c, bias, epi, aux)) return;
    gemm_fallback(ex, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ab, c, bias, epi, aux);
}

void linear_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t M, int64_t K, int64_t N,
                DType dt, Epilogue epi, void* pre, float alpha) {
    SD3_ASSERT(epi != Epilogue::DGELU, "linear_fwd: DGELU is a backward epilogue (linear_bwd_dgelu)");
    gemm(ex, false, true, M, N, K, alpha, x, K, w, K, 0.0f, y, N, dt, dt, b, epi, pre);
}

void linear_bwd_dgelu(const Exec& ex, void* dpre, const void* dy, const void* w, const void* pre, int64_t M,
                      int64_t K, int64_t N, DType dt) {
    gemm(ex, false, false, M, K, N, 1.0f, dy, N, w, K, 0.0f, dpre, K, dt, dt, nullptr, Epilogue::DGELU,
         const_cast<void*>(pre));  // read, never written, by DGELU
}

size_t linear_bwd_workspace(int64_t M, int64_t N) {
    return static_cast<size_t>(detail::reduce_chunks(M) * N) * sizeof(float);
}

void linear_bwd(const Exec& ex, void* dx, void* dw, void* db, const void* dy, const void* x, const void* w, int64_t M,
                int64_t K, int64_t N, DType dt, DType grad_dt, float alpha) {
    if (dx != nullptr) gemm(ex, false, false, M, K, N, alpha, dy, N, w, K, 0.0f, dx, K, dt, dt);
    if (dw != nullptr) gemm(ex, true, false, N, K, M, alpha, dy, N, x, K, 1.0f, dw, K, dt, grad_dt);
    if (db != nullptr) {
        SD3_ASSERT(alpha == 1.0f, "linear_bwd: a bias gradient with alpha ", alpha);
        SD3_ASSERT(ex.scratch_bytes >= linear_bwd_workspace(M, N), "linear_bwd: scratch of ", ex.scratch_bytes,
                   " bytes, needs ", linear_bwd_workspace(M, N));
        float* partial = static_cast<float*>(ex.scratch);
        detail::column_partials(ex, partial, dy, dt, M, N);
        detail::sum_partials_into(ex, db, grad_dt, partial, detail::reduce_chunks(M), N);
    }
}

size_t conv2d_fwd_min_workspace(int64_t cin, int64_t kh, int64_t kw, DType dt) {
    return static_cast<size_t>(cin * kh * kw) * 64 * dtype_size(dt);
}

void conv2d_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t batch, int64_t cin,
                int64_t h, int64_t wd, int64_t cout, int64_t kh, int64_t kw, int64_t stride, int64_t pad, DType dt) {
    const int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (wd + 2 * pad - kw) / stride + 1;
    const int64_t patch = cin * kh * kw, pixels = ho * wo;
    const size_t es = dtype_size(dt);
    const bool pointwise = kh == 1 && kw == 1 && stride == 1 && pad == 0;  // x is already the column matrix
    auto int32 = [](int64_t v) { return static_cast<int>(v); };
    SD3_ASSERT(h * wd < INT32_MAX && pixels < INT32_MAX && patch < INT32_MAX, "conv2d_fwd: ", h, "x", wd,
               " input, ", ho, "x", wo, " output, ", patch, " taps: sizes beyond 32-bit indices");
    int64_t P = pixels;
    if (!pointwise) {
        SD3_ASSERT(ex.scratch_bytes >= conv2d_fwd_min_workspace(cin, kh, kw, dt) ||
                       ex.scratch_bytes >= static_cast<size_t>(patch * pixels) * es,
                   "conv2d_fwd: scratch of ", ex.scratch_bytes, " bytes, needs at least ",
                   conv2d_fwd_min_workspace(cin, kh, kw, dt));
        const int64_t fit = static_cast<int64_t>(ex.scratch_bytes / (static_cast<size_t>(patch) * es));
        if (fit < pixels) P = fit / 8 * 8;  // keep chunk starts 16-byte aligned for cuBLASLt
    }
    for (int64_t bi = 0; bi < batch; ++bi) {
        const char* xb = static_cast<const char*>(x) + static_cast<size_t>(bi * cin * h * wd) * es;
        char* yb = static_cast<char*>(y) + static_cast<size_t>(bi * cout * pixels) * es;
        if (b != nullptr) detail::fill_rows(ex, yb, b, cout, pixels, dt);
        const float beta = b != nullptr ? 1.0f : 0.0f;
        if (pointwise) {
            gemm(ex, false, false, cout, pixels, cin, 1.0f, w, cin, xb, pixels, beta, yb, pixels, dt, dt);
            continue;
        }
        for (int64_t p0 = 0; p0 < pixels; p0 += P) {
            const int64_t np = pixels - p0 < P ? pixels - p0 : P;
            const dim3 grid(grid_for(np, 256), static_cast<unsigned>(std::min<int64_t>(patch, 65535)));
            SD3_DISPATCH_FLOAT(dt, T, im2col_kernel<T><<<grid, 256, 0, ex.stream>>>(
                                          static_cast<T*>(ex.scratch), reinterpret_cast<const T*>(xb), int32(h),
                                          int32(wd), int32(kh), int32(kw), int32(stride), int32(pad), int32(wo),
                                          int32(p0), int32(np), int32(patch)));
            SD3_CUDA_LAUNCHED();
            gemm(ex, false, false, cout, np, patch, 1.0f, w, patch, ex.scratch, np, beta, yb + p0 * es, pixels, dt,
                 dt);
        }
    }
}

}  // namespace sd3::cuda
