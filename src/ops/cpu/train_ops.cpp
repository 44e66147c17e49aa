// The training update's arithmetic (train_ops.h): the loss of train/flow_matching.cpp (reference-training.md 3.5),
// torch's AdamW (torch/optim/adam.py _single_tensor_adam) and bitsandbytes 0.43.1's AdamW8bit (create_dynamic_map
// in bitsandbytes/functional.py; quantize_2D and kOptimizerStatic8bit2StateBlockwise in csrc/kernels.cu, with exact
// division and powf where the kernel uses __fdividef/__powf).
#include "ops/cpu/train_ops.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

namespace sd3::cpu {

double flow_matching_sample(float* grad, const float* pred, const float* noisy, const float* x0, const float* noise,
                            int64_t n, const LossSample& s, bool precondition) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        float out, target;
        if (precondition) {
            out = pred[i] * (-s.sigma) + noisy[i];  // model_pred * (-sigmas) + noisy_model_input
            target = x0[i];
        } else {
            out = pred[i];
            target = noise[i] - x0[i];
        }
        const float d = out - target;
        sum += static_cast<double>(s.weight * (d * d));
        const double gd = s.elem_scale * d;
        grad[i] = static_cast<float>(precondition ? gd * -static_cast<double>(s.sigma) : gd);
    }
    return sum;
}

double sum_squares(const float* x, int64_t n) {
    double sq = 0;
    for (int64_t i = 0; i < n; ++i) sq += static_cast<double>(x[i]) * x[i];
    return sq;
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStep& s) {
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) {
        if (s.weight_decay) p[i] *= s.decay;
        m[i] = m[i] + s.one_minus_beta1 * (g[i] - m[i]);  // torch's lerp for weight < 0.5: self + w * (end - self)
        v[i] = v[i] * s.beta2;
        v[i] = v[i] + s.one_minus_beta2 * g[i] * g[i];  // addcmul: self + value * t1 * t2
        const float denom = std::sqrt(v[i]) / s.bias_correction2_sqrt + s.eps;
        p[i] = p[i] + s.neg_step_size * m[i] / denom;  // addcdiv: self + value * t1 / t2
    }
}

namespace {

// torch.linspace(start, end, steps) in float32 (RangeFactoriesKernel.cpp): the first half counts up from start, the
// second half down from end. torch's vectorized CPU kernel (AVX2/AVX512 builds) evaluates start + step*i as one
// fused multiply-add; checked against torch 2.15 for every size the maps use (a non-fused product differs by an
// ulp in a few codes).
std::vector<float> linspace_f32(float start, float end, int64_t steps) {
    std::vector<float> out(steps);
    const float step = (end - start) / static_cast<float>(steps - 1);
    const int64_t halfway = steps / 2;
    for (int64_t i = 0; i < steps; ++i)
        out[i] = i < halfway ? std::fma(step, static_cast<float>(i), start)
                             : std::fma(-step, static_cast<float>(steps - i - 1), end);
    return out;
}

const std::array<float, 256>& signed_map() {
    static const std::array<float, 256> map = dynamic_quant_map(true);
    return map;
}

const std::array<float, 256>& unsigned_map() {
    static const std::array<float, 256> map = dynamic_quant_map(false);
    return map;
}

// kOptimizer32bit2State, ADAM: the same update with float32 moments.
void adam32_chunk(float* p, const float* g, float* m, float* v, int64_t n, const Adam8bitStep& s) {
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(g[i])) continue;
        m[i] = m[i] * s.beta1 + (s.one_minus_beta1 * g[i]);
        v[i] = v[i] * s.beta2 + (s.one_minus_beta2 * (g[i] * g[i]));
        p[i] = p[i] + (s.step_size * (m[i] / (std::sqrt(v[i]) + s.eps_corr2)));
        if (s.weight_decay) p[i] = p[i] * s.decay;
    }
}

}  // namespace

