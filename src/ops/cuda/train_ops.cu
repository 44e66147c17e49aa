// Kernels behind train_ops.h. Each reproduces its CPU loop of ops/cpu/train_ops.cpp operation for operation:
// __fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn (and __dadd_rn, __dmul_rn) keep the compiler from fusing a
// multiply into an add, which the CPU build never does, so both give the same bits.
#include <cfloat>

#include "ops/cuda/common.cuh"
#include "ops/cuda/train_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kLossChunk = 8192;  // elements of a sample per block of the loss

// --- loss: blocks of kLossChunk elements of a sample (blockIdx.x: chunk, blockIdx.y: sample), each writing its
// partial sum; then one thread per sample adds its chunks' sums in order (a 1024² latent of 262144 elements in one
// block took 0.48 ms) ---
template <typename T>
__global__ void flow_matching_loss_kernel(float* grad, double* partials, const T* pred, const float* noisy,
                                          const float* x0, const float* noise, int64_t per,
                                          const cpu::LossSample* samples, bool precondition) {
    __shared__ double partial[32];
    const cpu::LossSample s = samples[blockIdx.y];
    const int64_t base = blockIdx.y * per, begin = blockIdx.x * kLossChunk, end = min(per, begin + kLossChunk);
    double sum = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float p = to_f(pred[base + i]);
        float out, target;
        if (precondition) {
            out = __fadd_rn(__fmul_rn(p, -s.sigma), noisy[base + i]);
            target = x0[base + i];
        } else {
            out = p;
            target = __fsub_rn(noise[base + i], x0[base + i]);
        }
        const float d = __fsub_rn(out, target);
        sum = __dadd_rn(sum, static_cast<double>(__fmul_rn(s.weight, __fmul_rn(d, d))));
        const double gd = __dmul_rn(s.elem_scale, static_cast<double>(d));
        grad[base + i] = static_cast<float>(precondition ? __dmul_rn(gd, -static_cast<double>(s.sigma)) : gd);
    }
    sum = block_sum(sum, partial);
    if (threadIdx.x == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = sum;
}

__global__ void loss_partials_sum_kernel(double* sums, const double* partials, int64_t batch, int64_t chunks) {
    const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (b >= batch) return;
    double sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum = __dadd_rn(sum, partials[b * chunks + c]);
    sums[b] = sum;
}

// --- norms: one block per segment ---
__global__ void segment_norms_kernel(float* norms, const float* x, const int64_t* segments) {
    __shared__ double partial[32];
    const int64_t offset = segments[2 * blockIdx.x], n = segments[2 * blockIdx.x + 1];
    double sq = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double v = x[offset + i];
        sq = __dadd_rn(sq, __dmul_rn(v, v));
    }
    sq = block_sum(sq, partial);
    if (threadIdx.x == 0) norms[blockIdx.x] = static_cast<float>(__dsqrt_rn(sq));
}

__global__ void total_norm_kernel(float* stats, const float* norms, int64_t count, float max_norm) {
    cpu::total_norm_and_coef(stats, norms, count, max_norm);  // one thread: the CPU's order
}

__global__ void scale_below_one_kernel(float* x, int64_t n, const float* stats) {
    const float coef = stats[1];
    if (coef >= 1.0f) return;
    SD3_GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], coef);
}

__global__ void find_nonfinite_kernel(int* nonfinite, const float* x, int64_t n) {
    SD3_GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) atomicOr(nonfinite, 1);  // an integer flag: the order does not matter
    }
}

