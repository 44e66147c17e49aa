// CPU loops for ops/cpu/mmdit_ops.h. Batch-row reductions (dshift, dscale, dgate) accumulate in double so the
// specification is tighter than the float32 kernels checked against it.
#include "ops/cpu/mmdit_ops.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace sd3::cpu {

namespace {
// Below this many elements a loop runs on the calling thread: waking workers costs more than it saves.
constexpr int64_t kParallelMin = 1 << 16;
}  // namespace

void modulate_fwd(float* y, const float* x, const float* shift, const float* scale, int64_t batch, int64_t tokens,
                  int64_t dim, int64_t mod_stride) {
#pragma omp parallel for collapse(2) if (batch * tokens * dim >= kParallelMin)
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t t = 0; t < tokens; ++t) {
            const float* sh = shift + b * mod_stride;
            const float* sc = scale + b * mod_stride;
            const float* xr = x + (b * tokens + t) * dim;
            float* yr = y + (b * tokens + t) * dim;
            for (int64_t d = 0; d < dim; ++d) yr[d] = xr[d] * (1.0f + sc[d]) + sh[d];
        }
    }
}

void modulate_bwd(float* dx, float* dshift, float* dscale, const float* dy, const float* x, const float* scale,
                  int64_t batch, int64_t tokens, int64_t dim, int64_t mod_stride) {
#pragma omp parallel for if (batch * tokens * dim >= kParallelMin)
    for (int64_t b = 0; b < batch; ++b) {
        const float* sc = scale + b * mod_stride;
        std::vector<double> ssh(static_cast<size_t>(dim), 0.0), ssc(static_cast<size_t>(dim), 0.0);
        for (int64_t t = 0; t < tokens; ++t) {
            const int64_t row = (b * tokens + t) * dim;
            for (int64_t d = 0; d < dim; ++d) {
                const float g = dy[row + d];
                if (dx != nullptr) dx[row + d] = g * (1.0f + sc[d]);
                ssh[d] += g;
                ssc[d] += static_cast<double>(g) * x[row + d];
            }
        }
        for (int64_t d = 0; d < dim; ++d) {
            if (dshift != nullptr) dshift[b * mod_stride + d] += static_cast<float>(ssh[d]);
            if (dscale != nullptr) dscale[b * mod_stride + d] += static_cast<float>(ssc[d]);
        }
    }
}

void gated_add_fwd(float* x, const float* gate, const float* a, int64_t batch, int64_t tokens, int64_t dim,
                   int64_t gate_stride) {
#pragma omp parallel for collapse(2) if (batch * tokens * dim >= kParallelMin)
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t t = 0; t < tokens; ++t) {
            const float* g = gate + b * gate_stride;
            const int64_t row = (b * tokens + t) * dim;
            for (int64_t d = 0; d < dim; ++d) x[row + d] += g[d] * a[row + d];
        }
    }
}

void gated_add_bwd(float* da, float* dgate, const float* dx, const float* a, const float* gate, int64_t batch,
                   int64_t tokens, int64_t dim, int64_t gate_stride) {
#pragma omp parallel for if (batch * tokens * dim >= kParallelMin)
    for (int64_t b = 0; b < batch; ++b) {
        const float* g = gate + b * gate_stride;
        std::vector<double> sg(static_cast<size_t>(dim), 0.0);
        for (int64_t t = 0; t < tokens; ++t) {
            const int64_t row = (b * tokens + t) * dim;
            for (int64_t d = 0; d < dim; ++d) {
                if (da != nullptr) da[row + d] = dx[row + d] * g[d];
                sg[d] += static_cast<double>(dx[row + d]) * a[row + d];
            }
        }
        if (dgate != nullptr)
            for (int64_t d = 0; d < dim; ++d) dgate[b * gate_stride + d] += static_cast<float>(sg[d]);
    }
}

namespace {
// Calls f(token_index, image_index) for every element, pairing token and image offsets.
template <typename F>
void for_each_patch_element(int64_t batch, int64_t channels, int64_t h, int64_t w, int64_t p, PatchLayout layout,
                            F&& f) {
    const int64_t hp = h / p, wp = w / p, n = hp * wp, width = channels * p * p;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t i = 0; i < hp; ++i)
            for (int64_t j = 0; j < wp; ++j)
                for (int64_t c = 0; c < channels; ++c)
                    for (int64_t py = 0; py < p; ++py)
                        for (int64_t px = 0; px < p; ++px) {
                            const int64_t col = layout == PatchLayout::CHANNEL_FIRST ? (c * p + py) * p + px
                                                                                      : (py * p + px) * channels + c;
                            const int64_t tok = (b * n + i * wp + j) * width + col;
                            const int64_t img = ((b * channels + c) * h + i * p + py) * w + j * p + px;
                            f(tok, img);
                        }
}
}  // namespace

void patchify(float* tokens, const float* img, int64_t batch, int64_t channels, int64_t h, int64_t w, int64_t p,
              PatchLayout layout) {
    for_each_patch_element(batch, channels, h, w, p, layout, [&](int64_t tok, int64_t im) { tokens[tok] = img[im]; });
}

void unpatchify(float* img, const float* tokens, int64_t batch, int64_t channels, int64_t h, int64_t w, int64_t p,
                PatchLayout layout) {
    for_each_patch_element(batch, channels, h, w, p, layout, [&](int64_t tok, int64_t im) { img[im] = tokens[tok]; });
}

void timestep_embedding(float* out, const float* t, int64_t batch, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float max_period) {
    const int64_t half = dim / 2;
    // PyTorch evaluates `-math.log(max_period) * arange(half, f32)` in float32 (the Python scalar is cast to the
    // tensor's dtype), then divides by (half - shift) and exponentiates, all in float32.
    const float neg_log = static_cast<float>(-std::log(static_cast<double>(max_period)));
    std::vector<float> freq(static_cast<size_t>(half));
    for (int64_t k = 0; k < half; ++k)
        freq[k] = std::exp((neg_log * static_cast<float>(k)) / (static_cast<float>(half) - downscale_freq_shift));
    for (int64_t b = 0; b < batch; ++b) {
        float* o = out + b * dim;
        for (int64_t k = 0; k < half; ++k) {
            const float a = t[b] * freq[k];
            const float s = std::sin(a), c = std::cos(a);
            o[k] = flip_sin_to_cos ? c : s;
            o[half + k] = flip_sin_to_cos ? s : c;
        }
    }
}

void axpy(float* y, const float* x, float a, int64_t n) {
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void add_rows(float* y, const float* x, int64_t batch, int64_t n) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t i = 0; i < n; ++i) y[b * n + i] += x[i];
}

float dropout_uniform(uint64_t seed, uint64_t index) {
    // splitmix64 finalizer of (seed, index): a stateless hash, so any element's mask can be drawn independently.
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // 24 random bits -> [0, 1)
}

void dropout_fwd(float* y, const float* x, int64_t n, float p, uint64_t seed) {
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] = dropout_uniform(seed, static_cast<uint64_t>(i)) >= p ? x[i] * keep_scale : 0.0f;
}

void dropout_bwd(float* dx, const float* dy, int64_t n, float p, uint64_t seed) { dropout_fwd(dx, dy, n, p, seed); }

}  // namespace sd3::cpu
