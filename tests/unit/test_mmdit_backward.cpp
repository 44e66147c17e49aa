// The whole MMDiT backward against finite differences on a random SD3.5-style model built in memory (qk-norm,
// a dual-attention layer, a pre-only last block, non-square latents, batch 2), with trainable LoRA on every Linear
// of the model (dropout on), for the three inputs and every LoRA parameter; checkpointing on/off bit-identical;
// LoRA layout, targeting and init.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "common/fd_check.h"
#include "common/random_mmdit.h"
#include "common/testing.h"
#include "models/mmdit.h"
#include "ops/mmdit_ops.h"

namespace sd3 {
namespace {

using testing::directional_check;
using testing::dot;
using testing::random_tensor;
using testing::random_weights;
using testing::small_config;

const std::vector<std::string> kAllLinears = {
    "to_q",       "to_k",        "to_v",          "to_out.0",       "add_q_proj",       "add_k_proj",
    "add_v_proj", "to_add_out",  "ff.net.0.proj", "ff.net.2",       "ff_context.net.0.proj", "ff_context.net.2",
    "norm1.linear", "norm1_context.linear", "linear_1", "linear_2", "context_embedder", "norm_out.linear",
    "proj_out"};

struct Fixture {
    MMDiT model;
    LoraTrainable lora;
    Tensor x, t, ctx, pooled, r;
};

Fixture make_fixture(float dropout, std::mt19937& rng) {
    const MMDiTConfig c = small_config();
    auto m = MMDiT::create(c, random_weights(c, rng));
    EXPECT_TRUE(m.ok()) << m.status().message();
    Fixture f{std::move(m).value(), {}, {}, {}, {}, {}, {}};
    LoraTrainConfig lc;
    lc.rank = 2;
    lc.alpha = 3.0f;
    lc.dropout = dropout;
    lc.target_modules = kAllLinears;
    auto lora = f.model.make_trainable_lora(lc);
    EXPECT_TRUE(lora.ok()) << lora.status().message();
    f.lora = std::move(lora).value();
    // Non-zero B (unlike the gaussian init) so that the A gradients are not trivially zero.
    std::normal_distribution<float> nd(0.0f, 0.3f);
    float* p = f.lora.params.data<float>();
    for (int64_t i = 0; i < f.lora.numel; ++i) p[i] = nd(rng);
    EXPECT_TRUE(f.model.attach_trainable(f.lora).ok());
    f.x = random_tensor({2, 4, 4, 6}, rng);  // 2x3 patches (non-square) inside the 4x4 table
    f.t = Tensor::from_vector({2}, {250.0f, 731.5f});
    f.ctx = random_tensor({2, 3, 6}, rng);
    f.pooled = random_tensor({2, 5}, rng);
    f.r = random_tensor({2, 4, 4, 6}, rng);
    return f;
}

struct Grads {
    Tensor pred, lora;
    InputGrads in;
};

Grads run(Fixture& f, bool checkpoint, uint64_t seed, int64_t kept_blocks = 0) {
    MMDiTActivations saved;
    saved.checkpoint_blocks = checkpoint;
    saved.kept_blocks = kept_blocks;
    saved.ctx.seed = seed;
    auto pred = f.model.forward(f.x, f.t, f.ctx, f.pooled, &saved);
    EXPECT_TRUE(pred.ok()) << pred.status().message();
    f.lora.grads.fill(0.0);
    Grads g;
    g.pred = *pred;
    f.model.backward(f.r, saved, f.lora.grads, &g.in);
    g.lora = f.lora.grads.clone();
    return g;
}

TEST(MMDiTBackward, FiniteDifferencesThroughTheWholeModel) {
    testing::OneOmpThread one;
    std::mt19937 rng(11);
    Fixture f = make_fixture(0.2f, rng);
    const uint64_t seed = 99;  // dropout masks are a function of the seed, so the loss is a smooth function
    const Grads g = run(f, false, seed);
    auto loss = [&] {
        MMDiTActivations s;  // training context (dropout on) with the same seed, no backward
        s.ctx.seed = seed;
        auto y = f.model.forward(f.x, f.t, f.ctx, f.pooled, &s);
        return dot(*y, f.r);
    };
    // Three float32 blocks with adaLN products: outputs up to ~10, and the loss carries float rounding noise of
    // ~2.5e-5 (measured: the quotient's error grows as 1/h, 0.04 at h = 3e-4), i.e. ~1.2e-3 in a quotient at
    // h = 1e-2. There the h² truncation is still 0.5% for parameters that act through temb on every block
    // (derivatives ~50-100), so the quotient is Richardson-extrapolated (h⁴ truncation, ~4e-3 noise).
    // Tolerance 1e-2 absolute + 2e-3 relative on directional derivatives of O(0.1-100); a wrong term is an O(1)
    // relative error.
    const double h = 1e-2, atol = 1e-2, rtol = 2e-3;
    EXPECT_TRUE(directional_check(f.x, g.in.hidden_states, loss, rng, h, atol, rtol, 3, true)) << "hidden_states";
    EXPECT_TRUE(directional_check(f.ctx, g.in.encoder_hidden_states, loss, rng, h, atol, rtol, 3, true)) << "context";
    EXPECT_TRUE(directional_check(f.pooled, g.in.pooled_projections, loss, rng, h, atol, rtol, 3, true)) << "pooled";
    // Every LoRA parameter tensor on its own (A and B of every Linear of the model).
    for (size_t i = 0; i < f.lora.slots.size(); ++i) {
        Tensor p = f.lora.param(i);  // a view into the buffer the adapters read
        const Tensor gi = g.lora.slice(0, f.lora.slots[i].offset, f.lora.slots[i].offset + p.numel()).view(p.shape());
        // directional_check perturbs through a contiguous tensor; the view is contiguous and shares storage.
        EXPECT_TRUE(directional_check(p, gi, loss, rng, h, atol, rtol, 1, true)) << f.lora.slots[i].name;
    }
}

TEST(MMDiTBackward, LastBlockContextQueriesGetNoGradient) {
    testing::OneOmpThread one;
    std::mt19937 rng(12);
    Fixture f = make_fixture(0.0f, rng);
    const Grads g = run(f, false, 0);
    const LoraSlot* a = f.lora.find("transformer_blocks.2.attn.add_q_proj.lora_A.weight");
    ASSERT_NE(a, nullptr);
    for (int64_t i = 0; i < shape_numel(a->shape); ++i) EXPECT_EQ(g.lora.data<float>()[a->offset + i], 0.0f);
    // ...whereas block 1's are non-zero.
    const LoraSlot* b = f.lora.find("transformer_blocks.1.attn.add_q_proj.lora_A.weight");
    ASSERT_NE(b, nullptr);
    double s = 0;
    for (int64_t i = 0; i < shape_numel(b->shape); ++i) s += std::fabs(g.lora.data<float>()[b->offset + i]);
    EXPECT_GT(s, 0.0);
}

TEST(MMDiTBackward, CheckpointingIsBitIdenticalWithDropout) {
    testing::OneOmpThread one;
    std::mt19937 rng(13);
    Fixture f = make_fixture(0.3f, rng);
    const Grads a = run(f, false, 5), c = run(f, false, 6);
    auto same = [](const Tensor& x, const Tensor& y) {
        return x.numel() == y.numel() && std::memcmp(x.contiguous().raw(), y.contiguous().raw(), x.nbytes()) == 0;
    };
    for (int64_t kept : {0, 1, 2, 3}) {  // the last `kept` of the 3 blocks skip their recompute
        SCOPED_TRACE(::testing::Message() << "kept blocks " << kept);
        const Grads b = run(f, true, 5, kept);
        EXPECT_TRUE(same(a.pred, b.pred));
        EXPECT_TRUE(same(a.lora, b.lora));
        EXPECT_TRUE(same(a.in.hidden_states, b.in.hidden_states));
        EXPECT_TRUE(same(a.in.encoder_hidden_states, b.in.encoder_hidden_states));
        EXPECT_TRUE(same(a.in.pooled_projections, b.in.pooled_projections));
    }
    EXPECT_FALSE(same(a.lora, c.lora));  // another seed draws other dropout masks
}

TEST(MMDiTBackward, GradientsAccumulate) {
    testing::OneOmpThread one;
    std::mt19937 rng(14);
    Fixture f = make_fixture(0.0f, rng);
    MMDiTActivations saved;
    ASSERT_TRUE(f.model.forward(f.x, f.t, f.ctx, f.pooled, &saved).ok());
    f.lora.grads.fill(0.0);
    f.model.backward(f.r, saved, f.lora.grads);
    const Tensor once = f.lora.grads.clone();
    f.model.backward(f.r, saved, f.lora.grads);
    EXPECT_TRUE(testing::all_close(f.lora.grads, ops::scale(once, 2.0f), 1e-7, 1e-6));
}

// ---- LoRA layout and targets ----

TEST(MMDiTLora, LayoutFollowsTargetsAndBlocks) {
    std::mt19937 rng(15);
    const MMDiTConfig c = small_config();
    MMDiT m = MMDiT::create(c, random_weights(c, rng)).value();
    LoraTrainConfig lc;  // reference default: to_k, to_q, to_v, to_out.0, rank 4
    LoraTrainable l = m.make_trainable_lora(lc).value();
    // 3 blocks x 4 joint-attention modules + the dual layer's attn2 (also named to_q/...): 16 modules.
    EXPECT_EQ(l.modules.size(), 16u);
    EXPECT_EQ(l.slots.size(), 32u);
    EXPECT_EQ(l.slots[0].name, "transformer_blocks.0.attn.to_q.lora_A.weight");
    EXPECT_EQ(l.slots[0].shape, (Shape{4, 8}));
    EXPECT_EQ(l.slots[1].name, "transformer_blocks.0.attn.to_q.lora_B.weight");
    EXPECT_EQ(l.slots[1].offset, 32);
    EXPECT_EQ(l.numel, 16 * (4 * 8 + 8 * 4));
    EXPECT_EQ(l.params.numel(), l.numel);
    EXPECT_EQ(l.grads.numel(), l.numel);
    // the block filter (upstream --lora_blocks)
    lc.blocks = {2};
    lc.target_modules = {"add_k_proj", "ff.net.2"};
    l = m.make_trainable_lora(lc).value();
    EXPECT_EQ(l.modules, (std::vector<std::string>{"transformer_blocks.2.attn.add_k_proj", "transformer_blocks.2.ff.net.2"}));
    // a target matching nothing (to_add_out does not exist in the pre-only block 2) is an error naming it
    lc.target_modules = {"to_add_out"};
    auto bad = m.make_trainable_lora(lc);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("to_add_out"), std::string::npos);
}

TEST(MMDiTLora, GaussianInitAndRoundTripThroughLoraSet) {
    std::mt19937 rng(16);
    const MMDiTConfig c = small_config();
    MMDiT m = MMDiT::create(c, random_weights(c, rng)).value();
    LoraTrainConfig lc;
    lc.rank = 8;
    lc.target_modules = {"ff.net.0.proj"};
    LoraTrainable l = m.make_trainable_lora(lc).value();
    std::mt19937 g(3);
    std::normal_distribution<float> nd;
    init_lora_gaussian(l, [&] { return nd(g); });
    // A ~ N(0, (1/r)^2): sample std of 3 x 8 x 8 = 192 values near 0.125; B = 0 so the LoRA starts as identity.
    double sq = 0;
    int64_t n = 0;
    for (size_t m2 = 0; m2 < l.modules.size(); ++m2) {
        for (float v : l.param(2 * m2).to_float_vector()) {
            sq += static_cast<double>(v) * v;
            ++n;
        }
        for (float v : l.param(2 * m2 + 1).to_float_vector()) EXPECT_EQ(v, 0.0f);
    }
    EXPECT_NEAR(std::sqrt(sq / n), 0.125, 0.02);  // 192 samples: relative std error ~5%
    const LoraSet set = l.to_lora_set();
    EXPECT_EQ(set.modules.size(), 3u);
    EXPECT_EQ(set.modules.begin()->second.alpha, 8.0f);
    LoraTrainable l2 = m.make_trainable_lora(lc).value();
    ASSERT_TRUE(l2.load(set).ok());
    EXPECT_TRUE(testing::all_close(l2.params, l.params, 0, 0));
    lc.rank = 4;
    LoraTrainable l3 = m.make_trainable_lora(lc).value();
    EXPECT_FALSE(l3.load(set).ok());  // other rank: an error, not a silent reshape
    // PEFT's default init: A within ±1/sqrt(in) = ±1/sqrt(8), B = 0.
    std::uniform_real_distribution<float> ud(0.0f, 1.0f);
    init_lora_kaiming_uniform(l3, [&] { return ud(g); });
    float mx = 0;
    for (float v : l3.param(0).to_float_vector()) mx = std::max(mx, std::fabs(v));
    EXPECT_LE(mx, 1.0f / std::sqrt(8.0f));
    EXPECT_GT(mx, 0.5f / std::sqrt(8.0f));  // 32 draws: the largest is below half the bound with chance 2^-32
    for (float v : l3.param(1).to_float_vector()) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace sd3

namespace sd3 {
namespace {

TEST(MMDiTBackward, CheckpointingKeepsOnlyBlockInputs) {
    testing::OneOmpThread one;
    std::mt19937 rng(17);
    Fixture f = make_fixture(0.0f, rng);
    MMDiTActivations full, ckpt;
    ckpt.checkpoint_blocks = true;
    ASSERT_TRUE(f.model.forward(f.x, f.t, f.ctx, f.pooled, &full).ok());
    ASSERT_TRUE(f.model.forward(f.x, f.t, f.ctx, f.pooled, &ckpt).ok());
    // Block inputs are [2, 6, 8] and [2, 3, 8] floats; a full block keeps many times more.
    EXPECT_LT(ckpt.bytes(), full.bytes() / 3) << ckpt.bytes() << " vs " << full.bytes();
    EXPECT_GT(ckpt.bytes(), 0u);
}

TEST(MMDiTBackward, ActivationPlanMatchesWhatForwardKeeps) {
    testing::OneOmpThread one;
    for (float dropout : {0.0f, 0.1f}) {
        for (bool all : {false, true}) {
            std::mt19937 rng(19);
            const MMDiTConfig c = small_config();
            MMDiT m = MMDiT::create(c, random_weights(c, rng)).value();
            LoraTrainConfig lc;
            lc.dropout = dropout;
            if (all) lc.target_modules = kAllLinears;
            LoraTrainable lora = m.make_trainable_lora(lc).value();
            ASSERT_TRUE(m.attach_trainable(lora).ok());
            // A batch of one: the output projections read views of the attention output, not copies.
            for (int64_t B : {1, 2}) {
                const Tensor x = random_tensor({B, 4, 4, 6}, rng), ctx = random_tensor({B, 3, 6}, rng);
                std::vector<float> steps = {1.0f, 2.0f};
                steps.resize(B);
                const Tensor t = Tensor::from_vector({B}, steps), pooled = random_tensor({B, 5}, rng);
                for (const auto& [ckpt, kept] : {std::pair{false, 0}, {true, 0}, {true, 1}}) {
                    SCOPED_TRACE(::testing::Message() << "batch " << B << " dropout " << dropout << " all " << all
                                                      << " ckpt " << ckpt << " kept " << kept);
                    MMDiTActivations s;
                    s.checkpoint_blocks = ckpt;
                    s.kept_blocks = kept;
                    ASSERT_TRUE(m.forward(x, t, ctx, pooled, &s).ok());
                    const ActivationPlan plan = m.plan_activations(B, 4, 6, 3, ckpt, kept);
                    // bytes() also counts the caller's inputs where an adapted Linear keeps them (context_embedder,
                    // text linear_1) and the sinusoid (time linear_1): the plan counts those as the layer's input too.
                    EXPECT_EQ(plan.total(), s.bytes());
                    if (ckpt) EXPECT_GT(plan.recompute, 0u);
                }
            }
        }
    }
}

TEST(MMDiTBackward, SkipLayersSkipsBlocks) {
    testing::OneOmpThread one;
    std::mt19937 rng(18);
    Fixture f = make_fixture(0.0f, rng);
    auto a = f.model.forward(f.x, f.t, f.ctx, f.pooled, nullptr);
    auto b = f.model.forward(f.x, f.t, f.ctx, f.pooled, nullptr, {1});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_FALSE(testing::all_close(*a, *b, 1e-3, 1e-3));
    EXPECT_FALSE(f.model.forward(f.x, f.t, f.ctx, f.pooled, nullptr, {3}).ok());  // only 3 blocks
    MMDiTActivations s;
    EXPECT_FALSE(f.model.forward(f.x, f.t, f.ctx, f.pooled, &s, {1}).ok());  // inference only
}

}  // namespace
}  // namespace sd3
