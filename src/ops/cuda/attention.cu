// Flash attention forward and backward on CUDA cores in float32 (FlashAttention-2's algorithm, as the Triton
// fused-attention tutorial states it; research/gpu-components.md §1.4): the forward streams key/value tiles
// through shared memory with an online softmax and saves the row log-sum-exp; the backward recomputes the
// probabilities tile by tile from it, with dK/dV and dQ in separate kernels so that no gradient needs atomics.
// One thread owns one query (forward, dQ) or one key (dK/dV), so any head dim up to 64 runs; this is the
// portable path (sm_75 and up), not the tensor-core one. The launchers first offer the problem to cuDNN's fused
// SDPA (attention_cudnn.cpp), which takes bf16/f16 on sm_80+ where it is present.
#include <algorithm>
#include <cfloat>

#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

template <typename T>
struct AttnArgs {
    const T* q;
    const T* k;
    const T* v;
    const T* bias;  // [H, Tq, Tk] or null
    int64_t q_row, k_row, v_row, o_row;
    int64_t tq, tk, heads;
    float scale;
    bool causal;
};

// Element c of head h of token t of batch b in a [B, T, row] buffer.
__device__ __forceinline__ int64_t at(int64_t b, int64_t t, int64_t T, int64_t row, int64_t h, int D, int c) {
    return (b * T + t) * row + h * D + c;
}

constexpr int kFwdQueries = 128;  // threads (queries) per forward block
constexpr int kFwdKeys = 32;      // keys per shared-memory tile
constexpr int kFwdStep = 8;       // keys per online-softmax rescale

template <int D, typename T>
__global__ void __launch_bounds__(kFwdQueries) attention_fwd_kernel(AttnArgs<T> a, T* out, float* lse) {
    __shared__ float ks[kFwdKeys][D];
    __shared__ float vs[kFwdKeys][D];
    const int64_t b = blockIdx.z, h = blockIdx.y, i = blockIdx.x * (int64_t)kFwdQueries + threadIdx.x;
    const bool valid = i < a.tq;
    float q[D], acc[D];
#pragma unroll
    for (int c = 0; c < D; ++c) {
        q[c] = valid ? to_f(a.q[at(b, i, a.tq, a.q_row, h, D, c)]) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int64_t kend = a.tk;
    if (a.causal) kend = min(a.tk, (int64_t)(blockIdx.x + 1) * kFwdQueries);
    for (int64_t kt = 0; kt < kend; kt += kFwdKeys) {
        for (int e = threadIdx.x; e < kFwdKeys * D; e += kFwdQueries) {
            const int j = e / D, c = e % D;
            const int64_t key = kt + j;
            ks[j][c] = key < a.tk ? to_f(a.k[at(b, key, a.tk, a.k_row, h, D, c)]) : 0.0f;
            vs[j][c] = key < a.tk ? to_f(a.v[at(b, key, a.tk, a.v_row, h, D, c)]) : 0.0f;
        }
        __syncthreads();
        if (valid) {
            for (int j0 = 0; j0 < kFwdKeys; j0 += kFwdStep) {
                float s[kFwdStep];
                float mx = -INFINITY;
#pragma unroll
                for (int u = 0; u < kFwdStep; ++u) {
                    const int64_t key = kt + j0 + u;
                    if (key < a.tk && !(a.causal && key > i)) {
                        float dot = 0.0f;
#pragma unroll
                        for (int c = 0; c < D; ++c) dot += q[c] * ks[j0 + u][c];
                        s[u] = a.scale * dot;
                        if (a.bias != nullptr) s[u] += to_f(a.bias[(h * a.tq + i) * a.tk + key]);
                    } else {
                        s[u] = -INFINITY;
                    }
                    mx = fmaxf(mx, s[u]);
                }
                if (mx == -INFINITY) continue;  // every key of this step masked
                const float m_new = fmaxf(m, mx);
                const float corr = expf(m - m_new);  // 0 on the first step (m = -inf)
                l *= corr;
#pragma unroll
                for (int c = 0; c < D; ++c) acc[c] *= corr;
#pragma unroll
                for (int u = 0; u < kFwdStep; ++u) {
                    const float p = expf(s[u] - m_new);
                    l += p;
#pragma unroll
                    for (int c = 0; c < D; ++c) acc[c] += p * vs[j0 + u][c];
                }
                m = m_new;
            }
        }
        __syncthreads();
    }
    if (!valid) return;
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < D; ++c) out[at(b, i, a.tq, a.o_row, h, D, c)] = from_f<T>(acc[c] * inv);
    if (lse != nullptr) lse[(b * a.heads + h) * a.tq + i] = m + logf(l);
}

