// 2-D convolution on the CPU: im2col per image, then one GEMM (weight [Cout, Cin*kh*kw] times columns).
#include <cstddef>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace sd3::cpu {

void conv2d_fwd(float* y, const float* x, const float* w, const float* b, int64_t batch, int64_t cin, int64_t h,
                int64_t wd, int64_t cout, int64_t kh, int64_t kw, int64_t stride, int64_t pad) {
    const int64_t ho = (h + 2 * pad - kh) / stride + 1;
    const int64_t wo = (wd + 2 * pad - kw) / stride + 1;
    const int64_t patch = cin * kh * kw;
    const int64_t out_pixels = ho * wo;
    std::vector<float> cols(static_cast<size_t>(patch * out_pixels));
    for (int64_t bi = 0; bi < batch; ++bi) {
        const float* xb = x + bi * cin * h * wd;
#pragma omp parallel for
        for (int64_t p = 0; p < patch; ++p) {
            const int64_t c = p / (kh * kw), ky = (p / kw) % kh, kx = p % kw;
            float* row = cols.data() + p * out_pixels;
            for (int64_t oy = 0; oy < ho; ++oy) {
                const int64_t iy = oy * stride - pad + ky;
                for (int64_t ox = 0; ox < wo; ++ox) {
                    const int64_t ix = ox * stride - pad + kx;
                    row[oy * wo + ox] = (iy >= 0 && iy < h && ix >= 0 && ix < wd) ? xb[(c * h + iy) * wd + ix] : 0.0f;
                }
            }
        }
        float* yb = y + bi * cout * out_pixels;
        if (b != nullptr) {
            for (int64_t o = 0; o < cout; ++o)
                for (int64_t i = 0; i < out_pixels; ++i) yb[o * out_pixels + i] = b[o];
        }
        gemm(false, false, cout, out_pixels, patch, 1.0f, w, patch, cols.data(), out_pixels, b != nullptr ? 1.0f : 0.0f,
             yb, out_pixels);
    }
}

}  // namespace sd3::cpu
