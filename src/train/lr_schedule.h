// Learning-rate schedules of diffusers.optimization.get_scheduler (reference-training.md 3.6), as the factor
// lambda(s) that torch's LambdaLR multiplies the base LR by. The k-th optimizer update (1-based) uses
// lambda(k - 1): warm-up starts at LR 0, as the reference does.
#pragma once

#include <string>

#include "core/status.h"

namespace sd3::train {

enum class LrScheduleKind { CONSTANT, CONSTANT_WITH_WARMUP, LINEAR, COSINE, COSINE_WITH_RESTARTS, POLYNOMIAL };

struct LrScheduleConfig {
    LrScheduleKind kind = LrScheduleKind::CONSTANT;
    int64_t warmup_steps = 0;     // --lr_warmup_steps (ignored by constant, as in diffusers)
    int64_t training_steps = 0;   // --max_train_steps
    int num_cycles = 1;           // --lr_num_cycles: cosine_with_restarts only (get_scheduler does not pass it
                                  // to cosine, which keeps 0.5)
    double power = 1.0;           // --lr_power (polynomial)
    double lr_end = 1e-7;         // polynomial's end LR (diffusers' default; get_scheduler does not expose it)
    // polynomial's lr_init is optimizer.defaults["lr"]: the optimizer class default (1e-3 for torch AdamW and
    // bitsandbytes AdamW8bit, whose LR comes per param group) or the constructor lr (Prodigy).
    double polynomial_lr_init = 1e-3;
};

Result<LrScheduleKind> parse_lr_schedule(const std::string& name);
const char* lr_schedule_name(LrScheduleKind k);

// Checks the combination (polynomial needs lr_init > lr_end, as diffusers raises).
Status validate_lr_schedule(const LrScheduleConfig& c);

// lambda(step) for scheduler position `step` (0-based count of scheduler.step() calls so far).
double lr_lambda(const LrScheduleConfig& c, int64_t step);

// The LR of the k-th optimizer update (k >= 1): base_lr * lambda(k - 1).
inline double lr_for_update(const LrScheduleConfig& c, double base_lr, int64_t k) {
    return base_lr * lr_lambda(c, k - 1);
}

}  // namespace sd3::train
