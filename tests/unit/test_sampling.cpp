// The model-independent denoising loop: the CFG batch is [uncond, cond] with the schedule's timesteps, guidance and
// the Euler step are float32 in the reference's order, no guidance below scale 1, progress and cancellation,
// prepare_latents draws like torch.randn, and the image post-processing.
#include <gtest/gtest.h>

#include "common/testing.h"
#include "core/rng.h"
#include "infer/sampling.h"

using namespace sd3;

namespace {

// A fake "model" whose velocity depends on the latents, the timestep and the context row, so that any mix-up of
// rows, order or timestep changes the result.
struct FakeModel {
    std::vector<float> seen_timesteps;
    std::vector<int64_t> seen_rows;
    Result<Tensor> operator()(const Tensor& x, const Tensor& t, const Tensor& ctx, const Tensor& pooled) {
        seen_rows.push_back(x.size(0));
        seen_timesteps.push_back(t.data<float>()[0]);
        Tensor v = Tensor::empty(x.shape(), DType::F32);
        const int64_t per = x.numel() / x.size(0);
        for (int64_t r = 0; r < x.size(0); ++r) {
            EXPECT_EQ(t.data<float>()[r], t.data<float>()[0]);
            const float c = ctx.data<float>()[r * ctx.size(1) * ctx.size(2)] + pooled.data<float>()[r * pooled.size(1)];
            for (int64_t k = 0; k < per; ++k)
                v.data<float>()[r * per + k] = 0.3f * x.data<float>()[r * per + k] + 0.001f * t.data<float>()[r] + c;
        }
        return v;
    }
};

Conditioning make_cond(int64_t B) {
    Conditioning c;
    c.context = Tensor::full({B, 3, 2}, 0.25);
    c.pooled = Tensor::full({B, 4}, 0.5);
    c.negative_context = Tensor::full({B, 3, 2}, -0.125);
    c.negative_pooled = Tensor::full({B, 4}, 0.0625);
    return c;
}

}  // namespace

TEST(Sampling, CfgLoopMatchesAHandWrittenReference) {
    FlowMatchSchedulerConfig sc;
    sc.shift = 3.0;
    const FlowMatchSchedule sched = FlowMatchEulerScheduler(sc).inference_schedule(4);
    TorchGenerator g(42);
    const Tensor x0 = prepare_latents(g, 2, 16, 32, 48, 8);  // [2, 16, 4, 6]
    ASSERT_EQ(x0.shape(), (Shape{2, 16, 4, 6}));
    FakeModel fake;
    int calls = 0;
    auto out = sample_flow_match(std::ref(fake), x0, sched, make_cond(2), 7.0f, [&](const SamplerProgress& p) {
        EXPECT_EQ(p.step, ++calls);
        EXPECT_EQ(p.steps, 4);
        return true;
    });
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(calls, 4);
    EXPECT_EQ(fake.seen_rows, (std::vector<int64_t>{4, 4, 4, 4}));
    EXPECT_EQ(fake.seen_timesteps, sched.timesteps);
    // Reference: per element, uncond context value -0.125 + 0.0625, cond 0.25 + 0.5.
    std::vector<float> x = x0.to_float_vector();
    for (int i = 0; i < 4; ++i) {
        const float t = sched.timesteps[i];
        for (float& e : x) {
            const float vu = 0.3f * e + 0.001f * t + (-0.125f + 0.0625f);
            const float vc = 0.3f * e + 0.001f * t + (0.25f + 0.5f);
            const float diff = vc - vu;
            const float scaled = 7.0f * diff;
            const float v = vu + scaled;
            const float dt = sched.sigmas[i + 1] - sched.sigmas[i];
            const float d = dt * v;
            e = e + d;
        }
    }
    const std::vector<float> got = out->to_float_vector();
    for (size_t k = 0; k < x.size(); ++k) ASSERT_EQ(f32_bits(got[k]), f32_bits(x[k])) << k;
}

TEST(Sampling, NoGuidanceAtScaleOneAndCancellation) {
    FlowMatchSchedulerConfig sc;
    const FlowMatchSchedule sched = FlowMatchEulerScheduler(sc).inference_schedule(3);
    const Tensor x0 = Tensor::full({1, 16, 2, 2}, 0.5);
    Conditioning c = make_cond(1);
    c.negative_context = Tensor();  // not needed without guidance
    c.negative_pooled = Tensor();
    FakeModel fake;
    auto out = sample_flow_match(std::ref(fake), x0, sched, c, 1.0f);
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(fake.seen_rows, (std::vector<int64_t>{1, 1, 1}));
    // ... but guidance without negative embeddings is an error, and a progress callback can stop the loop.
    EXPECT_EQ(sample_flow_match(std::ref(fake), x0, sched, c, 5.0f).status().code(), ErrorCode::INVALID_ARGUMENT);
    auto stopped = sample_flow_match(std::ref(fake), x0, sched, make_cond(1), 5.0f,
                                     [](const SamplerProgress& p) { return p.step < 2; });
    EXPECT_FALSE(stopped.ok());
    EXPECT_NE(stopped.status().message().find("cancelled after step 2"), std::string::npos);
}

// Replay asks for a recorded model call on a GPU; on the CPU nothing is recorded: the model runs at every step and
// the latents are those of the plain loop.
TEST(Sampling, ReplayOnTheCpuStillCallsTheModelEveryStep) {
    const FlowMatchSchedule sched = FlowMatchEulerScheduler().inference_schedule(4);
    TorchGenerator g(3);
    const Tensor x0 = prepare_latents(g, 1, 16, 16, 16, 8);
    FakeModel plain, replayed;
    const Tensor want = sample_flow_match(std::ref(plain), x0, sched, make_cond(1), 4.0f).value();
    const Tensor got = sample_flow_match(std::ref(replayed), x0, sched, make_cond(1), 4.0f, {}, kCPU, true).value();
    EXPECT_EQ(replayed.seen_timesteps, plain.seen_timesteps);
    EXPECT_EQ(replayed.seen_timesteps.size(), 4u);
    EXPECT_EQ(got.to_float_vector(), want.to_float_vector());
}

TEST(Sampling, PrepareLatentsIsOneTorchDraw) {
    TorchGenerator a(7), b(7);
    const Tensor lat = prepare_latents(a, 3, 16, 64, 32, 8);
    EXPECT_EQ(lat.shape(), (Shape{3, 16, 8, 4}));
    EXPECT_EQ(lat.to_float_vector(), b.randn({3, 16, 8, 4}).to_float_vector());
}

TEST(Sampling, PostprocessClampsAndRounds) {
    const Tensor decoded = Tensor::from_vector({1, 3, 1, 2}, {-1.5f, 1.0f, 0.0f, -1.0f, 0.5f, 3.0f});
    const Tensor unit = denormalize_images(decoded);
    EXPECT_EQ(unit.to_float_vector(), (std::vector<float>{0.0f, 1.0f, 0.5f, 0.0f, 0.75f, 1.0f}));
    const std::vector<Image> imgs = images_from_batch(unit);
    ASSERT_EQ(imgs.size(), 1u);
    EXPECT_EQ(imgs[0].width, 2);
    EXPECT_EQ(imgs[0].pixels, (std::vector<uint8_t>{0, 128, 191, 255, 0, 255}));  // 127.5 -> 128, 191.25 -> 191
}
