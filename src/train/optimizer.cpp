// Gradient norm/clipping and the float32 AdamW of torch.optim (single-tensor CPU path, torch/optim/adam.py
// _single_tensor_adam with decoupled_weight_decay): scalars in double as Python computes them, cast to float
// where torch wraps them, elementwise math in float32 in torch's operation order.
#include "train/optimizer.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "train/optimizer_8bit.h"

namespace sd3::train {

const char* optimizer_kind_name(OptimizerKind k) {
    switch (k) {
        case OptimizerKind::ADAMW: return "AdamW";
        case OptimizerKind::ADAMW_8BIT: return "AdamW8bit";
        case OptimizerKind::PRODIGY: return "Prodigy";
    }
    return "?";
}

float global_grad_norm(const float* grads, const std::vector<ParamSegment>& segments) {
    // torch._foreach_norm per tensor (float32 result), then vector_norm of the stacked norms.
    // Each segment's sum runs in one thread in order, so the result does not depend on the thread count.
    const int64_t n = static_cast<int64_t>(segments.size());
    std::vector<float> norms(segments.size());
#pragma omp parallel for schedule(dynamic)
    for (int64_t k = 0; k < n; ++k) {
        const ParamSegment& s = segments[k];
        double sq = 0;
        for (int64_t i = 0; i < s.numel; ++i) sq += static_cast<double>(grads[s.offset + i]) * grads[s.offset + i];
        norms[k] = static_cast<float>(std::sqrt(sq));
    }
    double total_sq = 0;
    for (float norm : norms) total_sq += static_cast<double>(norm) * norm;
    return static_cast<float>(std::sqrt(total_sq));
}

float clip_grad_norm(float* grads, const std::vector<ParamSegment>& segments, double max_norm) {
    const float norm = global_grad_norm(grads, segments);
    // clip_coef = max_norm / (total_norm + 1e-6) as float32 tensor math, clamped to 1.
    float coef = static_cast<float>(max_norm) / (norm + static_cast<float>(1e-6));
    if (coef > 1.0f) coef = 1.0f;
    const int64_t n = static_cast<int64_t>(segments.size());
#pragma omp parallel for schedule(dynamic)
    for (int64_t k = 0; k < n; ++k)
        for (int64_t i = 0; i < segments[k].numel; ++i) grads[segments[k].offset + i] *= coef;
    return norm;
}

Optimizer::Optimizer(std::vector<ParamSegment> segments) : segments_(std::move(segments)) {
    int64_t expect = 0;
    for (const ParamSegment& s : segments_) {
        SD3_ASSERT(s.offset == expect && s.numel >= 0, "optimizer segments must tile the buffer in order");
        expect += s.numel;
    }
    numel_ = expect;
}

namespace detail {

const Tensor* find_state(const NamedTensors& state, const std::string& name) {
    for (const auto& [n, t] : state)
        if (n == name) return &t;
    return nullptr;
}

Status expect_state(const NamedTensors& state, const std::string& name, DType dtype, int64_t numel,
                    const Tensor** out) {
    const Tensor* t = find_state(state, name);
    if (!t) return make_error(ErrorCode::CORRUPT_FILE, "optimizer state has no '", name,
                              "' (was the checkpoint written with another --optimizer?)");
    if (t->dtype() != dtype || t->numel() != numel)
        return make_error(ErrorCode::CORRUPT_FILE, "optimizer state '", name, "' is ", t->describe(), ", expected ",
                          dtype_name(dtype), "[", numel, "] (was the checkpoint written with other LoRA settings?)");
    *out = t;
    return {};
}

Tensor scalar_i64(int64_t v) {
    Tensor t = Tensor::empty({1}, DType::I64);
    *t.data<int64_t>() = v;
    return t;
}

Tensor scalars_f64(const std::vector<double>& v) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
    std::memcpy(t.raw(), v.data(), v.size() * sizeof(double));
    return t;
}

}  // namespace detail

namespace {

class AdamW final : public Optimizer {
  public:
    AdamW(const OptimizerConfig& c, std::vector<ParamSegment> segments) : Optimizer(std::move(segments)), c_(c) {
        m_ = Tensor::zeros({numel_});  // [n]
        v_ = Tensor::zeros({numel_});  // [n]
    }

    void step(float* p, const float* g, double lr) override {
        ++steps_;
        float* m = m_.data<float>();
        float* v = v_.data<float>();
        const float decay = static_cast<float>(1.0 - lr * c_.weight_decay);  // param.mul_(1 - lr*wd)
        const float w1 = static_cast<float>(1.0 - c_.beta1);                // exp_avg.lerp_(grad, 1 - beta1)
        const float b2 = static_cast<float>(c_.beta2);
        const float one_minus_b2 = static_cast<float>(1.0 - c_.beta2);
        const double bc1 = 1.0 - std::pow(c_.beta1, static_cast<double>(steps_));
        const double bc2 = 1.0 - std::pow(c_.beta2, static_cast<double>(steps_));
        const float neg_step_size = static_cast<float>(-(lr / bc1));
        const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
        const float eps = static_cast<float>(c_.eps);
        const bool wd = c_.weight_decay != 0;
#pragma omp parallel for
        for (int64_t i = 0; i < numel_; ++i) {
            if (wd) p[i] *= decay;
            // torch's lerp for weight < 0.5: self + weight * (end - self)
            m[i] = m[i] + w1 * (g[i] - m[i]);
            v[i] = v[i] * b2;
            v[i] = v[i] + one_minus_b2 * g[i] * g[i];  // addcmul: self + value * t1 * t2
            const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
            p[i] = p[i] + neg_step_size * m[i] / denom;  // addcdiv: self + value * t1 / t2
        }
    }

    NamedTensors state() const override {
        return {{"adamw.step", detail::scalar_i64(steps_)}, {"adamw.exp_avg", m_}, {"adamw.exp_avg_sq", v_}};
    }

    Status load_state(const NamedTensors& st) override {
        const Tensor *s, *m, *v;
        SD3_TRY(detail::expect_state(st, "adamw.step", DType::I64, 1, &s));
        SD3_TRY(detail::expect_state(st, "adamw.exp_avg", DType::F32, numel_, &m));
        SD3_TRY(detail::expect_state(st, "adamw.exp_avg_sq", DType::F32, numel_, &v));
        steps_ = *s->data<int64_t>();
        m_.copy_from(*m);
        v_.copy_from(*v);
        return {};
    }

    int64_t state_bytes() const override { return 2 * numel_ * 4; }

  private:
    OptimizerConfig c_;
    Tensor m_, v_;  // [n] exp_avg, exp_avg_sq
};

}  // namespace

std::unique_ptr<Optimizer> make_adamw8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments);
std::unique_ptr<Optimizer> make_prodigy(const OptimizerConfig& c, std::vector<ParamSegment> segments);

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, std::vector<ParamSegment> segments) {
    switch (config.kind) {
        case OptimizerKind::ADAMW: return std::make_unique<AdamW>(config, std::move(segments));
        case OptimizerKind::ADAMW_8BIT: return make_adamw8bit(config, std::move(segments));
        case OptimizerKind::PRODIGY: return make_prodigy(config, std::move(segments));
    }
    return nullptr;
}

}  // namespace sd3::train
