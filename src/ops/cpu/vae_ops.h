// Operations the VAE needs beyond cpu_ops.h: nearest-neighbour 2x upsampling (diffusers Upsample2D's
// F.interpolate(scale_factor=2, mode="nearest")), the right/bottom zero padding of Downsample2D, and a
// convolution evaluated in horizontal bands so that a 1024x1024 decode never builds a multi-gigabyte im2col
// buffer. Raw CPU loops in sd3::cpu, Tensor-level versions (contiguous results) in sd3::ops: f32 on the CPU;
// CUDA tensors (f32, bf16, f16) go to ops/cuda/tensor_ops_model.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace sd3::cpu {

// x [planes, h, w] -> y [planes, 2h, 2w], every pixel repeated 2x2.
void upsample_nearest2x_fwd(float* y, const float* x, int64_t planes, int64_t h, int64_t w);
// x [planes, h, w] -> y [planes, h + bottom, w + right] with zeros in the new row(s)/column(s).
void pad_right_bottom_fwd(float* y, const float* x, int64_t planes, int64_t h, int64_t w, int64_t right,
                          int64_t bottom);

}  // namespace sd3::cpu

namespace sd3::ops {

// x [B, C, H, W] -> [B, C, 2H, 2W]
Tensor upsample_nearest2x(const Tensor& x);
// x [B, C, H, W] -> [B, C, H + bottom, W + right], zeros appended (F.pad(x, (0, right, 0, bottom))).
Tensor pad_right_bottom(const Tensor& x, int64_t right, int64_t bottom);
// ops::conv2d computed over bands of output rows so that its im2col buffer stays below `max_buffer_bytes`;
// equal to ops::conv2d (each output element is the same dot product).
Tensor conv2d_banded(const Tensor& x, const Tensor& w, const Tensor& b, int64_t stride, int64_t pad,
                     size_t max_buffer_bytes = size_t{256} << 20);

}  // namespace sd3::ops
