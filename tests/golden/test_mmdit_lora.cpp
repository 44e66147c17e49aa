// Golden tests of LoRA on the MMDiT (tests/data/tiny-a/lora_and_training.safetensors, make_golden.py §7-8):
// outputs with the diffusers LoRA file at scales 1.0 / 0.5 / 0.0, unfused and fused, and one training step of the
// reference loss: model_pred, the gradients of the three inputs and of every LoRA parameter, and their norm.
// Also: activation checkpointing gives bit-identical gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "common/reference_mmdit.h"
#include "common/testing.h"
#include "io/lora_file.h"
#include "models/mmdit.h"

namespace sd3 {
namespace {

using testing::all_close;
using testing::golden_tensor;
using testing::open_golden;
using testing::tiny_path;

using testing::reference_mmdit;

LoraSet read_golden_lora() {
    auto set = read_lora_file(tiny_path("lora/pytorch_lora_weights.safetensors"));
    EXPECT_TRUE(set.ok()) << set.status().message();
    return std::move(set).value();
}

TEST(MMDiTLoraGolden, FileHasEightModulesAlphaEqualsRank) {
    const LoraSet set = read_golden_lora();
    EXPECT_EQ(set.modules.size(), 8u);  // 2 blocks x to_q, to_k, to_v, to_out.0
    for (const auto& [name, m] : set.modules) {
        EXPECT_EQ(m.rank(), 4) << name;
        EXPECT_EQ(m.alpha, 4.0f) << name;  // no metadata in the file: alpha = rank, as diffusers assumes
        EXPECT_EQ(m.A.shape(), (Shape{4, 32}));
        EXPECT_EQ(m.B.shape(), (Shape{32, 4}));
    }
    EXPECT_TRUE(set.modules.count("transformer_blocks.1.attn.to_out.0"));
}

void check_scales(bool fused) {
    const LoraSet set = read_golden_lora();
    SafetensorsFile g = open_golden("tiny-a/mmdit.safetensors");
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    for (const char* scale : {"1.0", "0.5", "0.0"}) {
        MMDiT m = reference_mmdit();
        const float s = std::stof(scale);
        const Status st = fused ? m.fuse_lora(set, s) : m.attach_lora(set, s);
        ASSERT_TRUE(st.ok()) << st.message();
        auto out = m.forward(golden_tensor(g, "0.hidden_states"), golden_tensor(g, "0.timestep"),
                             golden_tensor(g, "0.encoder_hidden_states"), golden_tensor(g, "0.pooled_projections"));
        ASSERT_TRUE(out.ok()) << out.status().message();
        // As the plain forward (test_mmdit.cpp): float32 on both sides, summation order only. Fusing rounds
        // W + s·B·A once more per element (1 ulp of W), well inside the same bound.
        const auto res = all_close(*out, golden_tensor(r, std::string("mmdit_output.scale_") + scale), 5e-6, 1e-5);
        EXPECT_TRUE(res) << (fused ? "fused" : "unfused") << " scale " << scale;
    }
}

TEST(MMDiTLoraGolden, UnfusedScales) { check_scales(false); }
TEST(MMDiTLoraGolden, FusedScales) { check_scales(true); }

TEST(MMDiTLoraGolden, TwoHalfLorasEqualOneFull) {
    // Two attached copies at 0.5 each add the same low-rank path as one at 1.0.
    const LoraSet set = read_golden_lora();
    SafetensorsFile g = open_golden("tiny-a/mmdit.safetensors");
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    MMDiT m = reference_mmdit();
    ASSERT_TRUE(m.attach_lora(set, 0.5f).ok());
    ASSERT_TRUE(m.attach_lora(set, 0.5f).ok());
    auto out = m.forward(golden_tensor(g, "0.hidden_states"), golden_tensor(g, "0.timestep"),
                         golden_tensor(g, "0.encoder_hidden_states"), golden_tensor(g, "0.pooled_projections"));
    ASSERT_TRUE(out.ok());
    EXPECT_TRUE(all_close(*out, golden_tensor(r, "mmdit_output.scale_1.0"), 5e-6, 1e-5));
}

TEST(MMDiTLoraGolden, UnknownModuleIsAnError) {
    LoraSet set = read_golden_lora();
    LoraModule extra = set.modules.begin()->second;
    set.modules["transformer_blocks.7.attn.to_q"] = extra;
    MMDiT m = reference_mmdit();
    const Status st = m.attach_lora(set, 1.0f);
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("transformer_blocks.7.attn.to_q"), std::string::npos) << st.message();
    EXPECT_FALSE(m.fuse_lora(set, 1.0f).ok());
}

// ---- the training step ----

// PEFT parameter names carry the adapter name: "….lora_A.default.weight"; our slots use the saved-file form.
std::string golden_name(const std::string& slot) {
    const size_t at = slot.rfind(".weight");
    return slot.substr(0, at) + ".default.weight";
}

struct TrainStep {
    Tensor pred;         // [2, 16, 8, 8]
    float loss = 0;
    InputGrads inputs;
    Tensor grads;        // flat LoRA gradients
    LoraTrainable lora;
};

// The reference's step (make_golden.py §8): noisy = σ·noise + (1-σ)·x0, pred = MMDiT(noisy, t, ctx, pooled),
// preconditioned pred·(-σ) + noisy against x0, loss = mean_b mean((·)²) (logit_normal: weight 1).
TrainStep run_train_step(bool checkpoint) {
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    MMDiT m = reference_mmdit();
    TrainStep out;
    auto lora = m.make_trainable_lora(LoraTrainConfig{});  // rank 4, alpha 4, to_k/to_q/to_v/to_out.0
    EXPECT_TRUE(lora.ok()) << lora.status().message();
    out.lora = std::move(lora).value();
    // Parameters before the step are the saved LoRA file's values (the script saved them, then trained).
    const Status ls = out.lora.load(read_golden_lora());
    EXPECT_TRUE(ls.ok()) << ls.message();
    EXPECT_TRUE(m.attach_trainable(out.lora).ok());

    const Tensor x0 = golden_tensor(r, "train.x0"), noise = golden_tensor(r, "train.noise");
    const Tensor sig = golden_tensor(r, "train.sigmas");  // [2]
    const int64_t B = 2, per = x0.numel() / B;
    Tensor noisy = Tensor::empty(x0.shape(), DType::F32);
    const float *px0 = x0.data<float>(), *pn = noise.data<float>(), *ps = sig.data<float>();
    float* pno = noisy.data<float>();
    for (int64_t i = 0; i < x0.numel(); ++i) {
        const float s = ps[i / per];
        pno[i] = s * pn[i] + (1.0f - s) * px0[i];
    }
    MMDiTActivations saved;
    saved.checkpoint_blocks = checkpoint;
    auto pred = m.forward(noisy, golden_tensor(r, "train.timesteps"), golden_tensor(r, "train.encoder_hidden_states"),
                          golden_tensor(r, "train.pooled_projections"), &saved);
    EXPECT_TRUE(pred.ok()) << pred.status().message();
    out.pred = *pred;

    Tensor dpred = Tensor::empty(x0.shape(), DType::F32);
    const float* pp = out.pred.data<float>();
    float* pd = dpred.data<float>();
    double loss = 0;
    for (int64_t i = 0; i < x0.numel(); ++i) {
        const float s = ps[i / per];
        const float e = pp[i] * (-s) + pno[i] - px0[i];
        loss += static_cast<double>(e) * e / static_cast<double>(per * B);
        pd[i] = 2.0f * e / static_cast<float>(per * B) * (-s);
    }
    out.loss = static_cast<float>(loss);
    m.backward(dpred, saved, out.lora.grads, &out.inputs);
    out.grads = out.lora.grads;
    return out;
}

TEST(MMDiTTrainGolden, ForwardLossAndGradients) {
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    TrainStep st = run_train_step(false);
    ASSERT_EQ(st.lora.slots.size(), 16u);
    // param_before equals what we loaded (the file) exactly.
    for (size_t i = 0; i < st.lora.slots.size(); ++i)
        EXPECT_TRUE(all_close(st.lora.param(i), golden_tensor(r, "train.param_before." + golden_name(st.lora.slots[i].name)), 0, 0));

    // Forward: as the plain forward.
    EXPECT_TRUE(all_close(st.pred, golden_tensor(r, "train.model_pred"), 5e-6, 1e-5));
    EXPECT_NEAR(st.loss, golden_tensor(r, "train.loss.logit_normal").to_float_vector()[0], 1e-6);

    // Gradients: the backward is a few times longer a chain than the forward and sums over tokens and batch;
    // both sides are float32 with different reduction orders. Input gradients are O(1e-3..1e-2) (the loss is a
    // mean over 2048 elements), LoRA gradients O(1e-5..1e-3), so tolerances are relative to each tensor's scale:
    // atol = 2e-5 x max|ref| plus rtol 1e-4 (measured worst: 1.5e-6 of the scale, i.e. >10x margin). A wrong
    // or missing term moves them by O(1) of the scale.
    auto check = [&](const Tensor& got, const std::string& key) {
        const Tensor ref = golden_tensor(r, key);
        double scale = 0;
        for (float v : ref.to_float_vector()) scale = std::max(scale, static_cast<double>(std::fabs(v)));
        const auto res = all_close(got, ref, 2e-5 * scale, 1e-4);
        EXPECT_TRUE(res) << key << " (scale " << scale << ")";
        std::cout << key << ": scale " << scale << ", " << res.message() << "\n";
    };
    check(st.inputs.hidden_states, "train.grad_input.hidden_states");
    check(st.inputs.encoder_hidden_states, "train.grad_input.encoder_hidden_states");
    check(st.inputs.pooled_projections, "train.grad_input.pooled_projections");
    double sq = 0;
    for (size_t i = 0; i < st.lora.slots.size(); ++i) {
        check(st.lora.grad(i), "train.grad." + golden_name(st.lora.slots[i].name));
        for (float v : st.lora.grad(i).to_float_vector()) sq += static_cast<double>(v) * v;
    }
    const float norm_ref = golden_tensor(r, "train.grad_norm_before_clip").to_float_vector()[0];
    EXPECT_NEAR(std::sqrt(sq), norm_ref, 1e-5 * norm_ref);
}

TEST(MMDiTTrainGolden, TrainableLoraSavesAFileThatReproducesTheOutput) {
    // trainable buffer <- golden file; buffer -> LoraSet -> our file -> LoraSet -> unfused LoRA at 1.0.
    MMDiT m = reference_mmdit();
    LoraTrainable lora = m.make_trainable_lora(LoraTrainConfig{}).value();
    ASSERT_TRUE(lora.load(read_golden_lora()).ok());
    const std::string path = ::testing::TempDir() + "/sd3_mmdit_lora_roundtrip.safetensors";
    ASSERT_TRUE(write_lora_file(path, lora.to_lora_set()).ok());
    auto set = read_lora_file(path);
    ASSERT_TRUE(set.ok()) << set.status().message();
    ASSERT_TRUE(m.attach_lora(*set, 1.0f).ok());
    SafetensorsFile g = open_golden("tiny-a/mmdit.safetensors");
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    auto out = m.forward(golden_tensor(g, "0.hidden_states"), golden_tensor(g, "0.timestep"),
                         golden_tensor(g, "0.encoder_hidden_states"), golden_tensor(g, "0.pooled_projections"));
    ASSERT_TRUE(out.ok());
    EXPECT_TRUE(all_close(*out, golden_tensor(r, "mmdit_output.scale_1.0"), 5e-6, 1e-5));
}

TEST(MMDiTTrainGolden, CheckpointingGivesBitIdenticalGradients) {
    TrainStep a = run_train_step(false);
    TrainStep b = run_train_step(true);
    auto same = [](const Tensor& x, const Tensor& y) {
        return x.numel() == y.numel() && std::memcmp(x.contiguous().raw(), y.contiguous().raw(), x.nbytes()) == 0;
    };
    EXPECT_TRUE(same(a.pred, b.pred));
    EXPECT_TRUE(same(a.grads, b.grads));
    EXPECT_TRUE(same(a.inputs.hidden_states, b.inputs.hidden_states));
    EXPECT_TRUE(same(a.inputs.encoder_hidden_states, b.inputs.encoder_hidden_states));
    EXPECT_TRUE(same(a.inputs.pooled_projections, b.inputs.pooled_projections));
}

}  // namespace
}  // namespace sd3
