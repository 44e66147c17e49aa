// Flash attention forward on tensor cores for head dim 64 in bf16/f16 (WMMA 16x16x16, f32 accumulation).
// A block of 4 warps owns 64 queries (16 per warp); key/value tiles of 32 stream through shared memory.
// Per tile a warp computes S = Q·Kᵀ into shared memory, runs the online softmax on it in f32 (two lanes per
// row), rounds P to the storage dtype and adds P·V into an f32 output tile kept in shared memory (WMMA's
// accumulator layout is opaque, so the per-row rescale happens there). The row sum uses the unrounded P,
// so the saved log-sum-exp is as exact as the f32 kernel's.
#include <mma.h>

#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

constexpr int kD = 64;
constexpr int kQ = 64;     // queries per block (4 warps x 16)
constexpr int kKeys = 32;  // keys per tile
constexpr int kWarps = 4;
constexpr int kSPad = kKeys + 4, kPPad = kKeys + 8, kOPad = kD + 4;

template <typename T>
struct TcArgs {
    const T* q;
    const T* k;
    const T* v;
    const T* bias;
    T* out;
    float* lse;
    int64_t q_row, k_row, v_row, o_row;
    int64_t tq, tk, heads;
    float scale;
    bool causal;
};

template <typename T>
__device__ __forceinline__ void attention_fwd_tc_body(const TcArgs<T>& a) {
    using namespace nvcuda;
    __shared__ __align__(32) T qs[kQ][kD];
    __shared__ __align__(32) T ks[kKeys][kD];
    __shared__ __align__(32) T vs[kKeys][kD];
    // Rows padded (WMMA wants ldm a multiple of 4 floats / 8 halves) so the two-lanes-per-row accesses of the
    // softmax and rescale hit different banks; 48.6 KB in all, under the 48 KB static limit.
    __shared__ __align__(32) float ss[kWarps][16][kSPad];
    __shared__ __align__(32) T ps[kWarps][16][kPPad];
    __shared__ __align__(32) float os[kWarps][16][kOPad];
    __shared__ float row_m[kWarps][16], row_l[kWarps][16];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * (int64_t)kQ;
    for (int e = threadIdx.x; e < kQ * kD; e += blockDim.x) {
        const int r = e / kD, c = e % kD;
        const int64_t i = q0 + r;
        qs[r][c] = i < a.tq ? a.q[(b * a.tq + i) * a.q_row + h * kD + c] : from_f<T>(0.0f);
    }
    for (int e = lane; e < 16 * kD; e += 32) os[warp][e / kD][e % kD] = 0.0f;
    if (lane < 16) {
        row_m[warp][lane] = -INFINITY;
        row_l[warp][lane] = 0.0f;
    }
    // Two lanes per query row: lane 2r and 2r+1 own row r, half `part` of the columns.
    const int r = lane >> 1, part = lane & 1;
    const int64_t i = q0 + warp * 16 + r;
    int64_t kend = a.tk;
    if (a.causal) kend = min(a.tk, q0 + kQ);

    for (int64_t kt = 0; kt < kend; kt += kKeys) {
        __syncthreads();  // previous tile's K/V (and, first time, Q) fully used / written
        for (int e = threadIdx.x; e < kKeys * kD; e += blockDim.x) {
            const int j = e / kD, c = e % kD;
            const int64_t key = kt + j;
            ks[j][c] = key < a.tk ? a.k[(b * a.tk + key) * a.k_row + h * kD + c] : from_f<T>(0.0f);
            vs[j][c] = key < a.tk ? a.v[(b * a.tk + key) * a.v_row + h * kD + c] : from_f<T>(0.0f);
        }
        __syncthreads();

        // S[16, 32] = Q_w[16, 64] · K_tileᵀ
        for (int n0 = 0; n0 < kKeys; n0 += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int k0 = 0; k0 < kD; k0 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, &qs[warp * 16][k0], kD);
                wmma::load_matrix_sync(fb, &ks[n0][k0], kD);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(&ss[warp][0][n0], acc, kSPad, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over this tile's 32 keys of row r (16 per lane).
        float sv[16];
        float mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < 16; ++u) {
            const int j = part * 16 + u;
            const int64_t key = kt + j;
            float s = -INFINITY;
            if (i < a.tq && key < a.tk && !(a.causal && key > i)) {
                s = a.scale * ss[warp][r][j];
                if (a.bias != nullptr) s += to_f(a.bias[(h * a.tq + i) * a.tk + key]);
            }
            sv[u] = s;
            mx = fmaxf(mx, s);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_old = row_m[warp][r];
        const float m_new = fmaxf(m_old, mx);
        float corr = 1.0f, sum = 0.0f;
        if (m_new != -INFINITY) corr = expf(m_old - m_new);  // 0 when m_old = -inf
#pragma unroll
        for (int u = 0; u < 16; ++u) {
            const float p = m_new == -INFINITY ? 0.0f : expf(sv[u] - m_new);
            sum += p;
            ps[warp][r][part * 16 + u] = from_f<T>(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
#pragma unroll 8
        for (int c = part * 32; c < part * 32 + 32; ++c) os[warp][r][c] *= corr;
        __syncwarp();  // every lane has read row_m before it changes
        if (part == 0) {
            row_m[warp][r] = m_new;
            row_l[warp][r] = row_l[warp][r] * corr + sum;
        }
        __syncwarp();

        // O_w[16, 64] += P[16, 32] · V_tile[32, 64]
        for (int n0 = 0; n0 < kD; n0 += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, &os[warp][0][n0], kOPad, wmma::mem_row_major);
            for (int k0 = 0; k0 < kKeys; k0 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, &ps[warp][0][k0], kPPad);
                wmma::load_matrix_sync(fb, &vs[k0][n0], kD);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(&os[warp][0][n0], acc, kOPad, wmma::mem_row_major);
        }
        __syncwarp();
    }

    if (i >= a.tq) return;
    const float l = row_l[warp][r];
    const float inv = 1.0f / l;
    for (int c = part * 32; c < part * 32 + 32; ++c)
        a.out[(b * a.tq + i) * a.o_row + h * kD + c] = from_f<T>(os[warp][r][c] * inv);
    if (part == 0 && a.lse != nullptr) a.lse[(b * a.heads + h) * a.tq + i] = row_m[warp][r] + logf(l);
}

// bf16 WMMA needs sm_80; f16 runs from sm_70. The host never launches a variant its device cannot run.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attention_fwd_tc_kernel(TcArgs<T> a) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
    attention_fwd_tc_body(a);
#elif __CUDA_ARCH__ >= 700
    if constexpr (std::is_same_v<T, __half>) attention_fwd_tc_body(a);
#endif
#endif
}

}  // namespace

