// The training update on tensors of any device: the loss, the per-tensor gradient norms, clipping and the
// optimizers' element updates. CUDA tensors go to ops/cuda (kernels that reproduce the CPU loops of
// ops/cpu/train_ops.h bit for bit), the rest to those loops. Buffers are contiguous float32 unless a comment
// says otherwise; every reduction has a fixed order, so a seed gives the same bits on every run.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "ops/cpu/train_ops.h"

namespace sd3::ops {

// The flow-matching loss of a micro-batch (train/flow_matching.h): pred [B, ...] (f32 on the CPU; f32, bf16 or
// f16 on a GPU), noisy, x0 and noise [B, ...] f32 on the same device, one LossSample per sample in `samples`
// (loss_sample_table's bytes, copied to pred's device: a step recorded once, DeviceGraph, reads each
// micro-batch's constants from memory rather than from its launch). Writes *grad (allocated here, f32 [B, ...])
// and returns the per-sample sums Σ w·(out - target)² as f64 [B].
Tensor flow_matching_loss(const Tensor& pred, const Tensor& noisy, const Tensor& x0, const Tensor& noise,
                          const Tensor& samples, bool precondition, Tensor* grad);
// The samples as a table: U8 [B, sizeof(cpu::LossSample)] on the CPU.
Tensor loss_sample_table(const std::vector<cpu::LossSample>& samples);

// torch.nn.utils.clip_grad_norm_ over the segments of x (an I64 [S, 2] table of (offset, numel) on x's device):
// each segment's norm (float32, from a double sum), the norm of those (summed in segment order), coef = max_norm /
// (norm + 1e-6) in float32, and x *= coef where coef < 1 (torch multiplies by a coef of 1 too, which changes
// nothing). All of it queued on x's device: returns f32 [2] = (norm, coef) there, to be read when needed.
Tensor clip_by_total_norm_(const Tensor& x, const Tensor& segments, float max_norm);

// x *= s in place; x = 0 in place; acc += s * x.
void scale_(const Tensor& x, float s);
void zero_(const Tensor& x);
void add_scaled_(const Tensor& acc, const Tensor& x, float s);
// Whether every element of x (f32) is finite (waits for the device).
bool all_finite(const Tensor& x);

// One AdamW step of p, m, v [n] with gradients g [n].
void adamw_update_(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const cpu::AdamWStep& s);

// One AdamW8bit step over every chunk of `chunks` (I64 [E, 3] of offset, count, block on p's device), with the
// moments of `state` (m_codes, v_codes: U8 [n]; m_absmax, v_absmax: f32 [blocks]; m32, v32: f32 [n]) and
// `maps`, f32 [512] on p's device: dynamic_quant_map(true), then dynamic_quant_map(false). Chunks are
// independent, so they run in any order.
struct Adam8bitTensors {
    Tensor m_codes, v_codes, m_absmax, v_absmax, m32, v32;
};
void adam8bit_update_(const Tensor& p, const Tensor& g, const Adam8bitTensors& state, const Tensor& chunks,
                      const Tensor& maps, int64_t block_size, const cpu::Adam8bitStep& s);

}  // namespace sd3::ops
