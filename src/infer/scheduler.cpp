// FlowMatchEulerDiscreteScheduler (diffusers schedulers/scheduling_flow_match_euler_discrete.py: __init__,
// set_timesteps, step), reproducing its float32/float64 arithmetic step by step.
#include "infer/scheduler.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/json_file.h"
#include "ops/ops.h"

namespace sd3 {

Result<FlowMatchSchedulerConfig> FlowMatchSchedulerConfig::from_json(const nlohmann::json& j, const std::string& path) {
    FlowMatchSchedulerConfig c;
    SD3_ASSIGN_OR_RETURN(c.num_train_timesteps, json_field_or<int64_t>(j, "num_train_timesteps", 1000, path));
    SD3_ASSIGN_OR_RETURN(c.shift, json_field_or<double>(j, "shift", 1.0, path));
    if (c.num_train_timesteps < 2 || !(c.shift > 0))
        return make_error(ErrorCode::CORRUPT_FILE, path, ": num_train_timesteps must be >= 2 and shift > 0 (got ",
                          c.num_train_timesteps, ", ", c.shift, ")");
    for (const char* key : {"use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                            "invert_sigmas", "stochastic_sampling"}) {
        SD3_ASSIGN_OR_RETURN(bool on, json_field_or<bool>(j, key, false, path));
        if (on)
            return make_error(ErrorCode::UNSUPPORTED, path, ": \"", key,
                              "\" is true; only the plain shifted schedule of SD3 is supported");
    }
    if (j.contains("shift_terminal") && !j.at("shift_terminal").is_null())
        return make_error(ErrorCode::UNSUPPORTED, path, ": \"shift_terminal\" is set; SD3 does not use it");
    return c;
}

FlowMatchEulerScheduler::FlowMatchEulerScheduler(const FlowMatchSchedulerConfig& config) : config_(config) {
    const int64_t n = config.num_train_timesteps;
    const float N = static_cast<float>(n);
    const float shift = static_cast<float>(config.shift);  // a Python float times a float32 tensor: float32 math
    train_timesteps_.resize(n);
    train_sigmas_.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        // np.linspace(1, N, N, dtype=float32)[::-1]: the integers N .. 1, exact in float32.
        const float t = static_cast<float>(n - i);
        float s = t / N;
        s = shift * s / (1.0f + (shift - 1.0f) * s);
        train_sigmas_[i] = s;
        train_timesteps_[i] = s * N;
    }
}

Result<FlowMatchEulerScheduler> FlowMatchEulerScheduler::load_folder(const std::string& dir) {
    const std::string path = (std::filesystem::path(dir) / "scheduler_config.json").string();
    SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
    SD3_ASSIGN_OR_RETURN(FlowMatchSchedulerConfig c, FlowMatchSchedulerConfig::from_json(j, path));
    return FlowMatchEulerScheduler(c);
}

FlowMatchSchedule FlowMatchEulerScheduler::inference_schedule(int64_t steps) const {
    SD3_ASSERT(steps >= 1, "inference_schedule needs at least one step, got ", steps);
    const double N = static_cast<double>(config_.num_train_timesteps);
    // _sigma_to_t of the table's ends (Python floats holding the float32 values), then numpy's linspace in float64:
    // start + i * ((stop - start) / (steps - 1)), with the last point set to stop exactly.
    const double start = static_cast<double>(sigma_max()) * N;
    const double stop = static_cast<double>(sigma_min()) * N;
    FlowMatchSchedule s;
    s.timesteps.resize(steps);
    s.sigmas.resize(steps + 1);
    const double step = steps > 1 ? (stop - start) / static_cast<double>(steps - 1) : 0.0;
    for (int64_t i = 0; i < steps; ++i) {
        double t = steps > 1 && i == steps - 1 ? stop : static_cast<double>(i) * step + start;
        double sigma = t / N;
        sigma = config_.shift * sigma / (1.0 + (config_.shift - 1.0) * sigma);  // shifted again (§8.2), float64
        const float sf = static_cast<float>(sigma);
        s.sigmas[i] = sf;
        s.timesteps[i] = sf * static_cast<float>(config_.num_train_timesteps);  // float32 tensor * int
    }
    s.sigmas[steps] = 0.0f;
    return s;
}

void flow_match_euler_step(Tensor& sample, const Tensor& velocity, float sigma, float sigma_next) {
    ops::guided_euler_step_(sample, velocity, 1.0f, sigma, sigma_next);
}

}  // namespace sd3