namespace detail {

bool attention_fwd_tc_supported(const Exec& ex, const AttentionShape& s, DType dt) {
    if (!ex.tensor_core_attention || s.head_dim != kD) return false;
    if (dt == DType::F16) return ex.sm >= 70;
    if (dt == DType::BF16) return ex.sm >= 80;
    return false;
}

void attention_fwd_tc(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                      const void* bias, const AttentionShape& s, DType dt, AttentionRows rows) {
    const dim3 grid(static_cast<unsigned>(ceil_div(s.q_len, kQ)), static_cast<unsigned>(s.heads),
                    static_cast<unsigned>(s.batch));
    auto launch = [&](auto tag) {
        using T = decltype(tag);
        const TcArgs<T> a{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                          static_cast<const T*>(bias), static_cast<T*>(out), lse, rows.q_row, rows.k_row, rows.v_row,
                          rows.o_row, s.q_len, s.kv_len, s.heads, s.scale, s.causal};
        attention_fwd_tc_kernel<T><<<grid, kWarps * 32, 0, ex.stream>>>(a);
    };
    if (dt == DType::F16)
        launch(__half{});
    else
        launch(__nv_bfloat16{});
    SD3_CUDA_LAUNCHED();
}

}  // namespace detail

}  // namespace sd3::cuda
