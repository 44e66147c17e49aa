// Host-side helpers shared between the launcher files of ops/cuda (not part of the launcher API).
#pragma once

#include <cstdint>

#include "ops/cuda/cuda_ops.h"

namespace sd3::cuda::detail {

// Row chunks of the two-stage column reductions: stage 1 writes one float32 partial per (chunk, column),
// stage 2 adds the chunks in order. A fixed function of `rows`, so results are bit-identical across runs.
int64_t reduce_chunks(int64_t rows);

// dst[c] += Σ_k partial[k * cols + c] over k < chunks (stage 2), dst in dtype dst_dt.
void sum_partials_into(const Exec& ex, void* dst, DType dst_dt, const float* partial, int64_t chunks, int64_t cols);

// partial[k * cols + c] = Σ rows of chunk k of src[rows, cols] (stage 1 of a column sum).
void column_partials(const Exec& ex, float* partial, const void* src, DType dt, int64_t rows, int64_t cols);

// y[rows, cols] = bias[r] broadcast along each row (conv bias before the GEMM accumulates onto it).
void fill_rows(const Exec& ex, void* y, const void* bias, int64_t rows, int64_t cols, DType dt);

// Whether attention_fwd_tc runs this problem (head dim 64, 16-bit storage, bf16 only from sm_80).
bool attention_fwd_tc_supported(const Exec& ex, const AttentionShape& s, DType dt);
// The tensor-core forward of attention_fwd (attention_tc.cu); row strides already resolved (non-zero).
void attention_fwd_tc(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                      const void* bias, const AttentionShape& s, DType dt, AttentionRows rows);

}  // namespace sd3::cuda::detail
