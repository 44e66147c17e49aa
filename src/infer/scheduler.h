// FlowMatchEulerDiscreteScheduler as diffusers computes it for SD3 (research/sd3-architecture.md §1.8, §8.2;
// reference-training.md §5.3-5.4): the training table of num_train_timesteps shifted sigmas, the inference
// schedule of N steps (linspace in float64 between the table's ends, shifted again, cast to float32, then a
// terminal 0 appended), and the Euler step x + (sigma_next - sigma) * v in float32.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

struct FlowMatchSchedulerConfig {
    int64_t num_train_timesteps = 1000;
    double shift = 1.0;  // diffusers' default; SD3's scheduler_config.json says 3.0
    // From scheduler/scheduler_config.json. Options SD3 does not use (dynamic shifting, karras/exponential/beta
    // sigmas, shift_terminal, inverted sigmas, stochastic sampling) are refused, not ignored.
    static Result<FlowMatchSchedulerConfig> from_json(const nlohmann::json& j, const std::string& config_path);
};

struct FlowMatchSchedule {
    std::vector<float> timesteps;  // [N]     what the transformer is given at step i (sigma * 1000)
    std::vector<float> sigmas;     // [N + 1] the noise level before step i; sigmas[N] = 0
};

class FlowMatchEulerScheduler {
  public:
    explicit FlowMatchEulerScheduler(const FlowMatchSchedulerConfig& config = {});
    static Result<FlowMatchEulerScheduler> load_folder(const std::string& dir);  // a `scheduler/` folder

    const FlowMatchSchedulerConfig& config() const { return config_; }
    // The training table (scheduler.timesteps / scheduler.sigmas after __init__): index 0 is the noisiest,
    // num_train_timesteps entries each, no terminal zero.
    const std::vector<float>& train_timesteps() const { return train_timesteps_; }
    const std::vector<float>& train_sigmas() const { return train_sigmas_; }
    float sigma_min() const { return train_sigmas_.back(); }
    float sigma_max() const { return train_sigmas_.front(); }

    // set_timesteps(steps): steps >= 1.
    FlowMatchSchedule inference_schedule(int64_t steps) const;

  private:
    FlowMatchSchedulerConfig config_;
    std::vector<float> train_timesteps_, train_sigmas_;
};

// One Euler step in place, in float32 as diffusers' step(): sample += (sigma_next - sigma) * velocity.
// sample and velocity: same shape, f32, on one device (ops::guided_euler_step_ without guidance).
void flow_match_euler_step(Tensor& sample, const Tensor& velocity, float sigma, float sigma_next);

}  // namespace sd3
