// Flash attention forward on tensor cores for head dim 64 in bf16/f16, sm_80 and up (FlashAttention-2's
// register scheme with mma.sync m16n8k16, f32 accumulation). A block of 4 warps owns 64 queries (16 per warp);
// key/value tiles of 64 stream through shared memory. Each warp keeps S = Q·Kᵀ for its 16 rows in registers,
// runs the online softmax there (a row lives in the 4 lanes of a quad), reuses the f32 accumulator layout of S
// directly as the A operand of P·V (P rounded to the storage dtype, as FlashAttention does), and keeps the
// output in registers. Row sums use the unrounded P, so the saved log-sum-exp is as exact as the f32 kernel's.
// Fragment layouts are PTX's for mma.m16n8k16: g = lane / 4 is the row (and +8), t = lane % 4 the column pair.
#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/internal.h"

namespace sd3::cuda {

namespace {

constexpr int kD = 64;
constexpr int kQ = 64;     // queries per block (4 warps x 16)
constexpr int kKeys = 64;  // keys per tile
constexpr int kWarps = 4;
constexpr int kPad = kD + 8;  // shared row length in elements: fragment loads hit 32 distinct banks

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
    bool vec16;  // every row start 16-byte aligned: tiles load as uint4
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

// d += a·b for one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
}

// rows x kD elements from a [*, row]-strided buffer into shared memory, zeros past `valid` rows.
template <typename T>
__device__ __forceinline__ void load_tile(T (*dst)[kPad], const T* src, int64_t row, int64_t first, int64_t valid,
                                          bool vec16) {
    if (vec16) {
        for (int e = threadIdx.x; e < kKeys * kD / 8; e += blockDim.x) {
            const int r = e / (kD / 8), c = (e % (kD / 8)) * 8;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (first + r < valid) val = *reinterpret_cast<const uint4*>(src + (first + r) * row + c);
            *reinterpret_cast<uint4*>(&dst[r][c]) = val;
        }
    } else {
        for (int e = threadIdx.x; e < kKeys * kD; e += blockDim.x) {
            const int r = e / kD, c = e % kD;
            dst[r][c] = first + r < valid ? src[(first + r) * row + c] : from_f<T>(0.0f);
        }
    }
}

template <typename T>
__device__ __forceinline__ uint32_t ld32(const T* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}
template <typename T>
__device__ __forceinline__ uint32_t ld2x16(const T* lo, const T* hi) {
    return static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(lo)) |
           (static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(hi)) << 16);
}

template <typename T>
__device__ __forceinline__ void attention_fwd_tc_body(const TcArgs<T>& a) {
    __shared__ __align__(16) T qs[kQ][kPad];
    __shared__ __align__(16) T ks[kKeys][kPad];
    __shared__ __align__(16) T vs[kKeys][kPad];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * (int64_t)kQ;
    const int64_t head = h * kD;
    // Rows g and g + 8 of this warp's 16.
    const int64_t i0 = q0 + warp * 16 + g, i1 = i0 + 8;

    load_tile(qs, a.q + b * a.tq * a.q_row + head, a.q_row, q0, a.tq, a.vec16);
    __syncthreads();
    uint32_t qa[kD / 16][4];
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
        const int r = warp * 16 + g, c = kk * 16 + 2 * t;
        qa[kk][0] = ld32(&qs[r][c]);
        qa[kk][1] = ld32(&qs[r + 8][c]);
        qa[kk][2] = ld32(&qs[r][c + 8]);
        qa[kk][3] = ld32(&qs[r + 8][c + 8]);
    }

    float o[kD / 8][4];
