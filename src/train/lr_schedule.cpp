// diffusers/optimization.py get_*_schedule_with_warmup lambdas, in double as Python computes them.
#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace sd3::train {

Result<LrScheduleKind> parse_lr_schedule(const std::string& name) {
    if (name == "constant") return LrScheduleKind::CONSTANT;
    if (name == "constant_with_warmup") return LrScheduleKind::CONSTANT_WITH_WARMUP;
    if (name == "linear") return LrScheduleKind::LINEAR;
    if (name == "cosine") return LrScheduleKind::COSINE;
    if (name == "cosine_with_restarts") return LrScheduleKind::COSINE_WITH_RESTARTS;
    if (name == "polynomial") return LrScheduleKind::POLYNOMIAL;
    return make_error(ErrorCode::INVALID_ARGUMENT, "unknown --lr_scheduler '", name,
                      "'; use constant, constant_with_warmup, linear, cosine, cosine_with_restarts or polynomial");
}

const char* lr_schedule_name(LrScheduleKind k) {
    switch (k) {
        case LrScheduleKind::CONSTANT: return "constant";
        case LrScheduleKind::CONSTANT_WITH_WARMUP: return "constant_with_warmup";
        case LrScheduleKind::LINEAR: return "linear";
        case LrScheduleKind::COSINE: return "cosine";
        case LrScheduleKind::COSINE_WITH_RESTARTS: return "cosine_with_restarts";
        case LrScheduleKind::POLYNOMIAL: return "polynomial";
    }
    return "?";
}

Status validate_lr_schedule(const LrScheduleConfig& c) {
    if (c.warmup_steps < 0) return make_error(ErrorCode::INVALID_ARGUMENT, "--lr_warmup_steps must be >= 0");
    if (c.kind == LrScheduleKind::POLYNOMIAL && !(c.polynomial_lr_init > c.lr_end))
        return make_error(ErrorCode::INVALID_ARGUMENT, "polynomial schedule: lr_end (", c.lr_end,
                          ") must be smaller than the initial lr (", c.polynomial_lr_init, ")");
    return {};
}

double lr_lambda(const LrScheduleConfig& c, int64_t step) {
    const double s = static_cast<double>(step);
    const double W = static_cast<double>(c.warmup_steps);
    const double T = static_cast<double>(c.training_steps);
    const double pi = std::numbers::pi;
    switch (c.kind) {
        case LrScheduleKind::CONSTANT: return 1.0;
        case LrScheduleKind::CONSTANT_WITH_WARMUP:
            if (step < c.warmup_steps) return s / std::max(1.0, W);
            return 1.0;
        case LrScheduleKind::LINEAR: {
            if (step < c.warmup_steps) return s / std::max(1.0, W);
            const double progress = (T - s) / std::max(1.0, T - W);
            return 0.0 + (1.0 - 0.0) * std::max(0.0, progress);
        }
        case LrScheduleKind::COSINE: {
            if (step < c.warmup_steps) return s / std::max(1.0, W);
            const double progress = (s - W) / std::max(1.0, T - W);
            return std::max(0.0, 0.5 * (1.0 + std::cos(pi * 0.5 * 2.0 * progress)));
        }
        case LrScheduleKind::COSINE_WITH_RESTARTS: {
            if (step < c.warmup_steps) return s / std::max(1.0, W);
            const double progress = (s - W) / std::max(1.0, T - W);
            if (progress >= 1.0) return 0.0;
            // Python's % on floats: the result takes the sign of the divisor (progress >= 0 here anyway)
            double x = std::fmod(static_cast<double>(c.num_cycles) * progress, 1.0);
            if (x < 0) x += 1.0;
            return std::max(0.0, 0.5 * (1.0 + std::cos(pi * x)));
        }
        case LrScheduleKind::POLYNOMIAL: {
            const double lr_init = c.polynomial_lr_init;
            if (step < c.warmup_steps) return s / std::max(1.0, W);
            if (step > c.training_steps) return c.lr_end / lr_init;
            const double lr_range = lr_init - c.lr_end;
            const double decay_steps = T - W;  // ZeroDivisionError in Python when T == W: the loop never gets here
            const double pct_remaining = decay_steps == 0 ? 0.0 : 1 - (s - W) / decay_steps;
            const double decay = lr_range * std::pow(pct_remaining, c.power) + c.lr_end;
            return decay / lr_init;
        }
    }
    return 1.0;
}

}  // namespace sd3::train
