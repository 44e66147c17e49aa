// The transformer's blocks streamed under a memory budget (MMDiT::to with max_resident_bytes, `--max-vram`):
// blocks beyond the budget are packed in host memory and each forward and backward brings them in, taking turns in
// two slots (nn/streamed_blocks.h). On the CPU the "device" is another host allocation: the same code path as on
// a GPU minus the transfer, so the output and the LoRA gradients must equal the resident model's bit for bit, for
// every budget, with and without activation checkpointing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "common/random_mmdit.h"
#include "common/reference_mmdit.h"
#include "common/testing.h"
#include "models/mmdit.h"

namespace sd3 {
namespace {

using testing::golden_tensor;
using testing::open_golden;
using Step = testing::TrainingStep;

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
        // Blocks of ~150 KB: none resident; still none (one block and a slot for the other take as much as both);
        // all.
        for (size_t budget : {size_t{0}, size_t{200000}, SIZE_MAX - 1}) {
            SCOPED_TRACE(str_cat("budget ", budget, checkpoint ? ", checkpointing" : ""));
            MMDiT streamed = testing::reference_mmdit();
            ASSERT_TRUE(streamed.to(nn::Placement{}, std::nullopt, budget).ok());
            EXPECT_EQ(streamed.resident_blocks(), budget == SIZE_MAX - 1 ? blocks : 0);
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

// Block i's bytes as placed in float32: each tensor in its own 256-byte aligned slot (nn::WeightPlacer).
size_t block_bytes(const testing::MapSource& weights, int i) {
    const std::string prefix = str_cat("transformer_blocks.", i, ".");
    size_t n = 0;
    for (const auto& [name, t] : weights.t)
        if (name.starts_with(prefix)) n += (t.nbytes() + 255) / 256 * 256;
    return n;
}

// Five blocks streamed through two slots, twice in a row: each slot is refilled as the blocks take turns, the
// backward starts on the block the forward left in place, and the second step finds the slots as the first left
// them. Every step equals the resident model's bit for bit.
TEST(MMDiTStreaming, FiveBlocksTakeTurnsInTwoSlots) {
    testing::OneOmpThread one;
    MMDiTConfig c = testing::small_config();
    c.num_layers = 5;
    std::mt19937 rng(21);
    const auto weights = testing::random_weights(c, rng);
    const testing::RandomInputs in = testing::random_inputs(rng);
    auto steps = [&](MMDiT& m, bool checkpoint) {
        LoraTrainable lora = m.make_trainable_lora(LoraTrainConfig{}).value();
        for (int64_t k = 0; k < lora.numel; ++k) lora.params.data<float>()[k] = 0.05f * std::sin(0.37f * k);
        EXPECT_TRUE(m.attach_trainable(lora).ok());
        std::vector<Step> out = testing::two_training_steps(m, in, checkpoint, lora.numel, Device{});
        m.detach_loras();
        return out;
    };
    MMDiT resident = MMDiT::create(c, weights).value();
    for (bool checkpoint : {false, true}) {
        const std::vector<Step> ref = steps(resident, checkpoint);
        EXPECT_TRUE(testing::all_close(ref[0].pred, ref[1].pred, 0, 0));
        for (int want_resident : {0, 2}) {
            SCOPED_TRACE(str_cat(want_resident, " resident", checkpoint ? ", checkpointing" : ""));
            MMDiT streamed = MMDiT::create(c, weights).value();
            // Blocks 0 and 1 plus two slots of the largest of the rest: room for two resident blocks, not three.
            const size_t budget = want_resident == 0 ? 0
                                                     : block_bytes(*weights, 0) + block_bytes(*weights, 1) +
                                                           2 * std::max({block_bytes(*weights, 2), block_bytes(*weights, 3),
                                                                         block_bytes(*weights, 4)});
            ASSERT_TRUE(streamed.to(nn::Placement{}, std::nullopt, budget).ok());
            ASSERT_EQ(streamed.resident_blocks(), want_resident);
            const std::vector<Step> got = steps(streamed, checkpoint);
            for (size_t i = 0; i < got.size(); ++i) {
                EXPECT_TRUE(testing::all_close(got[i].pred, ref[i].pred, 0, 0)) << "step " << i;
                EXPECT_TRUE(testing::all_close(got[i].grads, ref[i].grads, 0, 0)) << "step " << i;
            }
        }
    }
}

TEST(StreamedBlocks, ResidentCountLeavesRoomForTheSlots) {
    const std::vector<size_t> five(5, 10);
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, SIZE_MAX), 5u);
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, 50), 5u);  // all fit: no slots
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, 49), 2u);  // 3 + 2 slots, 4 + 1 slot need 50
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, 40), 2u);
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, 39), 1u);
    EXPECT_EQ(nn::StreamedBlocks::resident_count(five, 5), 0u);   // even the slots do not fit: all streamed
    // The slots take the size of the largest streamed block.
    EXPECT_EQ(nn::StreamedBlocks::resident_count({10, 10, 10, 30}, 59), 0u);  // 3 + a slot of 30 need 60
    EXPECT_EQ(nn::StreamedBlocks::resident_count({30, 10, 10, 10}, 50), 1u);  // 30 + 2 slots of 10
}

}  // namespace
}  // namespace sd3
