// The reference's image preprocessing for training (reference-training.md 3.3; torchvision on PIL images):
// Resize of the shorter side with PIL's antialiased bilinear filter, CenterCrop / RandomCrop, horizontal flip,
// ToTensor + Normalize([0.5], [0.5]) into [-1, 1]. Works on 8-bit RGB in memory (decoding is io/image.h's).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sd3::train {

// 8-bit RGB, rows top to bottom, pixels interleaved (the layout of io/image.h's Image).
struct RgbImage {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> pixels;  // [height, width, 3]
    static RgbImage blank(int w, int h) { return {w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)}; }
};

// torchvision Resize(size) target for an int size: the shorter side becomes `size`, the longer
// int(size * long / short) (Python float arithmetic, truncated).
void resized_size(int width, int height, int size, int* out_w, int* out_h);

// PIL Image.resize((w, h), BILINEAR): separable resampling, horizontal pass then vertical, with the filter's
// support widened by the downscale factor (antialiasing), 8-bit fixed-point coefficients (22 fractional bits)
// and an 8-bit intermediate, as libImaging/Resample.c. A same-size resize is a copy, as in PIL. Pillow <= 12 (the
// reference's era) always runs the horizontal pass first; Pillow 13 sometimes starts with the vertical one, which
// changes the rounding of the intermediate by a level or two for those shapes.
RgbImage resize_bilinear(const RgbImage& in, int out_w, int out_h);

// Crop of `size` x `size` at (top, left); the window must lie inside the image.
RgbImage crop(const RgbImage& in, int top, int left, int size);
// torchvision CenterCrop offsets: int(round((h - s) / 2)) with Python's round-half-to-even.
void center_crop_offsets(int width, int height, int size, int* top, int* left);
RgbImage flip_horizontal(const RgbImage& in);

// ToTensor then Normalize([0.5],[0.5]): [3, H, W] float32, (x/255 - 0.5)/0.5.
Tensor to_normalized_tensor(const RgbImage& in);

}  // namespace sd3::train
