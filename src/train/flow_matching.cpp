// Flow-matching loss and timestep sampling; float32 elementwise as the reference computes them, reductions in
// double (torch's float32 mean differs by rounding only).
#include "train/flow_matching.h"

#include <cmath>
#include <numbers>

#include "core/check.h"
#include "ops/device.h"
#include "ops/train_ops.h"

namespace sd3::train {

Result<WeightingScheme> parse_weighting_scheme(const std::string& name) {
    if (name == "sigma_sqrt") return WeightingScheme::SIGMA_SQRT;
    if (name == "logit_normal") return WeightingScheme::LOGIT_NORMAL;
    if (name == "mode") return WeightingScheme::MODE;
    if (name == "cosmap") return WeightingScheme::COSMAP;
    if (name == "none") return WeightingScheme::NONE;
    return make_error(ErrorCode::INVALID_ARGUMENT, "unknown --weighting_scheme '", name,
                      "'; use logit_normal, mode, sigma_sqrt, cosmap or none");
}

const char* weighting_scheme_name(WeightingScheme s) {
    switch (s) {
        case WeightingScheme::SIGMA_SQRT: return "sigma_sqrt";
        case WeightingScheme::LOGIT_NORMAL: return "logit_normal";
        case WeightingScheme::MODE: return "mode";
        case WeightingScheme::COSMAP: return "cosmap";
        case WeightingScheme::NONE: return "none";
    }
    return "?";
}

SigmaTable SigmaTable::make(int n, double shift_d) {
    SigmaTable t;
    t.sigmas.resize(n);
    t.timesteps.resize(n);
    const float shift = static_cast<float>(shift_d);
    const float nf = static_cast<float>(n);
    for (int k = 0; k < n; ++k) {
        // np.linspace(1, N, N, float32)[::-1]: exact integers N - k
        const float ts = static_cast<float>(n - k);
        float s = ts / nf;
        s = shift * s / (1.0f + (shift - 1.0f) * s);
        t.sigmas[k] = s;
        t.timesteps[k] = s * nf;
    }
    return t;
}

float u_from_draw(const TimestepSampling& c, float draw) {
    switch (c.scheme) {
        case WeightingScheme::LOGIT_NORMAL: {
            const float n = draw;  // the normal draw already has mean/std applied by sample_u
            return 1.0f / (1.0f + std::exp(-n));
        }
        case WeightingScheme::MODE: {
            const float u = draw;
            const float cs = std::cos(static_cast<float>(std::numbers::pi) * u / 2.0f);
            return 1.0f - u - static_cast<float>(c.mode_scale) * (cs * cs - 1.0f + u);
        }
        default: return draw;
    }
}

std::vector<float> sample_u(const TimestepSampling& c, int64_t batch, TrainRng& rng) {
    std::vector<float> u(batch);
    for (int64_t b = 0; b < batch; ++b) {
        if (c.scheme == WeightingScheme::LOGIT_NORMAL)
            u[b] = u_from_draw(c, static_cast<float>(c.logit_mean + c.logit_std * rng.normal()));
        else
            u[b] = u_from_draw(c, rng.uniform_f32());
    }
    return u;
}

int64_t timestep_index(float u, int n) {
    int64_t i = static_cast<int64_t>(u * static_cast<float>(n));  // .long() truncates toward zero
    if (i < 0) i = 0;
    if (i > n - 1) i = n - 1;
    return i;
}

float loss_weighting(WeightingScheme s, float sigma) {
    switch (s) {
        case WeightingScheme::SIGMA_SQRT: return 1.0f / (sigma * sigma);  // sigmas ** -2.0
        case WeightingScheme::COSMAP: {
            const float bot = 1.0f - 2.0f * sigma + 2.0f * (sigma * sigma);
            return 2.0f / (static_cast<float>(std::numbers::pi) * bot);
        }
        default: return 1.0f;
    }
}

Tensor noisy_input(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigmas) {
    SD3_ASSERT(x0.shape() == noise.shape() && x0.dim() >= 1 && x0.size(0) == static_cast<int64_t>(sigmas.size()));
    Tensor a = x0.contiguous(), e = noise.contiguous();
    Tensor out = Tensor::empty(x0.shape(), DType::F32);  // [B, ...]
    const int64_t per = x0.numel() / x0.size(0);
    for (int64_t b = 0; b < x0.size(0); ++b) {
        const float s = sigmas[b], one_minus = 1.0f - s;
        const float* xa = a.data<float>() + b * per;
        const float* xe = e.data<float>() + b * per;
        float* o = out.data<float>() + b * per;
        for (int64_t i = 0; i < per; ++i) o[i] = s * xe[i] + one_minus * xa[i];
    }
    return out;
}

Tensor loss_sample_table(const LossInputs& in, const Shape& pred_shape, double grad_scale) {
    const int64_t B = pred_shape.at(0), per = shape_numel(pred_shape) / B;
    SD3_ASSERT(static_cast<int64_t>(in.sigmas.size()) == B && static_cast<int64_t>(in.weighting.size()) == B);
    SD3_ASSERT(!in.with_prior_preservation || B % 2 == 0, "prior preservation needs an even batch");
    const int64_t half = in.with_prior_preservation ? B / 2 : B;
    std::vector<cpu::LossSample> samples(B);
    for (int64_t b = 0; b < B; ++b) {
        // d(total)/d(sample mean) = 1/half (mean over the half), times prior_loss_weight for the prior half.
        const double part_weight = (b >= half ? in.prior_loss_weight : 1.0) / static_cast<double>(half);
        samples[b] = {in.sigmas[b], in.weighting[b],
                      grad_scale * part_weight * 2.0 * static_cast<double>(in.weighting[b]) / static_cast<double>(per)};
    }
    return ops::loss_sample_table(samples);
}

DeferredLoss deferred_loss(const LossInputs& in, const Shape& pred_shape, PendingDownload sums) {
    const int64_t B = pred_shape.at(0);
    DeferredLoss r;
    r.per_sample = shape_numel(pred_shape) / B;
    r.half = in.with_prior_preservation ? B / 2 : B;
    r.with_prior_preservation = in.with_prior_preservation;
    r.prior_loss_weight = in.prior_loss_weight;
    r.sample_sums = std::move(sums);
    return r;
}

DeferredLoss flow_matching_loss_deferred(const LossInputs& in, double grad_scale) {
    const Tensor& pred = in.model_pred;
    Tensor table = loss_sample_table(in, pred.shape(), grad_scale);
    if (!pred.device().is_cpu()) table = upload_async(table, pred.device()).value();  // no wait for the device
    // The inputs where the prediction is (they are already there unless staging them ran out of memory).
    auto here = [&pred](const Tensor& t) {
        if (t.device() == pred.device()) return t;
        Tensor d = Tensor::empty(t.shape(), t.dtype(), pred.device());
        copy_into(d, t);
        return d;
    };
    Tensor grad;
    const Tensor sums =
        ops::flow_matching_loss(pred, here(in.noisy), here(in.x0), here(in.noise), table, in.precondition_outputs, &grad);
    DeferredLoss r = deferred_loss(in, pred.shape(), download_async(sums));
    r.grad_pred = grad;
    return r;
}

LossResult DeferredLoss::value() {
    const Tensor sums = sample_sums.wait();
    double inst_sum = 0, prior_sum = 0;
    for (int64_t b = 0; b < sums.numel(); ++b) {
        const double sample_mean = sums.data<double>()[b] / static_cast<double>(per_sample);
        (b >= half ? prior_sum : inst_sum) += sample_mean;
    }
    LossResult r;
    r.instance_loss = inst_sum / static_cast<double>(half);
    r.prior_loss = with_prior_preservation ? prior_sum / static_cast<double>(half) : 0.0;
    r.loss = r.instance_loss + (with_prior_preservation ? prior_loss_weight * r.prior_loss : 0.0);
    return r;
}

LossResult flow_matching_loss(const LossInputs& in, double grad_scale) {
    DeferredLoss d = flow_matching_loss_deferred(in, grad_scale);
    LossResult r = d.value();
    r.grad_pred = d.grad_pred;
    return r;
}

}  // namespace sd3::train
