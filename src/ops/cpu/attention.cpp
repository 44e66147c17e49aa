// Scaled-dot-product attention on the CPU. The specification materializes one [Tq, Tk] score block per
// (batch, head); GPU kernels never do (DESIGN.md "Numerics"). Softmax in float32 with the row maximum subtracted.
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

// Fills scores[Tq, Tk] = scale * q_h · k_hᵀ (+ bias) with the causal mask applied as -inf.
void head_scores(float* scores, const float* q, const float* k, const float* bias, const AttentionShape& s, int64_t bi,
                 int64_t h) {
    const int64_t width = s.heads * s.head_dim;
    const float* qh = q + bi * s.q_len * width + h * s.head_dim;
    const float* kh = k + bi * s.kv_len * width + h * s.head_dim;
    gemm(false, true, s.q_len, s.kv_len, s.head_dim, s.scale, qh, width, kh, width, 0.0f, scores, s.kv_len);
    for (int64_t i = 0; i < s.q_len; ++i) {
        float* row = scores + i * s.kv_len;
        if (bias != nullptr) {
            const float* br = bias + (h * s.q_len + i) * s.kv_len;
            for (int64_t j = 0; j < s.kv_len; ++j) row[j] += br[j];
        }
        if (s.causal)
            for (int64_t j = i + 1; j < s.kv_len; ++j) row[j] = -std::numeric_limits<float>::infinity();
    }
}

}  // namespace

void attention_fwd(float* out, float* lse, const float* q, const float* k, const float* v, const float* bias,
                   const AttentionShape& s) {
    const int64_t width = s.heads * s.head_dim;
#pragma omp parallel for collapse(2)
    for (int64_t bi = 0; bi < s.batch; ++bi) {
        for (int64_t h = 0; h < s.heads; ++h) {
            std::vector<float> scores(static_cast<size_t>(s.q_len * s.kv_len));
            head_scores(scores.data(), q, k, bias, s, bi, h);
            for (int64_t i = 0; i < s.q_len; ++i) {
                float* row = scores.data() + i * s.kv_len;
                float mx = -std::numeric_limits<float>::infinity();
                for (int64_t j = 0; j < s.kv_len; ++j) mx = std::max(mx, row[j]);
                double sum = 0;
                for (int64_t j = 0; j < s.kv_len; ++j) {
                    row[j] = std::exp(row[j] - mx);
                    sum += row[j];
                }
                const float inv = static_cast<float>(1.0 / sum);
                for (int64_t j = 0; j < s.kv_len; ++j) row[j] *= inv;
                if (lse != nullptr) lse[(bi * s.heads + h) * s.q_len + i] = mx + static_cast<float>(std::log(sum));
            }
            const float* vh = v + bi * s.kv_len * width + h * s.head_dim;
            float* oh = out + bi * s.q_len * width + h * s.head_dim;
            gemm(false, false, s.q_len, s.head_dim, s.kv_len, 1.0f, scores.data(), s.kv_len, vh, width, 0.0f, oh, width);
        }
    }
}

void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                   const float* out, const float* lse, const float* bias, const AttentionShape& s) {
    const int64_t width = s.heads * s.head_dim;
#pragma omp parallel for collapse(2)
    for (int64_t bi = 0; bi < s.batch; ++bi) {
        for (int64_t h = 0; h < s.heads; ++h) {
            std::vector<float> p(static_cast<size_t>(s.q_len * s.kv_len));
            std::vector<float> dp(p.size());
            head_scores(p.data(), q, k, bias, s, bi, h);
            for (int64_t i = 0; i < s.q_len; ++i) {
                const float l = lse[(bi * s.heads + h) * s.q_len + i];
                for (int64_t j = 0; j < s.kv_len; ++j) p[i * s.kv_len + j] = std::exp(p[i * s.kv_len + j] - l);
            }
            const int64_t qoff = bi * s.q_len * width + h * s.head_dim;
            const int64_t koff = bi * s.kv_len * width + h * s.head_dim;
            // dV = Pᵀ dO ; dP = dO Vᵀ
            gemm(true, false, s.kv_len, s.head_dim, s.q_len, 1.0f, p.data(), s.kv_len, dout + qoff, width, 0.0f,
                 dv + koff, width);
            gemm(false, true, s.q_len, s.kv_len, s.head_dim, 1.0f, dout + qoff, width, v + koff, width, 0.0f, dp.data(),
                 s.kv_len);
            // dS = P ⊙ (dP − rowsum(dO ⊙ O))
            for (int64_t i = 0; i < s.q_len; ++i) {
                double d = 0;
                for (int64_t c = 0; c < s.head_dim; ++c) d += dout[qoff + i * width + c] * out[qoff + i * width + c];
                for (int64_t j = 0; j < s.kv_len; ++j) {
                    float& g = dp[i * s.kv_len + j];
                    g = p[i * s.kv_len + j] * (g - static_cast<float>(d));
                }
            }
            // dQ = scale · dS K ; dK = scale · dSᵀ Q
            gemm(false, false, s.q_len, s.head_dim, s.kv_len, s.scale, dp.data(), s.kv_len, k + koff, width, 0.0f,
                 dq + qoff, width);
            gemm(true, false, s.kv_len, s.head_dim, s.q_len, s.scale, dp.data(), s.kv_len, q + qoff, width, 0.0f,
                 dk + koff, width);
        }
    }
}

}  // namespace sd3::cpu
