// CPU specification of the element-wise and layout operations the MMDiT needs beyond cpu_ops.h: adaLN
// modulation, gated residual adds, patchify/unpatchify, the timestep sinusoid, the cropped positional embedding,
// in-place adds and a counter-based dropout (its mask is a pure function of (seed, index), so a recomputed
// forward under activation checkpointing draws the same mask). Same conventions as cpu_ops.h: raw float32
// pointers, parameter-like gradients (dshift, dscale, dgate) accumulate (+=), activation gradients overwrite (=).
#pragma once

#include <cstdint>

namespace sd3::cpu {

// y[b,t,:] = x[b,t,:] * (1 + scale[b,:]) + shift[b,:]   (diffusers AdaLayerNorm*: `x * (1 + scale) + shift`).
// shift and scale have one row per batch element, rows `mod_stride` floats apart (chunks of the adaLN output).
void modulate_fwd(float* y, const float* x, const float* shift, const float* scale, int64_t batch, int64_t tokens,
                  int64_t dim, int64_t mod_stride);
// dx = dy * (1 + scale) (overwrites; skipped when null); dshift[b] += Σ_t dy; dscale[b] += Σ_t dy * x (skipped when
// null). dshift/dscale rows are `mod_stride` apart.
void modulate_bwd(float* dx, float* dshift, float* dscale, const float* dy, const float* x, const float* scale,
                  int64_t batch, int64_t tokens, int64_t dim, int64_t mod_stride);

// Gated residual add, in place: x[b,t,:] += gate[b,:] * a[b,t,:] (gate rows `gate_stride` apart).
void gated_add_fwd(float* x, const float* gate, const float* a, int64_t batch, int64_t tokens, int64_t dim,
                   int64_t gate_stride);
// da = dx * gate (overwrites; skipped when null); dgate[b] += Σ_t dx * a (skipped when null).
void gated_add_bwd(float* da, float* dgate, const float* dx, const float* a, const float* gate, int64_t batch,
                   int64_t tokens, int64_t dim, int64_t gate_stride);

// Order of the p*p*C values of one patch token.
enum class PatchLayout {
    CHANNEL_FIRST,  // (c, py, px): Conv2d weight order, the patch embedding (diffusers PatchEmbed)
    CHANNEL_LAST,   // (py, px, c): the output head's unpatchify ("nhwpqc->nchpwq", transformer_sd3.py)
};
// tokens [B, (H/p)*(W/p), C*p*p] (token n = i*(W/p) + j) from img [B, C, H, W]; H and W multiples of p.
void patchify(float* tokens, const float* img, int64_t batch, int64_t channels, int64_t h, int64_t w, int64_t p,
              PatchLayout layout);
// The inverse permutation (also the backward of patchify, and patchify is the backward of unpatchify).
void unpatchify(float* img, const float* tokens, int64_t batch, int64_t channels, int64_t h, int64_t w, int64_t p,
                PatchLayout layout);

// diffusers get_timestep_embedding (embeddings.py), all in float32: f_k = exp(-ln(max_period) * k / (half - shift)),
// a = t * f, out = [sin a, cos a] or, with flip_sin_to_cos, [cos a, sin a]. out [B, dim], dim even.
void timestep_embedding(float* out, const float* t, int64_t batch, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float max_period);

// y[i] += a * x[i].
void axpy(float* y, const float* x, float a, int64_t n);
// y[b, :] += x[:] for b in [0, batch) (broadcast over rows).
void add_rows(float* y, const float* x, int64_t batch, int64_t n);

// Inverted dropout with a counter-based mask: keep element i when u(seed, i) >= p, y = keep ? x / (1 - p) : 0.
void dropout_fwd(float* y, const float* x, int64_t n, float p, uint64_t seed);
// dx = keep ? dy / (1 - p) : 0 with the same mask (overwrites).
void dropout_bwd(float* dx, const float* dy, int64_t n, float p, uint64_t seed);
// The uniform [0, 1) number behind the mask, exposed for tests.
float dropout_uniform(uint64_t seed, uint64_t index);

}  // namespace sd3::cpu
