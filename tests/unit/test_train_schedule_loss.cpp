// LR schedules against diffusers' get_scheduler (tests/data/train/reference.safetensors), the training sigma table
// and loss weightings against scheduler.safetensors, the three golden losses of lora_and_training.safetensors, a
// finite-difference check of the loss gradient, prior preservation and timestep sampling; the float16 loss scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/testing.h"
#include "train/flow_matching.h"
#include "train/loss_scale.h"
#include "train/lr_schedule.h"

namespace sd3::train {
namespace {

using sd3::testing::all_close;
using sd3::testing::golden_tensor;
using sd3::testing::open_golden;

TEST(TrainLrSchedule, MatchesDiffusersStepByStep) {
    SafetensorsFile f = open_golden("train/reference.safetensors");
    int cases = 0;
    for (const TensorInfo& t : f.tensors()) {
        if (t.name.rfind("lr.", 0) != 0) continue;
        // lr.<name>.w<W>.t<T>.c<cycles>.p<power>
        const std::string rest = t.name.substr(3);
        const size_t w = rest.find(".w");
        LrScheduleConfig c;
        auto kind = parse_lr_schedule(rest.substr(0, w));
        ASSERT_TRUE(kind.ok()) << t.name;
        c.kind = *kind;
        long long W, T, cyc;
        double power;
        ASSERT_EQ(std::sscanf(rest.c_str() + w, ".w%lld.t%lld.c%lld.p%lf", &W, &T, &cyc, &power), 4) << t.name;
        c.warmup_steps = W;
        c.training_steps = T;
        c.num_cycles = static_cast<int>(cyc);
        c.power = power;
        c.polynomial_lr_init = 1e-3;  // torch AdamW's class default, which diffusers reads as lr_init
        ASSERT_TRUE(validate_lr_schedule(c).ok());
        const Tensor ref = golden_tensor(f, t.name);
        for (int64_t k = 1; k <= ref.numel(); ++k) {
            // The same double formulas as Python: equal to the last bits.
            const double want = ref.data<double>()[k - 1];
            EXPECT_NEAR(lr_for_update(c, 1e-4, k), want, 1e-18 + 1e-14 * std::fabs(want)) << t.name << " update " << k;
        }
        ++cases;
    }
    EXPECT_EQ(cases, 10);
}

TEST(TrainLrSchedule, WarmupStartsAtZeroAndPolynomialChecksLrEnd) {
    LrScheduleConfig c;
    c.kind = LrScheduleKind::CONSTANT_WITH_WARMUP;
    c.warmup_steps = 4;
    EXPECT_EQ(lr_for_update(c, 1.0, 1), 0.0);
    EXPECT_EQ(lr_for_update(c, 1.0, 3), 0.5);
    EXPECT_EQ(lr_for_update(c, 1.0, 5), 1.0);
    c.kind = LrScheduleKind::POLYNOMIAL;
    c.polynomial_lr_init = 1e-8;
    EXPECT_FALSE(validate_lr_schedule(c).ok());
    EXPECT_FALSE(parse_lr_schedule("piecewise_constant").ok());
}

TEST(TrainFlowMatching, SigmaTableAndWeightingMatchGolden) {
    SafetensorsFile f = open_golden("tiny-a/scheduler.safetensors");
    const SigmaTable t = SigmaTable::make(1000, 3.0);
    // float32 in the scheduler's operation order: exact
    EXPECT_TRUE(all_close(Tensor::from_vector({1000}, t.sigmas), golden_tensor(f, "train.sigmas"), 0, 0));
    EXPECT_TRUE(all_close(Tensor::from_vector({1000}, t.timesteps), golden_tensor(f, "train.timesteps"), 0, 0));
    const auto sig = golden_tensor(f, "weighting.sigmas").to_float_vector();
    for (const char* name : {"sigma_sqrt", "cosmap", "logit_normal", "mode", "none"}) {
        auto s = parse_weighting_scheme(name);
        ASSERT_TRUE(s.ok());
        std::vector<float> w;
        for (float x : sig) w.push_back(loss_weighting(*s, x));
        // two or three float32 operations: within an ulp or two
        EXPECT_TRUE(all_close(Tensor::from_vector({11}, w), golden_tensor(f, str_cat("weighting.", name)), 0, 3e-7))
            << name;
    }
}

LossInputs golden_loss_inputs(const SafetensorsFile& f, WeightingScheme scheme) {
    LossInputs in;
    in.model_pred = golden_tensor(f, "train.model_pred");
    in.x0 = golden_tensor(f, "train.x0");
    in.noise = golden_tensor(f, "train.noise");
    in.sigmas = golden_tensor(f, "train.sigmas").to_float_vector();
    in.noisy = noisy_input(in.x0, in.noise, in.sigmas);
    for (float s : in.sigmas) in.weighting.push_back(loss_weighting(scheme, s));
    return in;
}

TEST(TrainFlowMatching, GoldenLossesOfTheReferenceStep) {
    SafetensorsFile f = open_golden("tiny-a/lora_and_training.safetensors");
    // the step's timesteps come from u through the table
    const SigmaTable table = SigmaTable::make();
    const auto u = golden_tensor(f, "train.u").to_float_vector();
    const auto ref_t = golden_tensor(f, "train.timesteps").to_float_vector();
    const auto ref_s = golden_tensor(f, "train.sigmas").to_float_vector();
    for (size_t b = 0; b < u.size(); ++b) {
        const int64_t i = timestep_index(u[b]);
        EXPECT_EQ(table.timesteps[i], ref_t[b]);
        EXPECT_EQ(table.sigmas[i], ref_s[b]);
    }
    for (const char* name : {"logit_normal", "sigma_sqrt", "cosmap"}) {
        const LossResult r = flow_matching_loss(golden_loss_inputs(f, parse_weighting_scheme(name).value()));
        const double ref = golden_tensor(f, str_cat("train.loss.", name)).to_float_vector()[0];
        // float32 elementwise, sums of 1024 terms in double here and in float32 in torch: ~1e-6 relative
        EXPECT_NEAR(r.loss, ref, 2e-6 * std::fabs(ref)) << name;
    }
}

TEST(TrainFlowMatching, LossGradientMatchesFiniteDifferences) {
    SafetensorsFile f = open_golden("tiny-a/lora_and_training.safetensors");
    for (bool precondition : {true, false}) {
        for (bool prior : {false, true}) {
            LossInputs in = golden_loss_inputs(f, WeightingScheme::COSMAP);
            in.precondition_outputs = precondition;
            in.with_prior_preservation = prior;
            in.prior_loss_weight = 0.7;
            in.model_pred = in.model_pred.clone();
            const LossResult r = flow_matching_loss(in, 0.5);
            float* p = in.model_pred.data<float>();
            const int64_t n = in.model_pred.numel();
            for (int64_t i = 0; i < n; i += 97) {
                const float orig = p[i];
                const float h = 1e-2f;
                p[i] = orig + h;
                const double up = flow_matching_loss(in).loss;
                p[i] = orig - h;
                const double down = flow_matching_loss(in).loss;
                p[i] = orig;
                // the loss is quadratic in each element: central differences are exact up to float32 rounding of
                // the perturbed elements (~1e-7 relative over a loss of ~1)
                const double fd = 0.5 * (up - down) / (2.0 * h);
                EXPECT_NEAR(r.grad_pred.data<float>()[i], fd, 2e-6 + 1e-3 * std::fabs(fd))
                    << "element " << i << " precondition " << precondition << " prior " << prior;
            }
        }
    }
}

TEST(TrainFlowMatching, PriorPreservationSplitsTheBatch) {
    SafetensorsFile f = open_golden("tiny-a/lora_and_training.safetensors");
    LossInputs in = golden_loss_inputs(f, WeightingScheme::SIGMA_SQRT);
    const LossResult whole = flow_matching_loss(in);
    in.with_prior_preservation = true;
    in.prior_loss_weight = 2.0;
    const LossResult split = flow_matching_loss(in);
    // batch 2 -> one instance sample, one prior sample; the plain loss is their mean
    EXPECT_NEAR(0.5 * (split.instance_loss + split.prior_loss), whole.loss, 1e-9 * whole.loss);
    EXPECT_NEAR(split.loss, split.instance_loss + 2.0 * split.prior_loss, 1e-12);
    EXPECT_NE(split.instance_loss, split.prior_loss);
}

TEST(TrainFlowMatching, TimestepSamplingDistributions) {
    TrainRng rng(5);
    TimestepSampling ln;  // logit_normal(0, 1): median u = 0.5
    auto u = sample_u(ln, 4000, rng);
    std::sort(u.begin(), u.end());
    EXPECT_NEAR(u[2000], 0.5, 0.03);
    for (float x : u) EXPECT_TRUE(x > 0 && x < 1);
    ln.logit_mean = 1.0;
    auto u2 = sample_u(ln, 4000, rng);
    std::sort(u2.begin(), u2.end());
    EXPECT_NEAR(u2[2000], 1 / (1 + std::exp(-1.0)), 0.03);
    TimestepSampling mode;
    mode.scheme = WeightingScheme::MODE;
    EXPECT_NEAR(u_from_draw(mode, 0.5f), 1 - 0.5 - 1.29 * (0.5 - 1 + 0.5), 1e-6);
    EXPECT_EQ(timestep_index(u_from_draw(mode, 0.0f)), 999);  // u = 1 clamps into the table
    TimestepSampling uni;
    uni.scheme = WeightingScheme::SIGMA_SQRT;
    auto u3 = sample_u(uni, 4000, rng);
    double mean = 0;
    for (float x : u3) mean += x / 4000.0;
    EXPECT_NEAR(mean, 0.5, 0.02);
}

// torch.amp.GradScaler's policy: 2^16 at first, halved per overflow, doubled after 2000 finite backwards in a row
// (an overflow restarts the count); disabled (bf16, float32) it stays 1, and an overflow at 1 is an error.
TEST(TrainLossScale, FollowsGradScalersPolicy) {
    LossScale s(true);
    EXPECT_EQ(s.value(), 65536.0f);
    ASSERT_TRUE(s.record(false).ok());
    ASSERT_TRUE(s.record(false).ok());
    EXPECT_EQ(s.value(), 16384.0f);
    for (int i = 0; i < 1999; ++i) ASSERT_TRUE(s.record(true).ok());
    EXPECT_EQ(s.value(), 16384.0f);
    ASSERT_TRUE(s.record(false).ok());  // restarts the count
    for (int i = 0; i < 1999; ++i) ASSERT_TRUE(s.record(true).ok());
    EXPECT_EQ(s.value(), 8192.0f);
    ASSERT_TRUE(s.record(true).ok());
    EXPECT_EQ(s.value(), 16384.0f);
    while (s.value() > 1.0f) ASSERT_TRUE(s.record(false).ok());
    const Status st = s.record(false);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("--mixed_precision bf16"), std::string::npos) << st.message();

    LossScale off(false);
    EXPECT_EQ(off.value(), 1.0f);
    for (int i = 0; i < 5000; ++i) ASSERT_TRUE(off.record(true).ok());
    EXPECT_EQ(off.value(), 1.0f);
    EXPECT_FALSE(off.record(false).ok());
}

}  // namespace
}  // namespace sd3::train
