// Attention at head dims the flash kernels of attention.cu do not build (the VAE's one head of 512 channels, head
// dim 80, ...): per (batch, head) and chunk of queries, S = scale·Q·Kᵀ through cuBLASLt into f32 scratch, a row
// softmax in f32 (bias, causal mask, lse), then O = P·V through cuBLASLt. P is rounded to the storage dtype before
// P·V, as FlashAttention does. The chunk size comes from the scratch budget, so a 16384-token VAE decode never
// holds the whole [T, T] matrix. Forward only (model_ops.h).
#include <cfloat>

#include "ops/cuda/common.cuh"
#include "ops/cuda/model_ops.h"

namespace sd3::cuda {

namespace {

constexpr int kThreads = 256;

// One block per score row r of the chunk (query i0 + r). `bias` points at the chunk's first row of [Tq, Tk] for
// this head (or null); `lse` at the chunk's first query (or null). P may alias S when T is float.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_rows_kernel(float* S, T* P, const T* bias, float* lse, int64_t tk, int64_t i0, bool causal) {
    __shared__ float red[32];
    const int64_t r = blockIdx.x;
    float* srow = S + r * tk;
    T* prow = P + r * tk;
    const T* brow = bias != nullptr ? bias + r * tk : nullptr;
    const int64_t kend = causal ? min(tk, i0 + r + 1) : tk;  // keys j > i are masked
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < kend; j += blockDim.x) {
        float v = srow[j];
        if (brow != nullptr) {
            v += to_f(brow[j]);
            srow[j] = v;
        }
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < kend; j += blockDim.x) sum += expf(srow[j] - mx);
    sum = block_sum(sum, red);
    const float inv = 1.0f / sum;
    for (int64_t j = threadIdx.x; j < tk; j += blockDim.x)
        prow[j] = from_f<T>(j < kend ? expf(srow[j] - mx) * inv : 0.0f);
    if (threadIdx.x == 0 && lse != nullptr) lse[r] = mx + logf(sum);
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Scratch for `rows` query rows: S in f32, then (16-bit storage) P in dt at a 256-byte boundary.
size_t chunk_bytes(int64_t rows, int64_t tk, DType dt) {
    const size_t s = static_cast<size_t>(rows * tk) * sizeof(float);
    return dt == DType::F32 ? s : align256(s) + static_cast<size_t>(rows * tk) * dtype_size(dt);
}

int64_t rows_that_fit(size_t bytes, int64_t tq, int64_t tk, DType dt) {
    const size_t per_row = static_cast<size_t>(tk) * (sizeof(float) + (dt == DType::F32 ? 0 : dtype_size(dt)));
    int64_t rows = static_cast<int64_t>(bytes / per_row);
    rows = rows < tq ? rows : tq;
    while (rows > 1 && chunk_bytes(rows, tk, dt) > bytes) --rows;  // the 256-byte alignment of P
    return rows;
}

}  // namespace

size_t attention_chunked_workspace(const AttentionShape& s, DType dt, size_t budget) {
    const int64_t rows = rows_that_fit(budget, s.q_len, s.kv_len, dt);
    return chunk_bytes(rows > 1 ? rows : 1, s.kv_len, dt);
}

void attention_chunked_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                           const void* bias, const AttentionShape& s, DType dt) {
    if (s.batch * s.heads * s.q_len == 0) return;
    SD3_ASSERT(s.kv_len > 0, "attention over zero keys");
    const int64_t rows = rows_that_fit(ex.scratch_bytes, s.q_len, s.kv_len, dt);
    SD3_ASSERT(rows >= 1 && chunk_bytes(rows, s.kv_len, dt) <= ex.scratch_bytes, "attention_chunked_fwd: scratch of ",
               ex.scratch_bytes, " bytes, needs at least ", chunk_bytes(1, s.kv_len, dt));
    float* S = static_cast<float*>(ex.scratch);
    void* P = dt == DType::F32 ? ex.scratch
                               : static_cast<char*>(ex.scratch) + align256(static_cast<size_t>(rows * s.kv_len) * 4);
    const int64_t width = s.heads * s.head_dim, D = s.head_dim, tq = s.q_len, tk = s.kv_len;
    const size_t es = dtype_size(dt);
    const char* qc = static_cast<const char*>(q);
    const char* kc = static_cast<const char*>(k);
    const char* vc = static_cast<const char*>(v);
    const char* bc = static_cast<const char*>(bias);
    char* oc = static_cast<char*>(out);
    for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < s.heads; ++h) {
            const char* kp = kc + static_cast<size_t>(b * tk * width + h * D) * es;
            const char* vp = vc + static_cast<size_t>(b * tk * width + h * D) * es;
            for (int64_t i0 = 0; i0 < tq; i0 += rows) {
                const int64_t n = tq - i0 < rows ? tq - i0 : rows;
                const size_t qo = static_cast<size_t>((b * tq + i0) * width + h * D) * es;
                gemm(ex, false, true, n, tk, D, s.scale, qc + qo, width, kp, width, 0.0f, S, tk, dt, DType::F32);
                const void* brow = bias != nullptr ? bc + static_cast<size_t>((h * tq + i0) * tk) * es : nullptr;
                float* lrow = lse != nullptr ? lse + (b * s.heads + h) * tq + i0 : nullptr;
                SD3_DISPATCH_FLOAT(dt, T, softmax_rows_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, ex.stream>>>(
                                              S, static_cast<T*>(P), static_cast<const T*>(brow), lrow, tk, i0,
                                              s.causal));
                SD3_CUDA_LAUNCHED();
                gemm(ex, false, false, n, D, tk, 1.0f, P, tk, vp, width, 0.0f, oc + qo, width, dt, dt);
            }
        }
    }
}

}  // namespace sd3::cuda
