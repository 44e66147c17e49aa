// The transformer's blocks streamed under a memory budget (MMDiT::to with max_resident_bytes, `--max-vram`):
// blocks beyond the budget stay in host memory and each forward and backward brings them in one at a time. On the
// CPU the "device" is another host allocation: the same code path as on a GPU minus the transfer, so the output
// and the LoRA gradients must equal the resident model's bit for bit, for every budget, with and without
// activation checkpointing.
#include <gtest/gtest.h>

#include <cmath>

#include "common/reference_mmdit.h"
#include "common/testing.h"
#include "models/mmdit.h"

namespace sd3 {
namespace {

using testing::golden_tensor;
using testing::open_golden;


struct Step {
    Tensor pred, grads;
};

// A forward and backward with a rank-4 LoRA of fixed non-zero values (d loss / d pred = pred).
Step run_step(MMDiT& m, bool checkpoint) {
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    LoraTrainable lora = m.make_trainable_lora(LoraTrainConfig{}).value();
    for (size_t i = 0; i < lora.slots.size(); ++i) {
        Tensor p = lora.param(i);
        for (int64_t k = 0; k < p.numel(); ++k) p.data<float>()[k] = 0.01f * std::cos(0.29f * (k + 7 * i));
    }
    EXPECT_TRUE(m.attach_trainable(lora).ok());
    MMDiTActivations saved;
    saved.checkpoint_blocks = checkpoint;
    auto pred = m.forward(golden_tensor(r, "train.x0"), golden_tensor(r, "train.timesteps"),
                          golden_tensor(r, "train.encoder_hidden_states"), golden_tensor(r, "train.pooled_projections"),
                          &saved);
    EXPECT_TRUE(pred.ok()) << pred.status().message();
    m.backward(*pred, saved, lora.grads);
    m.detach_loras();
    return {*pred, lora.grads.clone()};
}

TEST(MMDiTStreaming, EveryBudgetGivesTheResidentResultsBitForBit) {
    MMDiT resident = testing::reference_mmdit();
    const int blocks = static_cast<int>(resident.config().num_layers);
    EXPECT_EQ(resident.resident_blocks(), blocks);
    for (bool checkpoint : {false, true}) {
        const Step ref = run_step(resident, checkpoint);
        for (size_t budget : {size_t{0}, size_t{200000}, SIZE_MAX - 1}) {  // none, one block (~150 KB), all
            SCOPED_TRACE(str_cat("budget ", budget, checkpoint ? ", checkpointing" : ""));
            MMDiT streamed = testing::reference_mmdit();
            ASSERT_TRUE(streamed.to(nn::Placement{}, std::nullopt, budget).ok());
            EXPECT_EQ(streamed.resident_blocks(), budget == 0 ? 0 : budget == 200000 ? 1 : blocks);
            const Step got = run_step(streamed, checkpoint);
            EXPECT_TRUE(testing::all_close(got.pred, ref.pred, 0, 0));
            EXPECT_TRUE(testing::all_close(got.grads, ref.grads, 0, 0));
        }
    }
}

// With quantized block weights the streamed blocks carry their quantized data: still the resident result.
TEST(MMDiTStreaming, QuantizedBlocksStreamToo) {
    MMDiT resident = testing::reference_mmdit();
    ASSERT_TRUE(resident.to(nn::Placement{}, QuantFormat::INT8_ROW).ok());
    MMDiT streamed = testing::reference_mmdit();
    ASSERT_TRUE(streamed.to(nn::Placement{}, QuantFormat::INT8_ROW, 0).ok());
    EXPECT_EQ(streamed.resident_blocks(), 0);
    const Step ref = run_step(resident, true), got = run_step(streamed, true);
    EXPECT_TRUE(testing::all_close(got.pred, ref.pred, 0, 0));
    EXPECT_TRUE(testing::all_close(got.grads, ref.grads, 0, 0));
}

}  // namespace
}  // namespace sd3