// delta[b, h, i] = Σ_c dO·O, the row term of dS = P ⊙ (dP − delta).
template <int D, typename T>
__global__ void attention_delta_kernel(float* delta, const T* dout, const T* out, int64_t batch, int64_t heads,
                                       int64_t tq, int64_t o_row) {
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= batch * heads * tq) return;
    const int64_t i = idx % tq, h = (idx / tq) % heads, b = idx / (tq * heads);
    float d = 0.0f;
#pragma unroll
    for (int c = 0; c < D; ++c) d += to_f(dout[at(b, i, tq, o_row, h, D, c)]) * to_f(out[at(b, i, tq, o_row, h, D, c)]);
    delta[idx] = d;
}

constexpr int kBwdKeys = 64;     // threads (keys) per dK/dV block
constexpr int kBwdQTile = 16;    // queries per shared tile in the dK/dV kernel
constexpr int kBwdQueries = 64;  // threads (queries) per dQ block
constexpr int kBwdKTile = 16;    // keys per shared tile in the dQ kernel

template <int D, typename T>
__global__ void __launch_bounds__(kBwdKeys)
    attention_bwd_dkdv_kernel(AttnArgs<T> a, T* dk, T* dv, const T* dout, const float* lse, const float* delta) {
    __shared__ float ks[kBwdKeys][D + 1];  // each thread reads its own row: +1 avoids bank conflicts
    __shared__ float vs[kBwdKeys][D + 1];
    __shared__ float qs[kBwdQTile][D];
    __shared__ float dos[kBwdQTile][D];
    __shared__ float lse_s[kBwdQTile], delta_s[kBwdQTile];
    const int64_t b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * (int64_t)kBwdKeys, j = k0 + threadIdx.x;
    for (int e = threadIdx.x; e < kBwdKeys * D; e += kBwdKeys) {
        const int jj = e / D, c = e % D;
        const int64_t key = k0 + jj;
        ks[jj][c] = key < a.tk ? to_f(a.k[at(b, key, a.tk, a.k_row, h, D, c)]) : 0.0f;
        vs[jj][c] = key < a.tk ? to_f(a.v[at(b, key, a.tk, a.v_row, h, D, c)]) : 0.0f;
    }
    float gk[D], gv[D];
#pragma unroll
    for (int c = 0; c < D; ++c) gk[c] = gv[c] = 0.0f;
    const int64_t qstart = a.causal ? (k0 / kBwdQTile) * kBwdQTile : 0;  // queries before k0 see no key here
    const float* lse_bh = lse + (b * a.heads + h) * a.tq;
    const float* delta_bh = delta + (b * a.heads + h) * a.tq;
    for (int64_t it = qstart; it < a.tq; it += kBwdQTile) {
        __syncthreads();
        for (int e = threadIdx.x; e < kBwdQTile * D; e += kBwdKeys) {
            const int ii = e / D, c = e % D;
            const int64_t qi = it + ii;
            qs[ii][c] = qi < a.tq ? to_f(a.q[at(b, qi, a.tq, a.q_row, h, D, c)]) : 0.0f;
            dos[ii][c] = qi < a.tq ? to_f(dout[at(b, qi, a.tq, a.o_row, h, D, c)]) : 0.0f;
        }
        if (threadIdx.x < kBwdQTile) {
            const int64_t qi = it + threadIdx.x;
            lse_s[threadIdx.x] = qi < a.tq ? lse_bh[qi] : 0.0f;
            delta_s[threadIdx.x] = qi < a.tq ? delta_bh[qi] : 0.0f;
        }
        __syncthreads();
        if (j >= a.tk) continue;
        for (int ii = 0; ii < kBwdQTile; ++ii) {
            const int64_t qi = it + ii;
            if (qi >= a.tq) break;
            if (a.causal && j > qi) continue;
            float dot = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < D; ++c) {
                dot += qs[ii][c] * ks[threadIdx.x][c];
                dp += dos[ii][c] * vs[threadIdx.x][c];
            }
            float s = a.scale * dot;
            if (a.bias != nullptr) s += to_f(a.bias[(h * a.tq + qi) * a.tk + j]);
            const float p = expf(s - lse_s[ii]);
            const float ds = p * (dp - delta_s[ii]);
#pragma unroll
            for (int c = 0; c < D; ++c) {
                gv[c] += p * dos[ii][c];
                gk[c] += ds * qs[ii][c];
            }
        }
    }
    if (j >= a.tk) return;
