// AdamW8bit as bitsandbytes 0.43.1 computes it (reference-training.md 3.6; gpu-components.md 4c): dynamic maps,
// nearest-code search, and the blockwise update, all in float32 like the CUDA kernel (but with exact division
// and powf where the kernel uses __fdividef/__powf). docs/optimizers.md gives the derivation.
#include "train/optimizer_8bit.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "train/optimizer.h"

namespace sd3::train {

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

}  // namespace

std::array<float, 256> dynamic_quant_map(bool is_signed) {
    // create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for exponent i = 0..6 the midpoints of
    // linspace(0.1, 1, 2^i + 1) (signed) or linspace(0.1, 1, 2^(i+1) + 1) (unsigned), scaled by 10^(i-6);
    // negatives too when signed; then 0 and 1.0; sorted. No "additional items" for 8 bits with 7 exponent bits.
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

uint8_t quantize_nearest(const std::array<float, 256>& code, bool is_signed, float x) {
    // quantize_2D: binary search with pivots 127 ± 64 ± 32 ... ± 1, tracking the bracketing codes, then the
    // nearer of the two neighbours by comparison with their midpoint.
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

void adam8bit_update(float* p, const float* g, int64_t n, int64_t block, Adam8bitBlockState st, float beta1,
                     float beta2, float eps, float weight_decay, float lr, int64_t t) {
    static const std::array<float, 256> smap = dynamic_quant_map(true);
    static const std::array<float, 256> umap = dynamic_quant_map(false);
    const float corr1 = 1.0f - std::pow(beta1, static_cast<float>(t));
    const float corr2 = std::sqrt(1.0f - std::pow(beta2, static_cast<float>(t)));
    const float step_size = (-lr * corr2) / corr1;
    std::vector<float> m(block), v(block);
    for (int64_t b0 = 0, bi = 0; b0 < n; b0 += block, ++bi) {
        const int64_t cnt = std::min(block, n - b0);
        const float am1 = st.m_absmax[bi], am2 = st.v_absmax[bi];
        float nm1 = -FLT_MAX, nm2 = -FLT_MAX;
        for (int64_t j = 0; j < cnt; ++j) {
            const float gv = g[b0 + j];
            if (std::isfinite(gv)) {
                v[j] = umap[st.v_codes[b0 + j]] * am2;
                v[j] = (v[j] * beta2) + ((1.0f - beta2) * gv * gv);
                m[j] = smap[st.m_codes[b0 + j]] * am1;
                m[j] = (m[j] * beta1) + ((1.0f - beta1) * gv);
            } else {
                m[j] = 0.0f;
                v[j] = 0.0f;
            }
            nm1 = std::max(nm1, std::fabs(m[j]));
            nm2 = std::max(nm2, std::fabs(v[j]));
        }
        // The kernel's padding lanes of a partial last block load code 128 (m) / 0 (v) and a zero gradient;
        // they join the absmax reduction.
        if (cnt < block) nm1 = std::max(nm1, std::fabs((smap[128] * am1) * beta1));
        st.m_absmax[bi] = nm1;
        st.v_absmax[bi] = nm2;
        for (int64_t j = 0; j < cnt; ++j) {
            if (!std::isfinite(g[b0 + j])) continue;
            float pv = p[b0 + j] + (step_size * (m[j] / (std::sqrt(v[j]) + (corr2 * eps))));
            if (weight_decay > 0.0f) pv = pv * (1.0f - (lr * weight_decay));
            p[b0 + j] = pv;
        }
        for (int64_t j = 0; j < cnt; ++j) {
            // All-zero moments: any code dequantizes to 0 with absmax 0; use the zero codes (the kernel would
            // divide 0 by 0 here).
            uint8_t c1 = 127, c2 = 0;
            if (nm1 > 0) {
                c1 = quantize_nearest(smap, true, m[j] / nm1);
                // keep the sign of m after quantization
                if (std::signbit(smap[c1]) != std::signbit(m[j])) c1 = m[j] > 0.0f ? c1 + 1 : c1 - 1;
            }
            if (nm2 > 0) c2 = quantize_nearest(umap, false, v[j] / nm2);
            st.m_codes[b0 + j] = c1;
            st.v_codes[b0 + j] = c2;
        }
    }
}

namespace {

// bitsandbytes AdamW8bit over the flat buffer: every segment (parameter tensor) of at least min_8bit_size
// elements has 8-bit moments in its own blocks; smaller ones keep float32 moments (kOptimizer32bit2State math).
class AdamW8bit final : public Optimizer {
  public:
    AdamW8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments) : Optimizer(std::move(segments)), c_(c) {
        int64_t blocks = 0;
        for (const ParamSegment& s : segments_)
            if (quantized(s)) blocks += (s.numel + c_.block_size - 1) / c_.block_size;
        m_codes_ = Tensor::zeros({numel_}, DType::U8);  // [n] (bitsandbytes starts from uint8 zeros)
        v_codes_ = Tensor::zeros({numel_}, DType::U8);  // [n]
        m_absmax_ = Tensor::zeros({blocks});            // [blocks]
        v_absmax_ = Tensor::zeros({blocks});            // [blocks]
        m32_ = Tensor::zeros({numel_});                 // [n] only used for small segments
        v32_ = Tensor::zeros({numel_});
    }

    void step(float* p, const float* g, double lr_d) override {
        ++steps_;
        const float lr = static_cast<float>(lr_d), b1 = static_cast<float>(c_.beta1), b2 = static_cast<float>(c_.beta2);
        const float eps = static_cast<float>(c_.eps), wd = static_cast<float>(c_.weight_decay);
        // Segments are independent (each has its own blocks): one thread each, so any thread count gives the
        // same bytes.
        const int64_t n = static_cast<int64_t>(segments_.size());
        std::vector<int64_t> first_block(segments_.size());
        for (int64_t k = 0, blocks = 0; k < n; ++k) {
            first_block[k] = blocks;
            if (quantized(segments_[k])) blocks += (segments_[k].numel + c_.block_size - 1) / c_.block_size;
        }
#pragma omp parallel for schedule(dynamic)
        for (int64_t k = 0; k < n; ++k) {
            const ParamSegment& s = segments_[k];
            if (quantized(s)) {
                Adam8bitBlockState st{m_codes_.data<uint8_t>() + s.offset, v_codes_.data<uint8_t>() + s.offset,
                                      m_absmax_.data<float>() + first_block[k], v_absmax_.data<float>() + first_block[k]};
                adam8bit_update(p + s.offset, g + s.offset, s.numel, c_.block_size, st, b1, b2, eps, wd, lr, steps_);
            } else {
                adam32(p + s.offset, g + s.offset, s.numel, m32_.data<float>() + s.offset,
                       v32_.data<float>() + s.offset, b1, b2, eps, wd, lr);
            }
        }
    }

    NamedTensors state() const override {
        return {{"adamw8bit.step", detail::scalar_i64(steps_)}, {"adamw8bit.m_codes", m_codes_},
                {"adamw8bit.v_codes", v_codes_},                 {"adamw8bit.m_absmax", m_absmax_},
                {"adamw8bit.v_absmax", v_absmax_},               {"adamw8bit.m32", m32_},
                {"adamw8bit.v32", v32_}};
    }

    Status load_state(const NamedTensors& st) override {
        const Tensor *s, *mc, *vc, *ma, *va, *m32, *v32;
        SD3_TRY(detail::expect_state(st, "adamw8bit.step", DType::I64, 1, &s));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m_codes", DType::U8, numel_, &mc));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v_codes", DType::U8, numel_, &vc));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m_absmax", DType::F32, m_absmax_.numel(), &ma));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v_absmax", DType::F32, v_absmax_.numel(), &va));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m32", DType::F32, numel_, &m32));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v32", DType::F32, numel_, &v32));
        steps_ = *s->data<int64_t>();
        m_codes_.copy_from(*mc);
        v_codes_.copy_from(*vc);
        m_absmax_.copy_from(*ma);
        v_absmax_.copy_from(*va);
        m32_.copy_from(*m32);
        v32_.copy_from(*v32);
        return {};
    }

    int64_t state_bytes() const override { return 2 * numel_ + 8 * m_absmax_.numel() + 8 * numel_; }

  private:
    bool quantized(const ParamSegment& s) const { return s.numel >= c_.min_8bit_size; }

    // kOptimizer32bit2State, ADAM (bitsandbytes 0.43.1): same update with float32 moments.
    void adam32(float* p, const float* g, int64_t n, float* m, float* v, float b1, float b2, float eps, float wd,
                float lr) const {
        const float corr1 = 1.0f - std::pow(b1, static_cast<float>(steps_));
        const float corr2 = std::sqrt(1.0f - std::pow(b2, static_cast<float>(steps_)));
        const float step_size = -lr * corr2 / corr1;
        for (int64_t i = 0; i < n; ++i) {
            if (!std::isfinite(g[i])) continue;
            m[i] = m[i] * b1 + ((1.0f - b1) * g[i]);
            v[i] = v[i] * b2 + ((1.0f - b2) * (g[i] * g[i]));
            p[i] = p[i] + (step_size * (m[i] / (std::sqrt(v[i]) + (eps * corr2))));
            if (wd > 0.0f) p[i] = p[i] * (1.0f - (lr * wd));
        }
    }

    OptimizerConfig c_;
    Tensor m_codes_, v_codes_, m_absmax_, v_absmax_, m32_, v32_;
};

}  // namespace

std::unique_ptr<Optimizer> make_adamw8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments) {
    return std::make_unique<AdamW8bit>(c, std::move(segments));
}

}  // namespace sd3::train
