// Gradient norm/clipping and the float32 AdamW of torch.optim (single-tensor CPU path, torch/optim/adam.py
// _single_tensor_adam with decoupled_weight_decay): scalars in double as Python computes them, cast to float
// where torch wraps them; the element math is ops/cpu/train_ops.h's, run where the optimizer lives.
#include "train/optimizer.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/check.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"
#include "ops/train_ops.h"

namespace sd3::train {

const char* optimizer_kind_name(OptimizerKind k) {
    switch (k) {
        case OptimizerKind::ADAMW: return "AdamW";
        case OptimizerKind::ADAMW_8BIT: return "AdamW8bit";
        case OptimizerKind::PRODIGY: return "Prodigy";
    }
    return "?";
}

namespace {

Tensor segment_table(const std::vector<ParamSegment>& segments) {
    Tensor t = Tensor::empty({static_cast<int64_t>(segments.size()), 2}, DType::I64);  // [S, 2]
    for (size_t k = 0; k < segments.size(); ++k) {
        t.data<int64_t>()[2 * k] = segments[k].offset;
        t.data<int64_t>()[2 * k + 1] = segments[k].numel;
    }
    return t;
}

Tensor borrow(const float* data, int64_t n) {
    return Tensor::borrow(const_cast<float*>(data), {n}, DType::F32, kCPU);
}

int64_t total_numel(const std::vector<ParamSegment>& segments) {
    return segments.empty() ? 0 : segments.back().offset + segments.back().numel;
}

}  // namespace

float global_grad_norm(const float* grads, const std::vector<ParamSegment>& segments) {
    // An infinite max_norm makes coef infinite (or NaN), never below 1: nothing is scaled.
    const Tensor stats = ops::clip_by_total_norm_(borrow(grads, total_numel(segments)), segment_table(segments),
                                                  std::numeric_limits<float>::infinity());
    return stats.data<float>()[0];
}

float clip_grad_norm(float* grads, const std::vector<ParamSegment>& segments, double max_norm) {
    const Tensor stats = ops::clip_by_total_norm_(borrow(grads, total_numel(segments)), segment_table(segments),
                                                  static_cast<float>(max_norm));
    return stats.data<float>()[0];
}

Optimizer::Optimizer(std::vector<ParamSegment> segments, Device device)
    : segments_(std::move(segments)), device_(device) {
    int64_t expect = 0;
    for (const ParamSegment& s : segments_) {
        SD3_ASSERT(s.offset == expect && s.numel >= 0, "optimizer segments must tile the buffer in order");
        expect += s.numel;
    }
    numel_ = expect;
    segment_table_ = detail::on_device(segment_table(segments_), device_);
}

void Optimizer::step(const Tensor& params, const Tensor& grads, double lr) {
    for (const Tensor* t : {&params, &grads})
        SD3_ASSERT(t->dtype() == DType::F32 && t->numel() == numel_ && t->is_contiguous() && t->device() == device_,
                   "optimizer step: expected contiguous f32 [", numel_, "] on ", device_.str(), ", got ", t->describe());
    update(params, grads, lr);
}

void Optimizer::step(float* params, const float* grads, double lr) { step(borrow(params, numel_), borrow(grads, numel_), lr); }

Tensor Optimizer::clip_grad_norm(const Tensor& grads, double max_norm) const {
    SD3_ASSERT(grads.dtype() == DType::F32 && grads.numel() == numel_ && grads.device() == device_,
               "clip_grad_norm: expected f32 [", numel_, "] on ", device_.str(), ", got ", grads.describe());
    return ops::clip_by_total_norm_(grads, segment_table_, static_cast<float>(max_norm));
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

Tensor on_device(const Tensor& t, Device device) {
    if (device.is_cpu()) return t;
    Tensor d = Tensor::empty(t.shape(), t.dtype(), device);
    copy_into(d, t);
    return d;
}

}  // namespace detail

namespace {

class AdamW final : public Optimizer {
  public:
    AdamW(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device)
        : Optimizer(std::move(segments), device), c_(c) {
        m_ = ops::zeros({numel_}, device_);  // [n]
        v_ = ops::zeros({numel_}, device_);  // [n]
    }

    NamedTensors state() const override {
        return {{"adamw.step", detail::scalar_i64(steps_)}, {"adamw.exp_avg", to_host(m_)},
                {"adamw.exp_avg_sq", to_host(v_)}};
    }

    Status load_state(const NamedTensors& st) override {
        const Tensor *s, *m, *v;
        SD3_TRY(detail::expect_state(st, "adamw.step", DType::I64, 1, &s));
        SD3_TRY(detail::expect_state(st, "adamw.exp_avg", DType::F32, numel_, &m));
        SD3_TRY(detail::expect_state(st, "adamw.exp_avg_sq", DType::F32, numel_, &v));
        steps_ = *s->data<int64_t>();
        copy_into(m_, *m);
        copy_into(v_, *v);
        return {};
    }

    int64_t state_bytes() const override { return 2 * numel_ * 4; }

  private:
    void update(const Tensor& params, const Tensor& grads, double lr) override {
        ++steps_;
        // Python's scalars in double, cast to float where torch wraps them.
        const double bc1 = 1.0 - std::pow(c_.beta1, static_cast<double>(steps_));
        const double bc2 = 1.0 - std::pow(c_.beta2, static_cast<double>(steps_));
        cpu::AdamWStep s;
        s.weight_decay = c_.weight_decay != 0;
        s.decay = static_cast<float>(1.0 - lr * c_.weight_decay);  // param.mul_(1 - lr*wd)
        s.one_minus_beta1 = static_cast<float>(1.0 - c_.beta1);
        s.beta2 = static_cast<float>(c_.beta2);
        s.one_minus_beta2 = static_cast<float>(1.0 - c_.beta2);
        s.neg_step_size = static_cast<float>(-(lr / bc1));
        s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bc2));
        s.eps = static_cast<float>(c_.eps);
        ops::adamw_update_(params, grads, m_, v_, s);
    }

    OptimizerConfig c_;
    Tensor m_, v_;  // [n] exp_avg, exp_avg_sq on device_
};

}  // namespace

std::unique_ptr<Optimizer> make_adamw8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device);
std::unique_ptr<Optimizer> make_prodigy(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device);

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, std::vector<ParamSegment> segments,
                                          Device device) {
    switch (config.kind) {
        case OptimizerKind::ADAMW: return std::make_unique<AdamW>(config, std::move(segments), device);
        case OptimizerKind::ADAMW_8BIT: return make_adamw8bit(config, std::move(segments), device);
        case OptimizerKind::PRODIGY: return make_prodigy(config, std::move(segments), device);
    }
    return nullptr;
}

}  // namespace sd3::train