#pragma unroll
    for (int c = 0; c < D; ++c) {
        dk[at(b, j, a.tk, a.k_row, h, D, c)] = from_f<T>(a.scale * gk[c]);
        dv[at(b, j, a.tk, a.v_row, h, D, c)] = from_f<T>(gv[c]);
    }
}

template <int D, typename T>
__global__ void __launch_bounds__(kBwdQueries)
    attention_bwd_dq_kernel(AttnArgs<T> a, T* dq, const T* dout, const float* lse, const float* delta) {
    __shared__ float qs[kBwdQueries][D + 1];
    __shared__ float dos[kBwdQueries][D + 1];
    __shared__ float ks[kBwdKTile][D];
    __shared__ float vs[kBwdKTile][D];
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * (int64_t)kBwdQueries, i = q0 + threadIdx.x;
    for (int e = threadIdx.x; e < kBwdQueries * D; e += kBwdQueries) {
        const int ii = e / D, c = e % D;
        const int64_t qi = q0 + ii;
        qs[ii][c] = qi < a.tq ? to_f(a.q[at(b, qi, a.tq, a.q_row, h, D, c)]) : 0.0f;
        dos[ii][c] = qi < a.tq ? to_f(dout[at(b, qi, a.tq, a.o_row, h, D, c)]) : 0.0f;
    }
    const bool valid = i < a.tq;
    const float l_i = valid ? lse[(b * a.heads + h) * a.tq + i] : 0.0f;
    const float d_i = valid ? delta[(b * a.heads + h) * a.tq + i] : 0.0f;
    float g[D];
#pragma unroll
    for (int c = 0; c < D; ++c) g[c] = 0.0f;
    int64_t kend = a.tk;
    if (a.causal) kend = min(a.tk, q0 + kBwdQueries);
    for (int64_t jt = 0; jt < kend; jt += kBwdKTile) {
        __syncthreads();
        for (int e = threadIdx.x; e < kBwdKTile * D; e += kBwdQueries) {
            const int jj = e / D, c = e % D;
            const int64_t key = jt + jj;
            ks[jj][c] = key < a.tk ? to_f(a.k[at(b, key, a.tk, a.k_row, h, D, c)]) : 0.0f;
            vs[jj][c] = key < a.tk ? to_f(a.v[at(b, key, a.tk, a.v_row, h, D, c)]) : 0.0f;
        }
        __syncthreads();
        if (!valid) continue;
        for (int jj = 0; jj < kBwdKTile; ++jj) {
            const int64_t key = jt + jj;
            if (key >= a.tk || (a.causal && key > i)) break;
            float dot = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < D; ++c) {
                dot += qs[threadIdx.x][c] * ks[jj][c];
                dp += dos[threadIdx.x][c] * vs[jj][c];
            }
            float s = a.scale * dot;
            if (a.bias != nullptr) s += to_f(a.bias[(h * a.tq + i) * a.tk + key]);
            const float ds = expf(s - l_i) * (dp - d_i);
#pragma unroll
            for (int c = 0; c < D; ++c) g[c] += ds * ks[jj][c];
        }
    }
    if (!valid) return;
#pragma unroll
    for (int c = 0; c < D; ++c) dq[at(b, i, a.tq, a.q_row, h, D, c)] = from_f<T>(a.scale * g[c]);
}

template <typename T>
AttnArgs<T> make_args(const void* q, const void* k, const void* v, const void* bias, const AttentionShape& s,
                      AttentionRows rows) {
    const int64_t dense = s.heads * s.head_dim;
    return AttnArgs<T>{static_cast<const T*>(q),
                       static_cast<const T*>(k),
                       static_cast<const T*>(v),
                       static_cast<const T*>(bias),
                       rows.q_row ? rows.q_row : dense,
                       rows.k_row ? rows.k_row : dense,
                       rows.v_row ? rows.v_row : dense,
                       rows.o_row ? rows.o_row : dense,
                       s.q_len,
                       s.kv_len,
                       s.heads,
                       s.scale,
                       s.causal};
}

}  // namespace

// Runs `body` with the compile-time head dim `D` bound to s.head_dim.
#define SD3_DISPATCH_HEAD_DIM(hd, D, ...)                                          \
    do {                                                                           \
        switch (hd) {                                                              \
            case 8: { constexpr int D = 8; __VA_ARGS__; } break;                   \
            case 16: { constexpr int D = 16; __VA_ARGS__; } break;                 \
            case 32: { constexpr int D = 32; __VA_ARGS__; } break;                 \
            case 64: { constexpr int D = 64; __VA_ARGS__; } break;                 \
            default: SD3_ASSERT(false, "attention: head dim ", hd, " unsupported"); \
        }                                                                          \
    } while (0)

