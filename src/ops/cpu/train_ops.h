// The arithmetic of a training update, as plain CPU loops: the rectified-flow loss of one sample, the sum of
// squares behind the gradient norm, torch's AdamW and bitsandbytes' 8-bit AdamW. This is the specification that
// ops/cuda/train_ops.cu reproduces bit for bit: every float operation is written out in the reference's order,
// and neither side fuses a multiply with an add (this code builds without -mfma; the kernels spell each
// operation with a round-to-nearest intrinsic). The per-step scalars are computed once on the host, into the
// *Step structs, for both. The derivations are in docs/optimizers.md and docs/training.md.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

#include "ops/cpu/host_device.h"

namespace sd3::cpu {

// --- the flow-matching loss (train/flow_matching.h) ---------------------------------------------------------
// One sample: its sigma, its loss weighting, and d(total loss)/d(one squared error) = grad_scale * part weight
// * 2w / n (the chain rule through the means), in double as the gradient is formed.
struct LossSample {
    float sigma = 0;
    float weight = 1;
    double elem_scale = 0;
};
// Over the n elements of one sample: out = pred (target noise - x0), or with `precondition` out = pred * -sigma
// + noisy (target x0); grad[i] = d(loss)/d(pred[i]). Returns Σ w·(out - target)², each term a float widened to
// double and summed in element order.
double flow_matching_sample(float* grad, const float* pred, const float* noisy, const float* x0, const float* noise,
                            int64_t n, const LossSample& s, bool precondition);

// --- gradient norm ------------------------------------------------------------------------------------------
// Σ x² in double, in element order (one parameter tensor's share of torch's per-tensor norms).
double sum_squares(const float* x, int64_t n);
// stats = (norm, coef): the norm of the `count` per-tensor norms (their squares summed in double, in order) and
// clip_grad_norm_'s coef = max_norm / (norm + 1e-6) in float32 (applied where it is below 1).
SD3_HOST_DEVICE inline void total_norm_and_coef(float* stats, const float* norms, int64_t count, float max_norm) {
    double total_sq = 0;
    for (int64_t k = 0; k < count; ++k) {
        const double n = norms[k];
#if defined(__CUDA_ARCH__)
        total_sq = __dadd_rn(total_sq, __dmul_rn(n, n));  // not fused, as on the CPU
#else
        total_sq += n * n;
#endif
    }
    const float norm = static_cast<float>(sqrt(total_sq));
    stats[0] = norm;
    stats[1] = max_norm / (norm + 1e-6f);
}

// --- AdamW: torch.optim.AdamW, single-tensor path, decoupled weight decay ---------------------------------------
struct AdamWStep {
    bool weight_decay = false;  // whether p *= decay runs
    float decay = 1;            // 1 - lr*wd
    float one_minus_beta1 = 0;  // exp_avg.lerp_(grad, 1 - beta1)
    float beta2 = 0, one_minus_beta2 = 0;
    float neg_step_size = 0;    // -lr / (1 - beta1^t)
    float bias_correction2_sqrt = 1;
    float eps = 0;
};
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStep& s);

// --- AdamW8bit: bitsandbytes 0.43.1 -------------------------------------------------------------------------
// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 sorted float32 codes.
// signed: 127 negative + 0 + 127 positive + 1.0; unsigned: 0 + 254 positive + 1.0.
std::array<float, 256> dynamic_quant_map(bool is_signed);

// quantize_2D: the code whose value is nearest to x (x normally in [-1, 1]) by binary search over the sorted
// map `code` [256], ties (exactly at a midpoint) going to the lower code as bitsandbytes does.
SD3_HOST_DEVICE inline uint8_t quantize_nearest(const float* code, bool is_signed, float x) {
    // Pivots 127 ± 64 ± 32 ... ± 1, tracking the bracketing codes, then the nearer neighbour by the midpoint.
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float val = code[127];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (x > val) {
        const float mid = (upper + val) * 0.5f;
        return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
    }
    const float mid = (lower + val) * 0.5f;
    return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

// The scalars of one step t (1-based), float32 as the kernel computes them.
struct Adam8bitStep {
    float beta1 = 0, beta2 = 0;
    float one_minus_beta1 = 0, one_minus_beta2 = 0;
    float step_size = 0;   // -lr * corr2 / corr1, corr1 = 1 - beta1^t
    float eps_corr2 = 0;   // corr2 * eps, corr2 = sqrt(1 - beta2^t)
    bool weight_decay = false;
    float decay = 1;       // 1 - lr*wd
};
// One unit of the update: `count` elements from `offset` of the flat buffers. block >= 0: one 8-bit block
// (count <= the block size) whose absmax pair is m_absmax[block], v_absmax[block]; block < 0: float32 moments
// m32, v32 at the same offsets (tensors below min_8bit_size use bitsandbytes' 32-bit kernel).
struct Adam8bitChunk {
    int64_t offset = 0;
    int64_t count = 0;
    int64_t block = -1;
};
// The moments' storage. codes [n] uint8, absmax [blocks] float32, m32/v32 [n] float32 (used by 32-bit chunks).
struct Adam8bitState {
    uint8_t* m_codes;
    uint8_t* v_codes;
    float* m_absmax;
    float* v_absmax;
    float* m32;
    float* v32;
};
// One chunk's update, bitsandbytes' order: Adam step, then decoupled decay p *= 1 - lr*wd. Non-finite gradient
// elements zero their moments and leave p unchanged. `block_size` is the 8-bit block length (the padding lanes
// of a shorter last block take part in the absmax as the kernel's do).
void adam8bit_chunk(float* p, const float* g, const Adam8bitState& st, const Adam8bitChunk& c, int64_t block_size,
                    const Adam8bitStep& s);

}  // namespace sd3::cpu
