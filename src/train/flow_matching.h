// Rectified-flow training maths of the reference (reference-training.md 3.5, Appendix B): timestep sampling per
// --weighting_scheme (diffusers.training_utils.compute_density_for_timestep_sampling), the training sigma table of
// FlowMatchEulerDiscreteScheduler, the noisy input x_t = sigma*eps + (1-sigma)*x0, the loss weighting
// (compute_loss_weighting_for_sd3), and the loss with its gradient with respect to the model prediction,
// preconditioned (target x0) or not (--precondition_outputs 0: target eps - x0), with prior preservation.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "ops/device.h"
#include "train/train_rng.h"

namespace sd3::train {

enum class WeightingScheme { SIGMA_SQRT, LOGIT_NORMAL, MODE, COSMAP, NONE };
Result<WeightingScheme> parse_weighting_scheme(const std::string& name);
const char* weighting_scheme_name(WeightingScheme s);

struct TimestepSampling {
    WeightingScheme scheme = WeightingScheme::LOGIT_NORMAL;
    double logit_mean = 0.0, logit_std = 1.0, mode_scale = 1.29;
};

// FlowMatchEulerDiscreteScheduler.__init__ in float32: t_k = 1000 - k (k = 0..N-1), sigma_k = shift*s/(1+(shift-1)s)
// with s = t_k/N, timesteps_k = N*sigma_k.
struct SigmaTable {
    std::vector<float> sigmas;     // [N]
    std::vector<float> timesteps;  // [N]
    static SigmaTable make(int num_train_timesteps = 1000, double shift = 3.0);
};

// u in [0, 1] for a batch of B: logit_normal: sigmoid(N(mean, std)); mode: 1 - v - s*(cos^2(pi v/2) - 1 + v),
// v ~ U[0,1); others: U[0,1). float32 as torch computes it.
std::vector<float> sample_u(const TimestepSampling& cfg, int64_t batch, TrainRng& rng);
// u given the raw draw (a standard normal for logit_normal, a uniform for the others).
float u_from_draw(const TimestepSampling& cfg, float draw);
// index = (u * N).long(), kept <= N-1 (the mode scheme's u = 1 edge would index past the table in the reference).
int64_t timestep_index(float u, int num_train_timesteps = 1000);

// compute_loss_weighting_for_sd3: sigma_sqrt 1/sigma^2; cosmap 2/(pi(1 - 2 sigma + 2 sigma^2)); else 1.
float loss_weighting(WeightingScheme s, float sigma);

// x_t = sigma_b * noise + (1 - sigma_b) * x0, per sample b. x0, noise [B, ...]; sigmas [B].
Tensor noisy_input(const Tensor& x0, const Tensor& noise, const std::vector<float>& sigmas);

// model_pred may be on a GPU (in its compute dtype); noisy, x0 and noise are f32 on the same device.
struct LossInputs {
    Tensor model_pred;   // [B, C, H, W] the transformer's output (velocity)
    Tensor noisy;        // [B, C, H, W] x_t
    Tensor x0;           // [B, C, H, W] clean latents
    Tensor noise;        // [B, C, H, W]
    std::vector<float> sigmas;     // [B]
    std::vector<float> weighting;  // [B]
    bool precondition_outputs = true;
    // Prior preservation: the batch is [instance half, class half]; loss = L_inst + prior_loss_weight * L_prior,
    // each the mean over its half (weighting split too, as upstream >= 387a47156e).
    bool with_prior_preservation = false;
    double prior_loss_weight = 1.0;
};

struct LossResult {
    double loss = 0;           // the total loss (as logged)
    double instance_loss = 0;  // the instance part
    double prior_loss = 0;     // the prior part (before prior_loss_weight), 0 without prior preservation
    Tensor grad_pred;          // [B, C, H, W] d(loss * grad_scale) / d(model_pred)
};

// The loss as the device computes it: the gradient is ready for the backward in the device's order, and the
// value is on its way to the host; value() waits for that copy alone (not for the backward queued after it).
struct DeferredLoss {
    Tensor grad_pred;          // [B, C, H, W] f32, where model_pred is
    PendingDownload sample_sums;  // [B] f64: Σ w·(out - target)² of each sample
    int64_t per_sample = 0, half = 0;
    bool with_prior_preservation = false;
    double prior_loss_weight = 1.0;
    // loss, instance_loss and prior_loss (grad_pred left empty). Once.
    LossResult value();
};

// grad_scale multiplies the gradient only (1 / gradient_accumulation_steps, as accelerator.backward divides).
DeferredLoss flow_matching_loss_deferred(const LossInputs& in, double grad_scale = 1.0);
// The two halves of that for a step that computes the loss inside a recording (the trainer's CUDA graph), where
// model_pred is not known yet: the per-sample constants as ops::loss_sample_table (CPU) for a prediction of
// `pred_shape`, and the DeferredLoss whose per-sample sums arrive through `sums`.
Tensor loss_sample_table(const LossInputs& in, const Shape& pred_shape, double grad_scale = 1.0);
DeferredLoss deferred_loss(const LossInputs& in, const Shape& pred_shape, PendingDownload sums);
LossResult flow_matching_loss(const LossInputs& in, double grad_scale = 1.0);

}  // namespace sd3::train