bool attention_supported(int64_t head_dim) {
    return head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64;
}

namespace {
AttentionRows resolved(AttentionRows rows, const AttentionShape& s) {
    const int64_t dense = s.heads * s.head_dim;
    return AttentionRows{rows.q_row ? rows.q_row : dense, rows.k_row ? rows.k_row : dense,
                         rows.v_row ? rows.v_row : dense, rows.o_row ? rows.o_row : dense};
}
}  // namespace

size_t attention_fwd_workspace(const AttentionShape& s, DType dt) {
    return detail::cudnn_attention_workspace(false, false, s, dt);
}

void attention_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                   const void* bias, const AttentionShape& s, DType dt, AttentionRows rows) {
    if (s.batch * s.heads * s.q_len == 0) return;
    SD3_ASSERT(s.kv_len > 0, "attention over zero keys");
    if (detail::cudnn_attention_fwd(ex, out, lse, q, k, v, bias, s, dt, resolved(rows, s))) return;
    if (detail::attention_fwd_tc_supported(ex, s, dt)) {
        detail::attention_fwd_tc(ex, out, lse, q, k, v, bias, s, dt, resolved(rows, s));
        return;
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(s.q_len, kFwdQueries)), static_cast<unsigned>(s.heads),
                    static_cast<unsigned>(s.batch));
    SD3_DISPATCH_FLOAT(dt, T, {
        const AttnArgs<T> a = make_args<T>(q, k, v, bias, s, rows);
        SD3_DISPATCH_HEAD_DIM(s.head_dim, D,
                              attention_fwd_kernel<D, T><<<grid, kFwdQueries, 0, ex.stream>>>(
                                  a, static_cast<T*>(out), lse));
    });
    SD3_CUDA_LAUNCHED();
}

size_t attention_bwd_workspace(const AttentionShape& s, DType dt, bool deterministic) {
    const size_t own = static_cast<size_t>(s.batch * s.heads * s.q_len) * sizeof(float);  // delta
    return std::max(own, detail::cudnn_attention_workspace(true, deterministic, s, dt));
}

void attention_bwd(const Exec& ex, void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                   const void* v, const void* out, const float* lse, const void* bias, const AttentionShape& s,
                   DType dt, AttentionRows rows) {
    if (s.batch * s.heads * s.q_len == 0) return;
    if (detail::cudnn_attention_bwd(ex, dq, dk, dv, dout, q, k, v, out, lse, bias, s, dt, resolved(rows, s))) return;
    const size_t own = static_cast<size_t>(s.batch * s.heads * s.q_len) * sizeof(float);
    SD3_ASSERT(ex.scratch_bytes >= own, "attention_bwd: scratch of ", ex.scratch_bytes, " bytes, needs ", own);
    float* delta = static_cast<float*>(ex.scratch);
    const int64_t n = s.batch * s.heads * s.q_len;
    const dim3 grid_kv(static_cast<unsigned>(ceil_div(s.kv_len, kBwdKeys)), static_cast<unsigned>(s.heads),
                       static_cast<unsigned>(s.batch));
    const dim3 grid_q(static_cast<unsigned>(ceil_div(s.q_len, kBwdQueries)), static_cast<unsigned>(s.heads),
                      static_cast<unsigned>(s.batch));
    SD3_DISPATCH_FLOAT(dt, T, {
        const AttnArgs<T> a = make_args<T>(q, k, v, bias, s, rows);
        SD3_DISPATCH_HEAD_DIM(s.head_dim, D, {
            attention_delta_kernel<D, T><<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, ex.stream>>>(
                delta, static_cast<const T*>(dout), static_cast<const T*>(out), s.batch, s.heads, s.q_len, a.o_row);
            attention_bwd_dkdv_kernel<D, T><<<grid_kv, kBwdKeys, 0, ex.stream>>>(
                a, static_cast<T*>(dk), static_cast<T*>(dv), static_cast<const T*>(dout), lse, delta);
            attention_bwd_dq_kernel<D, T><<<grid_q, kBwdQueries, 0, ex.stream>>>(
                a, static_cast<T*>(dq), static_cast<const T*>(dout), lse, delta);
        });
    });
    SD3_CUDA_LAUNCHED();
}

}  // namespace sd3::cuda
