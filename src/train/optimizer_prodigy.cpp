// Prodigy (prodigyopt.Prodigy, one param group) over the flat buffer: Adam moments scaled by the adaptive
// step size d, estimated from <g, p0 - p> / sum|s|. Scalars in double as Python keeps them; dot products and
// |s| sums accumulated in double (torch reduces in float32; the difference is rounding only). It updates on the
// host: with the model on a GPU, the params and grads come over and the params go back (Prodigy's dot products
// have no kernels yet).
#include <cmath>

#include "ops/device.h"
#include "train/optimizer.h"

namespace sd3::train {

namespace {

class Prodigy final : public Optimizer {
  public:
    Prodigy(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device)
        : Optimizer(std::move(segments), device), c_(c) {
        m_ = Tensor::zeros({numel_});   // [n] exp_avg
        v_ = Tensor::zeros({numel_});   // [n] exp_avg_sq
        s_ = Tensor::zeros({numel_});   // [n]
        p0_ = Tensor::zeros({numel_});  // [n] the parameters at the first step
        d_ = c_.d0;
        d_max_ = c_.d0;
    }

    NamedTensors state() const override {
        return {{"prodigy.step", detail::scalar_i64(steps_)},
                {"prodigy.scalars", detail::scalars_f64({d_, d_max_, d_numerator_, static_cast<double>(k_)})},
                {"prodigy.exp_avg", m_},
                {"prodigy.exp_avg_sq", v_},
                {"prodigy.s", s_},
                {"prodigy.p0", p0_}};
    }

    Status load_state(const NamedTensors& st) override {
        const Tensor *step, *sc, *m, *v, *s, *p0;
        SD3_TRY(detail::expect_state(st, "prodigy.step", DType::I64, 1, &step));
        SD3_TRY(detail::expect_state(st, "prodigy.scalars", DType::F64, 4, &sc));
        SD3_TRY(detail::expect_state(st, "prodigy.exp_avg", DType::F32, numel_, &m));
        SD3_TRY(detail::expect_state(st, "prodigy.exp_avg_sq", DType::F32, numel_, &v));
        SD3_TRY(detail::expect_state(st, "prodigy.s", DType::F32, numel_, &s));
        SD3_TRY(detail::expect_state(st, "prodigy.p0", DType::F32, numel_, &p0));
        steps_ = *step->data<int64_t>();
        const double* x = sc->data<double>();
        d_ = x[0];
        d_max_ = x[1];
        d_numerator_ = x[2];
        k_ = static_cast<int64_t>(x[3]);
        m_.copy_from(*m);
        v_.copy_from(*v);
        s_.copy_from(*s);
        p0_.copy_from(*p0);
        return {};
    }

    int64_t state_bytes() const override { return 4 * numel_ * 4; }

  private:
    void update(const Tensor& params, const Tensor& grads, double lr) override {
        if (params.device().is_cpu()) return update_host(params.data<float>(), grads.data<float>(), lr);
        const Tensor p = to_host(params), g = to_host(grads);
        update_host(p.data<float>(), g.data<float>(), lr);
        copy_into(params, p);
    }

    void update_host(float* p, const float* g, double lr) {
        const double beta1 = c_.beta1, beta2 = c_.beta2;
        const double beta3 = c_.beta3 < 0 ? std::sqrt(beta2) : c_.beta3;
        if (steps_ == 0) std::copy(p, p + numel_, p0_.data<float>());
        const double bias_correction =
            c_.use_bias_correction ? std::sqrt(1 - std::pow(beta2, k_ + 1)) / (1 - std::pow(beta1, k_ + 1)) : 1.0;
        const double dlr = d_ * lr * bias_correction;
        const double d_numerator = d_numerator_ * beta3;
        double delta_numerator = 0, d_denom = 0;
        float* m = m_.data<float>();
        float* v = v_.data<float>();
        float* s = s_.data<float>();
        const float* p0 = p0_.data<float>();
        std::vector<float> grad(g, g + numel_);
        if (c_.weight_decay != 0 && !c_.decouple)
            for (int64_t i = 0; i < numel_; ++i) grad[i] = grad[i] + static_cast<float>(c_.weight_decay) * p[i];
        if (lr > 0.0) {
            const float m_scale = static_cast<float>(d_ * (1 - beta1));
            const float v_scale = static_cast<float>(d_ * d_ * (1 - beta2));
            const float s_scale = static_cast<float>(c_.safeguard_warmup ? (d_ / c_.d0) * d_ : (d_ / c_.d0) * dlr);
            const float b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2), b3 = static_cast<float>(beta3);
            for (const ParamSegment& seg : segments_) {  // per tensor, as prodigyopt sums .item()s
                double dot = 0, abs_sum = 0;
                for (int64_t i = seg.offset; i < seg.offset + seg.numel; ++i) {
                    dot += static_cast<double>(grad[i]) * (static_cast<double>(p0[i]) - p[i]);
                    if (beta1 > 0) m[i] = m[i] * b1 + m_scale * grad[i];
                    v[i] = v[i] * b2 + v_scale * grad[i] * grad[i];
                    s[i] = s[i] * b3 + s_scale * grad[i];
                    abs_sum += std::fabs(s[i]);
                }
                delta_numerator += (d_ / c_.d0) * dlr * dot;
                d_denom += abs_sum;
            }
        }
        if (d_denom == 0) return;  // prodigyopt returns before counting the step when nothing moved
        if (lr > 0.0) {
            const double d_hat = c_.d_coef * (d_numerator + delta_numerator) / d_denom;
            if (d_ == c_.d0) d_ = std::max(d_, d_hat);
            d_max_ = std::max(d_max_, d_hat);
            d_ = std::min(d_max_, d_ * c_.growth_rate);
        }
        d_numerator_ = d_numerator + delta_numerator;
        const float deps = static_cast<float>(d_ * c_.eps);
        const float decay = static_cast<float>(-c_.weight_decay * dlr);
        const float neg_dlr = static_cast<float>(-dlr);
        const float neg_dlr_d = static_cast<float>(-dlr * d_);
        for (int64_t i = 0; i < numel_; ++i) {
            const float denom = std::sqrt(v[i]) + deps;
            if (c_.weight_decay != 0 && c_.decouple) p[i] = p[i] + decay * p[i];
            p[i] = beta1 > 0 ? p[i] + neg_dlr * m[i] / denom : p[i] + neg_dlr_d * grad[i] / denom;
        }
        ++steps_;
        ++k_;
    }

    OptimizerConfig c_;
    Tensor m_, v_, s_, p0_;
    double d_, d_max_, d_numerator_ = 0;
    int64_t k_ = 0;
};

}  // namespace

std::unique_ptr<Optimizer> make_prodigy(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device) {
    return std::make_unique<Prodigy>(c, std::move(segments), device);
}

}  // namespace sd3::train
