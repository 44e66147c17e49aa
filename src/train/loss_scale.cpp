#include "train/loss_scale.h"

namespace sd3::train {

Status LossScale::record(bool finite) {
    if (finite) {
        if (enabled_ && ++finite_in_a_row_ == kGrowthInterval) {
            scale_ *= 2.0f;
            finite_in_a_row_ = 0;
        }
        return {};
    }
    finite_in_a_row_ = 0;
    if (scale_ <= 1.0f)
        return make_error(ErrorCode::INTERNAL, "the gradients are not finite even without loss scaling; lower "
                                               "--learning_rate, or train with --mixed_precision bf16 or no");
    scale_ *= 0.5f;
    return {};
}

}  // namespace sd3::train