std::array<float, 256> dynamic_quant_map(bool is_signed) {
    // For exponent i = 0..6 the midpoints of linspace(0.1, 1, 2^i + 1) (signed) or linspace(0.1, 1, 2^(i+1) + 1)
    // (unsigned), scaled by 10^(i-6); negatives too when signed; then 0 and 1.0; sorted. No "additional items"
    // for 8 bits with 7 exponent bits.
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
        const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
        const std::vector<float> b = linspace_f32(0.1f, 1.0f, items);
        const float scale = static_cast<float>(std::pow(10.0, i - 6));  // Python 10 ** (i - 6), cast by torch
        for (int64_t k = 0; k + 1 < items; ++k) {
            const float mean = (b[k] + b[k + 1]) / 2.0f;
            data.push_back(scale * mean);
        }
        if (is_signed)
            for (int64_t k = 0; k + 1 < items; ++k) data.push_back(-(scale * ((b[k] + b[k + 1]) / 2.0f)));
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    std::copy(data.begin(), data.end(), out.begin());
    return out;
}

void adam8bit_chunk(float* p_all, const float* g_all, const Adam8bitState& st, const Adam8bitChunk& c,
                    int64_t block_size, const Adam8bitStep& s) {
    float* p = p_all + c.offset;
    const float* g = g_all + c.offset;
    if (c.block < 0) {
        adam32_chunk(p, g, st.m32 + c.offset, st.v32 + c.offset, c.count, s);
        return;
    }
    const std::array<float, 256>& smap = signed_map();
    const std::array<float, 256>& umap = unsigned_map();
    uint8_t* mc = st.m_codes + c.offset;
    uint8_t* vc = st.v_codes + c.offset;
    const float am1 = st.m_absmax[c.block], am2 = st.v_absmax[c.block];
    std::vector<float> m(c.count), v(c.count);
    float nm1 = -FLT_MAX, nm2 = -FLT_MAX;
    for (int64_t j = 0; j < c.count; ++j) {
        const float gv = g[j];
        if (std::isfinite(gv)) {
            v[j] = umap[vc[j]] * am2;
            v[j] = (v[j] * s.beta2) + (s.one_minus_beta2 * gv * gv);
            m[j] = smap[mc[j]] * am1;
            m[j] = (m[j] * s.beta1) + (s.one_minus_beta1 * gv);
        } else {
            m[j] = 0.0f;
            v[j] = 0.0f;
        }
        nm1 = std::max(nm1, std::fabs(m[j]));
        nm2 = std::max(nm2, std::fabs(v[j]));
    }
    // The kernel's padding lanes of a partial last block load code 128 (m) / 0 (v) and a zero gradient; they join
    // the absmax reduction.
    if (c.count < block_size) nm1 = std::max(nm1, std::fabs((smap[128] * am1) * s.beta1));
    st.m_absmax[c.block] = nm1;
    st.v_absmax[c.block] = nm2;
    for (int64_t j = 0; j < c.count; ++j) {
        if (!std::isfinite(g[j])) continue;
        float pv = p[j] + (s.step_size * (m[j] / (std::sqrt(v[j]) + s.eps_corr2)));
        if (s.weight_decay) pv = pv * s.decay;
        p[j] = pv;
    }
    for (int64_t j = 0; j < c.count; ++j) {
        // All-zero moments: any code dequantizes to 0 with absmax 0; use the zero codes (the kernel would divide
        // 0 by 0 here).
        uint8_t c1 = 127, c2 = 0;
        if (nm1 > 0) {
            c1 = quantize_nearest(smap.data(), true, m[j] / nm1);
            // keep the sign of m after quantization
            if (std::signbit(smap[c1]) != std::signbit(m[j])) c1 = m[j] > 0.0f ? c1 + 1 : c1 - 1;
        }
        if (nm2 > 0) c2 = quantize_nearest(umap.data(), false, v[j] / nm2);
        mc[j] = c1;
        vc[j] = c2;
    }
}

}  // namespace sd3::cpu
