// CUDA launchers for the training update (ops/cpu/train_ops.h, whose loops they reproduce bit for bit: the same
// float operations in the same order, each a round-to-nearest intrinsic so nothing is fused). Same contract as
// cuda_ops.h: raw device pointers, sizes, an Exec; they never allocate. Reductions have a fixed shape (no
// atomics on floats), so reruns give the same bits. No CUDA header here.
#pragma once

#include <cstdint>

#include "ops/cpu/train_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace sd3::cuda {

// The flow-matching loss of samples [0, batch), each `per` elements: grad (f32) and sums[b] = Σ w·d² (f64) as
// cpu::flow_matching_sample computes them (the sums in a fixed order of their own), pred in dtype dt,
// noisy/x0/noise f32. `samples` is a device array (read by the kernel, so a recorded step takes each
// micro-batch's constants from memory). `partials` holds batch * flow_matching_loss_chunks(per) doubles.
int64_t flow_matching_loss_chunks(int64_t per);
void flow_matching_loss(const Exec& ex, float* grad, double* sums, double* partials, const void* pred, DType dt,
                        const float* noisy, const float* x0, const float* noise, int64_t batch, int64_t per,
                        const cpu::LossSample* samples, bool precondition);

// ops::clip_by_total_norm_ on x[n]: norms[k] = float(sqrt(Σ x²)) over the segment (offset, numel) =
// segments[2k], segments[2k + 1] (device I64, `count` of them), stats = (norm, coef) as cpu::total_norm_and_coef,
// then x *= coef where coef < 1. norms [count] and stats [2] are device float32.
void clip_by_total_norm(const Exec& ex, float* stats, float* norms, float* x, int64_t n, const int64_t* segments,
                        int64_t count, float max_norm);

// *nonfinite (device int, zeroed here first) becomes non-zero when some element of x[n] is not finite.
void find_nonfinite(const Exec& ex, int* nonfinite, const float* x, int64_t n);

// cpu::adamw_update over n elements.
void adamw_update(const Exec& ex, float* p, const float* g, float* m, float* v, int64_t n, const cpu::AdamWStep& s);

// cpu::adam8bit_chunk for each of the `count` chunks (device I64 [count, 3]); `maps` (device f32 [512]) holds the
// signed map, then the unsigned one. block_size <= 2048.
void adam8bit_update(const Exec& ex, float* p, const float* g, const cpu::Adam8bitState& st, const int64_t* chunks,
                     int64_t count, const float* maps, int64_t block_size, const cpu::Adam8bitStep& s);

}  // namespace sd3::cuda
