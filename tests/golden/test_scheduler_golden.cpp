// FlowMatchEulerScheduler against scheduler.safetensors (make_golden.py step 5): the training table and the
// inference schedules of 4 and 28 steps, bit for bit (the arithmetic is reproduced operation by operation).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "core/dtype.h"
#include "infer/scheduler.h"

using namespace sd3;

namespace {
void expect_bits(const std::vector<float>& got, const Tensor& ref, const std::string& what) {
    ASSERT_EQ(static_cast<int64_t>(got.size()), ref.numel()) << what;
    const std::vector<float> r = ref.to_float_vector();
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (f32_bits(got[i]) != f32_bits(r[i]) && ++bad <= 3)
            ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " reference " << r[i];
    EXPECT_EQ(bad, 0) << what;
}
}  // namespace

TEST(SchedulerGolden, TablesAreBitIdentical) {
    auto sched = FlowMatchEulerScheduler::load_folder(sd3::testing::tiny_path("model/scheduler"));
    ASSERT_TRUE(sched.ok()) << sched.status().message();
    EXPECT_EQ(sched->config().shift, 3.0);
    SafetensorsFile f = sd3::testing::open_golden("tiny-a/scheduler.safetensors");
    expect_bits(sched->train_timesteps(), sd3::testing::golden_tensor(f, "train.timesteps"), "train.timesteps");
    expect_bits(sched->train_sigmas(), sd3::testing::golden_tensor(f, "train.sigmas"), "train.sigmas");
    for (int steps : {4, 28}) {
        const FlowMatchSchedule s = sched->inference_schedule(steps);
        const std::string p = "infer" + std::to_string(steps) + ".";
        expect_bits(s.timesteps, sd3::testing::golden_tensor(f, p + "timesteps"), p + "timesteps");
        expect_bits(s.sigmas, sd3::testing::golden_tensor(f, p + "sigmas"), p + "sigmas");
    }
}

TEST(Scheduler, KnownValuesAndEdges) {
    FlowMatchSchedulerConfig c;
    c.shift = 3.0;
    const FlowMatchEulerScheduler sched(c);
    EXPECT_EQ(sched.sigma_max(), 1.0f);
    EXPECT_NEAR(sched.sigma_min(), 0.002994012087583542, 1e-9);  // research/sd3-architecture.md §8.2
    const FlowMatchSchedule s = sched.inference_schedule(28);
    EXPECT_NEAR(s.sigmas[27], 0.0089285718f, 1e-9);  // the endpoint shifted twice
    EXPECT_EQ(s.sigmas[28], 0.0f);
    const FlowMatchSchedule one = sched.inference_schedule(1);  // a single step from pure noise to the end
    ASSERT_EQ(one.sigmas.size(), 2u);
    EXPECT_EQ(one.sigmas[0], 1.0f);
    EXPECT_EQ(one.timesteps[0], 1000.0f);
}

TEST(Scheduler, EulerStepIsFloat32MulThenAdd) {
    Tensor x = Tensor::from_vector({3}, {1.0f, -0.5f, 0.25f});
    const Tensor v = Tensor::from_vector({3}, {0.3f, 2.0f, -1.0f});
    const float sigma = 0.97410774f, next = 0.96012932f;
    const float dt = next - sigma;
    flow_match_euler_step(x, v, sigma, next);
    EXPECT_EQ(x.to_float_vector()[0], 1.0f + dt * 0.3f);
    EXPECT_EQ(x.to_float_vector()[1], -0.5f + dt * 2.0f);
    EXPECT_EQ(x.to_float_vector()[2], 0.25f + dt * -1.0f);
}

TEST(Scheduler, UnsupportedOptionsAreRefused) {
    nlohmann::json j = {{"num_train_timesteps", 1000}, {"shift", 3.0}, {"use_karras_sigmas", true}};
    auto r = FlowMatchSchedulerConfig::from_json(j, "s/scheduler_config.json");
    EXPECT_EQ(r.status().code(), ErrorCode::UNSUPPORTED);
    EXPECT_NE(r.status().message().find("use_karras_sigmas"), std::string::npos);
    j = {{"shift", 0.0}};
    EXPECT_EQ(FlowMatchSchedulerConfig::from_json(j, "s").status().code(), ErrorCode::CORRUPT_FILE);
    j = {{"shift", 3.0}, {"shift_terminal", 0.1}};
    EXPECT_EQ(FlowMatchSchedulerConfig::from_json(j, "s").status().code(), ErrorCode::UNSUPPORTED);
}