// --- AdamW: element-wise ---
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, cpu::AdamWStep s) {
    SD3_GRID_STRIDE(i, n) {
        float pi = p[i];
        const float gi = g[i];
        if (s.weight_decay) pi = __fmul_rn(pi, s.decay);
        const float mi = __fadd_rn(m[i], __fmul_rn(s.one_minus_beta1, __fsub_rn(gi, m[i])));
        float vi = __fmul_rn(v[i], s.beta2);
        vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(s.one_minus_beta2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
        p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

// --- AdamW8bit: one block of kThreads per chunk, kPerThread elements each ---
constexpr int kPerThread = 8;
constexpr int64_t kMaxBlockSize = kThreads * kPerThread;  // 2048, bitsandbytes 0.43.1's block

__global__ void adam8bit_kernel(float* p_all, const float* g_all, cpu::Adam8bitState st, const int64_t* chunks,
                                const float* maps, int64_t block_size, cpu::Adam8bitStep s) {
    __shared__ float smap[256], umap[256], partial[32];
    const int64_t offset = chunks[3 * blockIdx.x], count = chunks[3 * blockIdx.x + 1], block = chunks[3 * blockIdx.x + 2];
    float* p = p_all + offset;
    const float* g = g_all + offset;
    if (block < 0) {  // float32 moments (kOptimizer32bit2State)
        float* m = st.m32 + offset;
        float* v = st.v32 + offset;
        for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
            const float gi = g[i];
            if (!isfinite(gi)) continue;
            const float mi = __fadd_rn(__fmul_rn(m[i], s.beta1), __fmul_rn(s.one_minus_beta1, gi));
            const float vi = __fadd_rn(__fmul_rn(v[i], s.beta2), __fmul_rn(s.one_minus_beta2, __fmul_rn(gi, gi)));
            float pi = __fadd_rn(p[i], __fmul_rn(s.step_size, __fdiv_rn(mi, __fadd_rn(__fsqrt_rn(vi), s.eps_corr2))));
            if (s.weight_decay) pi = __fmul_rn(pi, s.decay);
            m[i] = mi;
            v[i] = vi;
            p[i] = pi;
        }
        return;
    }
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        smap[i] = maps[i];
        umap[i] = maps[256 + i];
    }
    __syncthreads();
    uint8_t* mc = st.m_codes + offset;
    uint8_t* vc = st.v_codes + offset;
    const float am1 = st.m_absmax[block], am2 = st.v_absmax[block];
    float m[kPerThread], v[kPerThread];
    float nm1 = -FLT_MAX, nm2 = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int64_t j = threadIdx.x + k * kThreads;
        m[k] = v[k] = 0.0f;
        if (j >= count) continue;
        const float gv = g[j];
        if (isfinite(gv)) {
            v[k] = __fmul_rn(umap[vc[j]], am2);
            v[k] = __fadd_rn(__fmul_rn(v[k], s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, gv), gv));
            m[k] = __fmul_rn(smap[mc[j]], am1);
            m[k] = __fadd_rn(__fmul_rn(m[k], s.beta1), __fmul_rn(s.one_minus_beta1, gv));
        }
        nm1 = fmaxf(nm1, fabsf(m[k]));
        nm2 = fmaxf(nm2, fabsf(v[k]));
    }
    if (count < block_size) nm1 = fmaxf(nm1, fabsf(__fmul_rn(__fmul_rn(smap[128], am1), s.beta1)));
    nm1 = block_max(nm1, partial);
    nm2 = block_max(nm2, partial);
    if (threadIdx.x == 0) {  // every thread has read the old absmax before the first block_max's barrier
        st.m_absmax[block] = nm1;
        st.v_absmax[block] = nm2;
    }
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int64_t j = threadIdx.x + k * kThreads;
        if (j >= count) continue;
        if (isfinite(g[j])) {
            float pv = __fadd_rn(p[j], __fmul_rn(s.step_size, __fdiv_rn(m[k], __fadd_rn(__fsqrt_rn(v[k]), s.eps_corr2))));
            if (s.weight_decay) pv = __fmul_rn(pv, s.decay);
            p[j] = pv;
        }
        uint8_t c1 = 127, c2 = 0;
        if (nm1 > 0) {
            c1 = cpu::quantize_nearest(smap, true, __fdiv_rn(m[k], nm1));
            if (signbit(smap[c1]) != signbit(m[k])) c1 = m[k] > 0.0f ? c1 + 1 : c1 - 1;
        }
        if (nm2 > 0) c2 = cpu::quantize_nearest(umap, false, __fdiv_rn(v[k], nm2));
        mc[j] = c1;
        vc[j] = c2;
    }
}

}  // namespace

int64_t flow_matching_loss_chunks(int64_t per) { return std::max<int64_t>(1, ceil_div(per, kLossChunk)); }

void flow_matching_loss(const Exec& ex, float* grad, double* sums, double* partials, const void* pred, DType dt,
                        const float* noisy, const float* x0, const float* noise, int64_t batch, int64_t per,
                        const cpu::LossSample* samples, bool precondition) {
    if (batch == 0) return;
    const int64_t chunks = flow_matching_loss_chunks(per);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(batch));
    SD3_DISPATCH_FLOAT(dt, T,
                       flow_matching_loss_kernel<T><<<grid, kThreads, 0, ex.stream>>>(
                           grad, partials, static_cast<const T*>(pred), noisy, x0, noise, per, samples, precondition));
    SD3_CUDA_LAUNCHED();
    loss_partials_sum_kernel<<<grid_for(batch, kThreads), kThreads, 0, ex.stream>>>(sums, partials, batch, chunks);
    SD3_CUDA_LAUNCHED();
}

void clip_by_total_norm(const Exec& ex, float* stats, float* norms, float* x, int64_t n, const int64_t* segments,
                        int64_t count, float max_norm) {
    if (count > 0) {
        segment_norms_kernel<<<static_cast<unsigned>(count), kThreads, 0, ex.stream>>>(norms, x, segments);
        SD3_CUDA_LAUNCHED();
    }
    total_norm_kernel<<<1, 1, 0, ex.stream>>>(stats, norms, count, max_norm);
    SD3_CUDA_LAUNCHED();
    if (n == 0) return;
    scale_below_one_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(x, n, stats);
    SD3_CUDA_LAUNCHED();
}

void find_nonfinite(const Exec& ex, int* nonfinite, const float* x, int64_t n) {
    SD3_CUDA_CHECK(cudaMemsetAsync(nonfinite, 0, sizeof(int), ex.stream));
    if (n == 0) return;
    find_nonfinite_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(nonfinite, x, n);
    SD3_CUDA_LAUNCHED();
}

void adamw_update(const Exec& ex, float* p, const float* g, float* m, float* v, int64_t n, const cpu::AdamWStep& s) {
    if (n == 0) return;
    adamw_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream>>>(p, g, m, v, n, s);
    SD3_CUDA_LAUNCHED();
}

void adam8bit_update(const Exec& ex, float* p, const float* g, const cpu::Adam8bitState& st, const int64_t* chunks,
                     int64_t count, const float* maps, int64_t block_size, const cpu::Adam8bitStep& s) {
    SD3_ASSERT(block_size > 0 && block_size <= kMaxBlockSize, "adam8bit_update: block size ", block_size,
               " (the kernel takes up to ", kMaxBlockSize, ")");
    if (count == 0) return;
    adam8bit_kernel<<<static_cast<unsigned>(count), kThreads, 0, ex.stream>>>(p, g, st, chunks, maps, block_size, s);
    SD3_CUDA_LAUNCHED();
}

}  // namespace sd3::cuda
