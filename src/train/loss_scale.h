// Dynamic loss scaling for float16 compute. float16 keeps 5 exponent bits: the small gradients of the
// attention's softmax backward (dS = P ∘ (dP − rowsum), scaled by 1/(B·C·H·W) from the loss) fall below its
// normal range (6.1e-5) and lose their digits. The backward therefore runs on the loss gradient times a power
// of two and the float32 gradients are divided by it again, exactly. The policy is torch.amp.GradScaler's, which
// the reference script uses for --mixed_precision fp16 (through accelerate): start at 2^16, halve on a
// non-finite gradient, double after 2000 finite backwards in a row. One difference: where GradScaler skips the
// optimizer step of an overflowing update, sd3tune repeats that backward at the halved scale, so no update is
// lost. bf16 and float32 keep float32's exponent range and run unscaled (scale 1).
#pragma once

#include <cstdint>

#include "core/status.h"

namespace sd3::train {

class LossScale {
  public:
    explicit LossScale(bool enabled) : scale_(enabled ? kInitial : 1.0f), enabled_(enabled) {}

    float value() const { return scale_; }
    bool enabled() const { return enabled_; }

    // After a backward at value(): its gradients were all finite (the scale may grow) or not (it halves, and the
    // caller repeats the backward). An overflow at scale 1 means the gradient itself is not finite: an error.
    Status record(bool finite);

    static constexpr float kInitial = 65536.0f;
    static constexpr int64_t kGrowthInterval = 2000;

  private:
    float scale_;
    bool enabled_;
    int64_t finite_in_a_row_ = 0;
};

}  // namespace sd3::train
