// Optimizers: the golden clip + AdamW step of lora_and_training.safetensors, multi-step AdamW and Prodigy against
// torch/prodigyopt (tests/data/train/reference.safetensors from scripts/make_train_fixtures.py), bitsandbytes'
// quantization maps, 8-bit AdamW against AdamW, and checkpoint state round trips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/testing.h"
#include "ops/cpu/train_ops.h"
#include "train/optimizer.h"
#include "train/train_rng.h"

namespace sd3::train {
namespace {

using sd3::testing::all_close;
using sd3::testing::golden_tensor;
using sd3::testing::open_golden;
using sd3::cpu::dynamic_quant_map;
using sd3::cpu::quantize_nearest;

// The golden LoRA parameters, flattened in name order (any fixed order works: the update is elementwise).
struct FlatSet {
    std::vector<std::string> names;
    std::vector<ParamSegment> segments;
    std::vector<float> before, grad, after;
};

FlatSet load_golden_step() {
    SafetensorsFile f = open_golden("tiny-a/lora_and_training.safetensors");
    FlatSet s;
    for (const TensorInfo& t : f.tensors())
        if (t.name.rfind("train.grad.", 0) == 0) s.names.push_back(t.name.substr(11));
    std::sort(s.names.begin(), s.names.end());
    for (const std::string& n : s.names) {
        auto append = [&](const std::string& key, std::vector<float>& dst) {
            const std::vector<float> v = golden_tensor(f, key + n).to_float_vector();
            dst.insert(dst.end(), v.begin(), v.end());
            return static_cast<int64_t>(v.size());
        };
        const int64_t off = static_cast<int64_t>(s.before.size());
        const int64_t numel = append("train.param_before.", s.before);
        append("train.grad.", s.grad);
        append("train.param_after.", s.after);
        s.segments.push_back({off, numel});
    }
    return s;
}

Tensor vec(const std::vector<float>& v) { return Tensor::from_vector({static_cast<int64_t>(v.size())}, v); }

TEST(TrainOptimizer, GoldenClipAndAdamWStep) {
    FlatSet s = load_golden_step();
    ASSERT_EQ(s.names.size(), 16u);  // 2 blocks x 4 modules x (A, B)
    SafetensorsFile f = open_golden("tiny-a/lora_and_training.safetensors");
    const float ref_norm = golden_tensor(f, "train.grad_norm_before_clip").to_float_vector()[0];
    std::vector<float> g = s.grad;
    const float norm = clip_grad_norm(g.data(), s.segments, 1.0);
    // float32 sums of a few thousand squares: a few ulp of the norm.
    EXPECT_NEAR(norm, ref_norm, 1e-6 * ref_norm);
    OptimizerConfig c;  // lr set per step; betas 0.9/0.999, wd 1e-4, eps 1e-8 are the defaults
    auto opt = make_optimizer(c, s.segments);
    std::vector<float> p = s.before;
    opt->step(p.data(), g.data(), 1e-4);
    // Same float32 operations in torch's order; differences come only from the norm's summation order, which moves
    // the first-step update (lr * g/(|g| + eps/...)) by far less than one ulp of parameters of size ~0.1-1.
    EXPECT_TRUE(all_close(vec(p), vec(s.after), 1e-8, 1e-6));
    // and the update is not trivially zero: the parameters moved by about lr
    double moved = 0;
    for (size_t i = 0; i < p.size(); ++i) moved = std::max(moved, std::fabs(double(p[i]) - s.before[i]));
    EXPECT_GT(moved, 5e-5);
}

TEST(TrainOptimizer, ClipLeavesSmallGradientsAlone) {
    std::vector<float> g = {0.1f, -0.2f, 0.05f};
    const std::vector<float> orig = g;
    const float n = clip_grad_norm(g.data(), {{0, 1}, {1, 2}}, 1.0);
    EXPECT_NEAR(n, std::sqrt(0.01 + 0.04 + 0.0025), 1e-7);
    EXPECT_EQ(g, orig);
    std::vector<float> big = {3.0f, 4.0f};
    EXPECT_NEAR(clip_grad_norm(big.data(), {{0, 2}}, 1.0), 5.0, 1e-6);
    EXPECT_NEAR(std::hypot(big[0], big[1]), 1.0, 1e-6);
}

// The norm alone (an infinite max_norm, so nothing is scaled, also for non-finite gradients), and the (norm, coef)
// pair the device reads: coef = max_norm / (norm + 1e-6) in float32, applied only below 1.
TEST(TrainOptimizer, NormLeavesGradientsAndClipReportsItsCoefficient) {
    std::vector<float> g = {3.0f, 4.0f, 12.0f};
    const std::vector<float> orig = g;
    EXPECT_FLOAT_EQ(global_grad_norm(g.data(), {{0, 2}, {2, 1}}), 13.0f);
    EXPECT_EQ(g, orig);
    std::vector<float> bad = {std::numeric_limits<float>::infinity(), 1.0f};
    EXPECT_TRUE(std::isinf(global_grad_norm(bad.data(), {{0, 2}})));
    EXPECT_EQ(bad[1], 1.0f);
    auto opt = make_optimizer(OptimizerConfig{}, {{0, 2}, {2, 1}});
    const Tensor t = vec(g);
    const Tensor stats = opt->clip_grad_norm(t, 6.5);
    ASSERT_EQ(stats.numel(), 2);
    EXPECT_FLOAT_EQ(stats.data<float>()[0], 13.0f);
    EXPECT_EQ(stats.data<float>()[1], 6.5f / (13.0f + 1e-6f));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(t.data<float>()[i], orig[i] * stats.data<float>()[1]);
}

struct Fixture {
    std::vector<ParamSegment> segments;
    std::vector<float> init;
    std::vector<std::vector<float>> grads;  // per step
    SafetensorsFile file;
    std::vector<float> expected(const std::string& prefix, int step) const {
        std::vector<float> out;
        for (size_t i = 0; i < segments.size(); ++i) {
            const auto v = golden_tensor(file, str_cat(prefix, ".", step, ".", i)).to_float_vector();
            out.insert(out.end(), v.begin(), v.end());
        }
        return out;
    }
};

Fixture load_fixture() {
    Fixture fx{{}, {}, {}, open_golden("train/reference.safetensors")};
    for (int i = 0; i < 2; ++i) {
        const auto v = golden_tensor(fx.file, str_cat("init.", i)).to_float_vector();
        fx.segments.push_back({static_cast<int64_t>(fx.init.size()), static_cast<int64_t>(v.size())});
        fx.init.insert(fx.init.end(), v.begin(), v.end());
    }
    for (int k = 0; k < 5; ++k) {
        std::vector<float> g;
        for (int i = 0; i < 2; ++i) {
            const auto v = golden_tensor(fx.file, str_cat("grad.", k, ".", i)).to_float_vector();
            g.insert(g.end(), v.begin(), v.end());
        }
        fx.grads.push_back(g);
    }
    return fx;
}

TEST(TrainOptimizer, AdamWFiveStepsMatchTorch) {
    Fixture fx = load_fixture();
    auto opt = make_optimizer(OptimizerConfig{}, fx.segments);
    std::vector<float> p = fx.init;
    for (int k = 0; k < 5; ++k) {
        opt->step(p.data(), fx.grads[k].data(), 1e-4);
        // torch's operation order in float32: equal up to an ulp or two of the parameter
        EXPECT_TRUE(all_close(vec(p), vec(fx.expected("adamw", k)), 1e-9, 3e-7)) << "step " << k;
    }
}

TEST(TrainOptimizer, ProdigyFiveStepsMatchProdigyopt) {
    Fixture fx = load_fixture();
    OptimizerConfig c;
    c.kind = OptimizerKind::PRODIGY;  // the reference's arguments: decouple, bias correction, safeguard warmup
    auto opt = make_optimizer(c, fx.segments);
    std::vector<float> p = fx.init;
    for (int k = 0; k < 5; ++k) {
        opt->step(p.data(), fx.grads[k].data(), 1.0);
        // d is a ratio of sums (<g, p0 - p> / sum|s|) reduced in float32 by torch and in double here; the
        // relative error of d (~1e-6) scales the whole update of ~1e-6..1e-3.
        EXPECT_TRUE(all_close(vec(p), vec(fx.expected("prodigy", k)), 1e-9, 1e-5)) << "step " << k;
    }
}

TEST(TrainOptimizer, DynamicMapsMatchBitsandbytesAlgorithm) {
    SafetensorsFile f = open_golden("train/reference.safetensors");
    for (bool sgn : {true, false}) {
        const auto ref = golden_tensor(f, sgn ? "qmap.signed" : "qmap.unsigned").to_float_vector();
        const auto map = dynamic_quant_map(sgn);
        ASSERT_EQ(ref.size(), 256u);
        for (int i = 0; i < 256; ++i) EXPECT_EQ(map[i], ref[i]) << (sgn ? "signed " : "unsigned ") << i;
    }
    const auto s = dynamic_quant_map(true), u = dynamic_quant_map(false);
    EXPECT_EQ(s[127], 0.0f);
    EXPECT_EQ(s[255], 1.0f);
    EXPECT_NEAR(s[0], -0.99296874f, 1e-7);
    EXPECT_EQ(u[0], 0.0f);
    EXPECT_EQ(u[255], 1.0f);
    EXPECT_TRUE(std::is_sorted(s.begin(), s.end()) && std::is_sorted(u.begin(), u.end()));
}

TEST(TrainOptimizer, QuantizeFindsNearestCode) {
    for (bool sgn : {true, false}) {
        const auto code = dynamic_quant_map(sgn);
        for (int i = 0; i < 256; ++i) EXPECT_EQ(quantize_nearest(code.data(), sgn, code[i]), i == 0 && !sgn ? 0 : i);
        TrainRng rng(3);
        for (int t = 0; t < 5000; ++t) {
            float x = static_cast<float>(rng.uniform());
            x = x * x * x;  // dense near 0 like normalized moments
            if (sgn && (t & 1)) x = -x;
            const int q = quantize_nearest(code.data(), sgn, x);
            int best = 0;
            for (int i = 1; i < 256; ++i)
                if (std::fabs(code[i] - x) < std::fabs(code[best] - x)) best = i;
            EXPECT_EQ(std::fabs(code[q] - x), std::fabs(code[best] - x)) << "x=" << x;
        }
    }
}

TEST(TrainOptimizer, EightBitAdamWTracksAdamW) {
    // One 6144-element tensor (a rank-4 LoRA matrix of SD3-Medium: quantized, in 3 blocks of 2048) and one small
    // tensor (kept in float32 by min_8bit_size).
    const std::vector<ParamSegment> seg = {{0, 6144}, {6144, 128}};
    const int64_t n = 6272;
    TrainRng rng(11);
    std::vector<float> p0(n);
    rng.normal_fill(p0.data(), n, 0.0f, 0.25f);
    OptimizerConfig c32, c8;
    c8.kind = OptimizerKind::ADAMW_8BIT;
    auto a = make_optimizer(c32, seg), b = make_optimizer(c8, seg);
    std::vector<float> pa = p0, pb = p0, g(n);
    const double lr = 1e-3;
    const int steps = 20;
    for (int k = 0; k < steps; ++k) {
        rng.normal_fill(g.data(), n, 0.0f, 0.01f);
        a->step(pa.data(), g.data(), lr);
        b->step(pb.data(), g.data(), lr);
    }
    // Each step moves a parameter by at most ~lr (Adam's normalized update). The dynamic map's relative error is
    // below ~5% for values within two decades of the block's absmax and coarser below, so the 8-bit updates differ
    // from the float32 ones by a fraction of lr per step: bound the accumulated difference by 0.25 * lr * steps,
    // while the parameters themselves moved by several lr.
    double max_diff = 0, max_move = 0;
    for (int64_t i = 0; i < n; ++i) {
        max_diff = std::max(max_diff, std::fabs(double(pa[i]) - pb[i]));
        max_move = std::max(max_move, std::fabs(double(pa[i]) - p0[i]));
    }
    EXPECT_LT(max_diff, 0.25 * lr * steps);
    EXPECT_GT(max_move, 3 * lr);
    // the small float32-state tensor follows bitsandbytes' 32-bit kernel: same maths as AdamW except the order of
    // weight decay, a relative lr*wd difference
    for (int64_t i = 6144; i < n; ++i) EXPECT_NEAR(pa[i], pb[i], 1e-6) << i;
}

void check_resume(OptimizerKind kind) {
    Fixture fx = load_fixture();
    OptimizerConfig c;
    c.kind = kind;
    c.min_8bit_size = 64;  // make the small fixture tensors quantized too
    c.block_size = 64;
    const double lr = kind == OptimizerKind::PRODIGY ? 1.0 : 1e-3;
    auto full = make_optimizer(c, fx.segments);
    std::vector<float> pf = fx.init;
    for (int k = 0; k < 5; ++k) full->step(pf.data(), fx.grads[k].data(), lr);
    auto first = make_optimizer(c, fx.segments);
    std::vector<float> pr = fx.init;
    for (int k = 0; k < 3; ++k) first->step(pr.data(), fx.grads[k].data(), lr);
    NamedTensors st;
    for (auto& [name, t] : first->state()) st.emplace_back(name, t.clone());
    auto second = make_optimizer(c, fx.segments);
    ASSERT_TRUE(second->load_state(st).ok());
    EXPECT_EQ(second->steps(), 3);
    for (int k = 3; k < 5; ++k) second->step(pr.data(), fx.grads[k].data(), lr);
    EXPECT_EQ(0, std::memcmp(pf.data(), pr.data(), pf.size() * 4)) << optimizer_kind_name(kind);
}

TEST(TrainOptimizer, StateRoundTripResumesBitExactly) {
    check_resume(OptimizerKind::ADAMW);
    check_resume(OptimizerKind::ADAMW_8BIT);
    check_resume(OptimizerKind::PRODIGY);
}

TEST(TrainOptimizer, LoadStateRejectsOtherKind) {
    Fixture fx = load_fixture();
    OptimizerConfig a;
    OptimizerConfig p;
    p.kind = OptimizerKind::PRODIGY;
    auto adam = make_optimizer(a, fx.segments);
    auto prod = make_optimizer(p, fx.segments);
    EXPECT_FALSE(prod->load_state(adam->state()).ok());
}

}  // namespace
}  // namespace sd3::train
