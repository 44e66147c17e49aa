// Tensor-level CUDA side of ops/train_ops.h: results allocated on the device, then the launchers of train_ops.h
// on the device's context. Shapes, dtypes and devices were checked by ops/train_ops.cpp. No CUDA header here.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "ops/cpu/train_ops.h"

namespace sd3::ops {
struct Adam8bitTensors;
}

namespace sd3::cuda::tensor_ops {

// `samples`: ops::loss_sample_table's bytes on pred's device.
Tensor flow_matching_loss(const Tensor& pred, const Tensor& noisy, const Tensor& x0, const Tensor& noise,
                          const Tensor& samples, bool precondition, Tensor* grad);
Tensor clip_by_total_norm_(const Tensor& x, const Tensor& segments, float max_norm);
void scale_(const Tensor& x, float s);
void zero_(const Tensor& x);
void add_scaled_(const Tensor& acc, const Tensor& x, float s);
bool all_finite(const Tensor& x);
void adamw_update_(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const cpu::AdamWStep& s);
void adam8bit_update_(const Tensor& p, const Tensor& g, const ops::Adam8bitTensors& state, const Tensor& chunks,
                      const Tensor& maps, int64_t block_size, const cpu::Adam8bitStep& s);

}  // namespace sd3::cuda::tensor_ops
