// PIL-exact antialiased bilinear resize (libImaging/Resample.c semantics) and the crops/flip/normalisation of
// torchvision, as the reference's DreamBooth dataset applies them.
#include "train/image_transforms.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace sd3::train {

void resized_size(int width, int height, int size, int* out_w, int* out_h) {
    const bool wide = width >= height;
    const int short_side = wide ? height : width, long_side = wide ? width : height;
    const int new_long = static_cast<int>(static_cast<double>(size) * long_side / short_side);
    *out_w = wide ? new_long : size;
    *out_h = wide ? size : new_long;
}

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
    if (x < 0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs of Resample.c for one axis: per output pixel the first input index, the count and the
// fixed-point weights.
struct AxisCoeffs {
    std::vector<int> bounds;  // [out, 2]: xmin, count
    std::vector<int> k;       // [out, ksize]
    int ksize = 0;
};

AxisCoeffs precompute(int in_size, int out_size) {
    const double scale = static_cast<double>(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = 1.0 * filterscale;  // bilinear support 1
    AxisCoeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(2 * out_size);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> kk(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            const double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            kk[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; ++x)
            if (ww != 0.0) kk[x] /= ww;
        for (int x = xmax; x < c.ksize; ++x) kk[x] = 0;
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
        // normalize_coeffs_8bpc: round half away from zero into 22 fractional bits
        for (int x = 0; x < c.ksize; ++x) {
            const double v = kk[x] * (1 << kPrecisionBits);
            c.k[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int>(v < 0 ? std::trunc(-0.5 + v) : std::trunc(0.5 + v));
        }
    }
    return c;
}

uint8_t clip8(int64_t v) {
    v >>= kPrecisionBits;
    return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

RgbImage resize_bilinear(const RgbImage& in, int out_w, int out_h) {
    SD3_ASSERT(out_w > 0 && out_h > 0 && in.width > 0 && in.height > 0);
    if (out_w == in.width && out_h == in.height) return in;
    // PIL's ImagingResampleInner: rows needed by the vertical pass, horizontal pass over them, then vertical.
    const AxisCoeffs cy = precompute(in.height, out_h);
    const int ybox_first = cy.bounds[0];
    const int ybox_last = cy.bounds[2 * (out_h - 1)] + cy.bounds[2 * (out_h - 1) + 1];
    const bool need_h = out_w != in.width, need_v = out_h != in.height;
    RgbImage tmp;
    int row_offset = 0;
    if (need_h) {
        const AxisCoeffs cx = precompute(in.width, out_w);
        const int rows = need_v ? ybox_last - ybox_first : in.height;
        row_offset = need_v ? ybox_first : 0;
        tmp = RgbImage::blank(out_w, rows);
        for (int y = 0; y < rows; ++y) {
            const uint8_t* src = in.pixels.data() + static_cast<size_t>(y + row_offset) * in.width * 3;
            uint8_t* dst = tmp.pixels.data() + static_cast<size_t>(y) * out_w * 3;
            for (int xx = 0; xx < out_w; ++xx) {
                const int xmin = cx.bounds[2 * xx], xmax = cx.bounds[2 * xx + 1];
                const int* k = cx.k.data() + static_cast<size_t>(xx) * cx.ksize;
                for (int ch = 0; ch < 3; ++ch) {
                    int64_t ss = int64_t{1} << (kPrecisionBits - 1);
                    for (int x = 0; x < xmax; ++x) ss += static_cast<int64_t>(src[(x + xmin) * 3 + ch]) * k[x];
                    dst[xx * 3 + ch] = clip8(ss);
                }
            }
        }
    } else {
        tmp = in;
    }
    if (!need_v) return tmp;
    RgbImage out = RgbImage::blank(tmp.width, out_h);
    for (int yy = 0; yy < out_h; ++yy) {
        const int ymin = cy.bounds[2 * yy] - row_offset, ymax = cy.bounds[2 * yy + 1];
        const int* k = cy.k.data() + static_cast<size_t>(yy) * cy.ksize;
        uint8_t* dst = out.pixels.data() + static_cast<size_t>(yy) * tmp.width * 3;
        for (int xx = 0; xx < tmp.width; ++xx)
            for (int ch = 0; ch < 3; ++ch) {
                int64_t ss = int64_t{1} << (kPrecisionBits - 1);
                for (int y = 0; y < ymax; ++y)
                    ss += static_cast<int64_t>(tmp.pixels[(static_cast<size_t>(y + ymin) * tmp.width + xx) * 3 + ch]) * k[y];
                dst[xx * 3 + ch] = clip8(ss);
            }
    }
    return out;
}

RgbImage crop(const RgbImage& in, int top, int left, int size) {
    SD3_ASSERT(top >= 0 && left >= 0 && top + size <= in.height && left + size <= in.width, "crop outside image");
    RgbImage out = RgbImage::blank(size, size);
    for (int y = 0; y < size; ++y)
        std::copy_n(in.pixels.data() + (static_cast<size_t>(y + top) * in.width + left) * 3, size * 3,
                    out.pixels.data() + static_cast<size_t>(y) * size * 3);
    return out;
}

void center_crop_offsets(int width, int height, int size, int* top, int* left) {
    *top = static_cast<int>(std::nearbyint((height - size) / 2.0));  // Python round(): half to even
    *left = static_cast<int>(std::nearbyint((width - size) / 2.0));
}

RgbImage flip_horizontal(const RgbImage& in) {
    RgbImage out = RgbImage::blank(in.width, in.height);
    for (int y = 0; y < in.height; ++y)
        for (int x = 0; x < in.width; ++x)
            for (int c = 0; c < 3; ++c)
                out.pixels[(static_cast<size_t>(y) * in.width + x) * 3 + c] =
                    in.pixels[(static_cast<size_t>(y) * in.width + (in.width - 1 - x)) * 3 + c];
    return out;
}

Tensor to_normalized_tensor(const RgbImage& in) {
    Tensor t = Tensor::empty({3, in.height, in.width}, DType::F32);  // [3, H, W]
    float* d = t.data<float>();
    const int64_t hw = static_cast<int64_t>(in.height) * in.width;
    for (int64_t i = 0; i < hw; ++i)
        for (int c = 0; c < 3; ++c) {
            const float x = static_cast<float>(in.pixels[i * 3 + c]) / 255.0f;
            d[c * hw + i] = (x - 0.5f) / 0.5f;
        }
    return t;
}

}  // namespace sd3::train
