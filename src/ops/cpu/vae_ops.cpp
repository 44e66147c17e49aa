// Nearest 2x upsampling, right/bottom padding and banded convolution (ops/cpu/vae_ops.h).
#include "ops/cpu/vae_ops.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "ops/dispatch.h"
#include "ops/ops.h"

namespace sd3::cpu {

void upsample_nearest2x_fwd(float* y, const float* x, int64_t planes, int64_t h, int64_t w) {
#pragma omp parallel for
    for (int64_t p = 0; p < planes; ++p) {
        const float* xp = x + p * h * w;
        float* yp = y + p * 4 * h * w;
        for (int64_t r = 0; r < h; ++r) {
            float* row = yp + 2 * r * 2 * w;
            for (int64_t c = 0; c < w; ++c) row[2 * c] = row[2 * c + 1] = xp[r * w + c];
            std::memcpy(row + 2 * w, row, sizeof(float) * 2 * w);
        }
    }
}

void pad_right_bottom_fwd(float* y, const float* x, int64_t planes, int64_t h, int64_t w, int64_t right,
                          int64_t bottom) {
    const int64_t ho = h + bottom, wo = w + right;
#pragma omp parallel for
    for (int64_t p = 0; p < planes; ++p) {
        float* yp = y + p * ho * wo;
        for (int64_t r = 0; r < h; ++r) {
            std::memcpy(yp + r * wo, x + (p * h + r) * w, sizeof(float) * w);
            std::fill(yp + r * wo + w, yp + r * wo + wo, 0.0f);
        }
        std::fill(yp + h * wo, yp + ho * wo, 0.0f);
    }
}

}  // namespace sd3::cpu

namespace sd3::ops {

namespace {
void require_4d(const Tensor& x, const char* what) {
    SD3_ASSERT(x.defined() && x.dim() == 4, what, " wants a [B, C, H, W] tensor, got ",
               x.defined() ? x.describe() : "undefined");
}
void require_4d_f32(const Tensor& x, const char* what) {
    require_4d(x, what);
    SD3_ASSERT(x.dtype() == DType::F32 && x.device().is_cpu(), what,
               ": the CPU backend takes f32 (CUDA tensors take f32, bf16 or f16), got ", x.describe());
}
}  // namespace

Tensor upsample_nearest2x(const Tensor& x_in) {
    require_4d(x_in, "upsample_nearest2x");
    SD3_ON_CUDA(x_in, upsample_nearest2x(x_in));
    require_4d_f32(x_in, "upsample_nearest2x");
    const Tensor x = x_in.contiguous();
    Tensor y = Tensor::empty({x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)}, DType::F32);
    cpu::upsample_nearest2x_fwd(y.data<float>(), x.data<float>(), x.size(0) * x.size(1), x.size(2), x.size(3));
    return y;
}

Tensor pad_right_bottom(const Tensor& x_in, int64_t right, int64_t bottom) {
    require_4d(x_in, "pad_right_bottom");
    SD3_ASSERT(right >= 0 && bottom >= 0, "negative padding");
    SD3_ON_CUDA(x_in, pad_right_bottom(x_in, right, bottom));
    require_4d_f32(x_in, "pad_right_bottom");
    const Tensor x = x_in.contiguous();
    Tensor y = Tensor::empty({x.size(0), x.size(1), x.size(2) + bottom, x.size(3) + right}, DType::F32);
    cpu::pad_right_bottom_fwd(y.data<float>(), x.data<float>(), x.size(0) * x.size(1), x.size(2), x.size(3), right,
                              bottom);
    return y;
}

Tensor conv2d_banded(const Tensor& x_in, const Tensor& w, const Tensor& b, int64_t stride, int64_t pad,
                     size_t max_buffer_bytes) {
    require_4d(x_in, "conv2d_banded");
    // CUDA's conv2d already bounds its im2col buffer (pixel chunks of a capped scratch): no bands needed there.
    if (x_in.device().type == DeviceType::CUDA) return conv2d(x_in, w, b, stride, pad);
    require_4d_f32(x_in, "conv2d_banded");
    const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
    const int64_t kh = w.size(2), kw = w.size(3);
    const int64_t ho = (H + 2 * pad - kh) / stride + 1, wo = (W + 2 * pad - kw) / stride + 1;
    const size_t row_bytes = sizeof(float) * static_cast<size_t>(C * kh * kw * wo);  // im2col per output row
    const int64_t rows_per_band = std::max<int64_t>(1, static_cast<int64_t>(max_buffer_bytes / row_bytes));
    if (rows_per_band >= ho) return conv2d(x_in, w, b, stride, pad);
    // Each band: the input rows its outputs read (with the zero padding made explicit at the top and bottom
    // edges), convolved without vertical padding; the horizontal padding stays with conv2d.
    const Tensor x = x_in.contiguous();
    Tensor y = Tensor::empty({B, w.size(0), ho, wo}, DType::F32);
    for (int64_t r0 = 0; r0 < ho; r0 += rows_per_band) {
        const int64_t r1 = std::min(ho, r0 + rows_per_band);
        const int64_t in0 = r0 * stride - pad, in1 = (r1 - 1) * stride - pad + kh;  // [in0, in1) in padded terms
        Tensor band = Tensor::zeros({B, C, in1 - in0, W + 2 * pad});
        const int64_t src0 = std::max<int64_t>(0, in0), src1 = std::min(H, in1);
        if (src1 > src0)
            band.slice(2, src0 - in0, src1 - in0).slice(3, pad, pad + W).copy_from(x.slice(2, src0, src1));
        y.slice(2, r0, r1).copy_from(conv2d(band, w, b, stride, 0));
    }
    return y;
}

}  // namespace sd3::ops