#pragma unroll
    for (int nb = 0; nb < kD / 8; ++nb) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // l: this lane's part of the row sum

    int64_t kend = a.tk;
    if (a.causal) kend = min(a.tk, q0 + kQ);
    for (int64_t kt = 0; kt < kend; kt += kKeys) {
        __syncthreads();  // every warp is done with the previous K/V tile
        load_tile(ks, a.k + b * a.tk * a.k_row + head, a.k_row, kt, a.tk, a.vec16);
        load_tile(vs, a.v + b * a.tk * a.v_row + head, a.v_row, kt, a.tk, a.vec16);
        __syncthreads();

        // S[16, 64] = Q_w · K_tileᵀ: B[k = d][n = key] = K[key][d].
        float s[kKeys / 8][4];
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
            s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < kD / 16; ++kk) {
                const T* kr = &ks[nb * 8 + g][kk * 16 + 2 * t];
                mma16816<T>(s[nb], qa[kk], ld32(kr), ld32(kr + 8));
            }
        }
        // Scale, bias, masks; the tile's row maxima over the quad.
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int64_t key = kt + nb * 8 + 2 * t + (e & 1);
                const int64_t i = e < 2 ? i0 : i1;
                float v = -INFINITY;
                if (i < a.tq && key < a.tk && !(a.causal && key > i)) {
                    v = a.scale * s[nb][e];
                    if (a.bias != nullptr) v += to_f(a.bias[(h * a.tq + i) * a.tk + key]);
                }
                s[nb][e] = v;
            }
            mx0 = fmaxf(mx0, fmaxf(s[nb][0], s[nb][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nb][2], s[nb][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float c0 = n0 == -INFINITY ? 1.0f : expf(m0 - n0);  // 0 when m was -inf
        const float c1 = n1 == -INFINITY ? 1.0f : expf(m1 - n1);
        m0 = n0;
        m1 = n1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nb = 0; nb < kKeys / 8; ++nb) {
            s[nb][0] = n0 == -INFINITY ? 0.0f : expf(s[nb][0] - n0);
            s[nb][1] = n0 == -INFINITY ? 0.0f : expf(s[nb][1] - n0);
            s[nb][2] = n1 == -INFINITY ? 0.0f : expf(s[nb][2] - n1);
            s[nb][3] = n1 == -INFINITY ? 0.0f : expf(s[nb][3] - n1);
            sum0 += s[nb][0] + s[nb][1];
            sum1 += s[nb][2] + s[nb][3];
        }
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
#pragma unroll
        for (int nb = 0; nb < kD / 8; ++nb) {
            o[nb][0] *= c0;
            o[nb][1] *= c0;
            o[nb][2] *= c1;
            o[nb][3] *= c1;
        }
        // O += P · V_tile: S's accumulator pairs are P's A fragments; B[k = key][n = d] = V[key][d].
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const int r = kk * 16 + 2 * t;
#pragma unroll
            for (int nb = 0; nb < kD / 8; ++nb) {
                const int c = nb * 8 + g;
                mma16816<T>(o[nb], pa, ld2x16(&vs[r][c], &vs[r + 1][c]), ld2x16(&vs[r + 8][c], &vs[r + 9][c]));
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int nb = 0; nb < kD / 8; ++nb) {
        const int c = nb * 8 + 2 * t;
        if (i0 < a.tq) {
            T* p = a.out + (b * a.tq + i0) * a.o_row + head + c;
            p[0] = from_f<T>(o[nb][0] * inv0);
            p[1] = from_f<T>(o[nb][1] * inv0);
        }
        if (i1 < a.tq) {
            T* p = a.out + (b * a.tq + i1) * a.o_row + head + c;
            p[0] = from_f<T>(o[nb][2] * inv1);
            p[1] = from_f<T>(o[nb][3] * inv1);
        }
    }
    if (t == 0 && a.lse != nullptr) {
        if (i0 < a.tq) a.lse[(b * a.heads + h) * a.tq + i0] = m0 + logf(l0);
        if (i1 < a.tq) a.lse[(b * a.heads + h) * a.tq + i1] = m1 + logf(l1);
    }
}

// mma.m16n8k16 needs sm_80 (bf16 and f16 alike); the host launches this only there.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attention_fwd_tc_kernel(TcArgs<T> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    attention_fwd_tc_body(a);
#endif
}

bool aligned16(const void* p, int64_t row, size_t es) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (row * static_cast<int64_t>(es)) % 16 == 0;
}

}  // namespace

namespace detail {

bool attention_fwd_tc_supported(const Exec& ex, const AttentionShape& s, DType dt) {
    return ex.tensor_core_attention && s.head_dim == kD && ex.sm >= 80 && (dt == DType::BF16 || dt == DType::F16);
}

void attention_fwd_tc(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                      const void* bias, const AttentionShape& s, DType dt, AttentionRows rows) {
    const dim3 grid(static_cast<unsigned>(ceil_div(s.q_len, kQ)), static_cast<unsigned>(s.heads),
                    static_cast<unsigned>(s.batch));
    const size_t es = dtype_size(dt);
    const bool vec16 = aligned16(q, rows.q_row, es) && aligned16(k, rows.k_row, es) && aligned16(v, rows.v_row, es);
    auto launch = [&](auto tag) {
        using T = decltype(tag);
        const TcArgs<T> a{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                          static_cast<const T*>(bias), static_cast<T*>(out), lse, rows.q_row, rows.k_row, rows.v_row,
                          rows.o_row, s.q_len, s.kv_len, s.heads, s.scale, s.causal, vec16};
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
