// CUDA launchers for the model-level ops beyond cuda_ops.h: the MMDiT ops of ops/cpu/mmdit_ops.h, the VAE ops of
// ops/cpu/vae_ops.h, and attention at head dims the flash kernels do not build
// (chunked: GEMM, f32 softmax, GEMM). Same contract as cuda_ops.h: raw device pointers, sizes, an Exec; they never
// allocate. Storage dtype `dt` for every tensor operand unless a comment says otherwise, math in f32. Token
// reductions (dshift, dscale, dgate) are ordered two-stage sums (no atomics: bit-identical reruns) that accumulate
// (+=) in `grad_dt` (F32 master gradients, or dt). No CUDA header here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/cpu/mmdit_ops.h"
#include "ops/cuda/cuda_ops.h"

namespace sd3::cuda {

using cpu::PatchLayout;

// --- adaLN modulation and gated residuals (x, y, dy, a: [B, T, D]; shift/scale/gate rows `stride` apart) -------
void modulate_fwd(const Exec& ex, void* y, const void* x, const void* shift, const void* scale, int64_t batch,
                  int64_t tokens, int64_t dim, int64_t stride, DType dt);
// y = modulate(layer_norm(x) without affine, shift, scale) in one pass (the LayerNorm rounded to dt before the
// modulation, as the two ops store it); xhat (the LayerNorm's output), mean and rstd are stored where not null.
// A vector kernel: layer_norm_modulate_fits says whether dim, stride and the addresses allow 16-byte vectors
// (y and xhat must be aligned as x is; where it does not fit, run the two ops).
bool layer_norm_modulate_fits(const void* x, const void* shift, const void* scale, int64_t dim, int64_t stride,
                              DType dt);
void layer_norm_modulate_fwd(const Exec& ex, void* y, const void* x, const void* shift, const void* scale,
                             int64_t batch, int64_t tokens, int64_t dim, int64_t stride, float eps, DType dt,
                             void* xhat = nullptr, float* mean = nullptr, float* rstd = nullptr);
size_t modulate_bwd_workspace(int64_t batch, int64_t tokens, int64_t dim);
// dx = dy * (1 + scale) (overwrites; skipped when null); dshift[b] += Σ_t dy, dscale[b] += Σ_t dy * x (each
// skipped when null; both in grad_dt, rows `stride` apart like scale).
void modulate_bwd(const Exec& ex, void* dx, void* dshift, void* dscale, const void* dy, const void* x,
                  const void* scale, int64_t batch, int64_t tokens, int64_t dim, int64_t stride, DType dt,
                  DType grad_dt);
// In place: x += gate * a.
void gated_add_fwd(const Exec& ex, void* x, const void* gate, const void* a, int64_t batch, int64_t tokens,
                   int64_t dim, int64_t stride, DType dt);
size_t gated_add_bwd_workspace(int64_t batch, int64_t tokens, int64_t dim);
// da = dx * gate (overwrites; skipped when null); dgate[b] += Σ_t dx * a in grad_dt (skipped when null).
void gated_add_bwd(const Exec& ex, void* da, void* dgate, const void* dx, const void* a, const void* gate,
                   int64_t batch, int64_t tokens, int64_t dim, int64_t stride, DType dt, DType grad_dt);

// --- layouts and embeddings ----------------------------------------------------------------------------------
// tokens [B, (H/p)(W/p), C p p] <-> img [B, C, H, W], the permutations of cpu::patchify / cpu::unpatchify.
void patchify(const Exec& ex, void* tokens, const void* img, int64_t batch, int64_t channels, int64_t h, int64_t w,
              int64_t p, PatchLayout layout, DType dt);
void unpatchify(const Exec& ex, void* img, const void* tokens, int64_t batch, int64_t channels, int64_t h, int64_t w,
                int64_t p, PatchLayout layout, DType dt);
// t [B] float32 -> out [B, dim] in out_dt; the frequencies, products and sin/cos follow cpu::timestep_embedding's
// float32 steps, each transcendental evaluated in double and rounded once (so it matches glibc's to the ulp).
void timestep_embedding(const Exec& ex, void* out, const float* t, int64_t batch, int64_t dim, bool flip_sin_to_cos,
                        float downscale_freq_shift, float max_period, DType out_dt);

// --- element-wise ------------------------------------------------------------------------------------------------
// y[i] += a * x[i].
void axpy(const Exec& ex, void* y, const void* x, float a, int64_t n, DType dt);
// y[b, :] += x[:] for b < batch.
void add_rows(const Exec& ex, void* y, const void* x, int64_t batch, int64_t n, DType dt);
// Inverted dropout with cpu::dropout_uniform's counter-based hash: the same elements as the CPU are dropped.
void dropout_fwd(const Exec& ex, void* y, const void* x, int64_t n, float p, uint64_t seed, DType dt);
void dropout_bwd(const Exec& ex, void* dx, const void* dy, int64_t n, float p, uint64_t seed, DType dt);

// --- VAE -------------------------------------------------------------------------------------------------------
// x [planes, h, w] -> y [planes, 2h, 2w].
void upsample_nearest2x(const Exec& ex, void* y, const void* x, int64_t planes, int64_t h, int64_t w, DType dt);
// x [planes, h, w] -> y [planes, h + bottom, w + right], zeros appended.
void pad_right_bottom(const Exec& ex, void* y, const void* x, int64_t planes, int64_t h, int64_t w, int64_t right,
                      int64_t bottom, DType dt);

// --- attention at any head dim (dense [B, T, H*D] rows, like cpu::attention_fwd) --------------------------------
// Per (batch, head) and chunk of queries: S = scale·Q·Kᵀ (+ bias, causal mask) into f32 scratch, a row softmax in
// f32 that writes lse and P (in dt), then O = P·V. The chunk is as many query rows as `budget` bytes of scratch
// hold (at least one), so the [Tq, Tk] matrix is never built whole for long sequences.
size_t attention_chunked_workspace(const AttentionShape& s, DType dt, size_t budget);
void attention_chunked_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                           const void* bias, const AttentionShape& s, DType dt);

}  // namespace sd3::cuda
