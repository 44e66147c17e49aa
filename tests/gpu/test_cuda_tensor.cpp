// The Tensor-level API on CUDA (ops/ops.h dispatch, ops/device.h moves): the same calls as on the CPU give the
// CPU's results, non-contiguous device inputs included; device moves round-trip exactly; errors say what to do.
#include <cstdlib>
#include <cstring>

#include "gpu/gpu_testing.h"
#include "infer/sampling.h"
#include "ops/ops.h"

namespace sd3::gputest {
namespace {

class CudaTensorOps : public ::testing::TestWithParam<DType> {
  protected:
    void SetUp() override { SD3_REQUIRE_GPU(); }
    DType dt() const { return GetParam(); }
};

TEST(CudaDevice, RoundTripIsExactForEveryDType) {
    SD3_REQUIRE_GPU();
    const Tensor x = cpu_randn({3, 5, 7}, 1);
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::I8, DType::I64}) {
        const Tensor h = x.to(dt);
        auto d = to_device(h, kGPU);
        ASSERT_TRUE(d.ok()) << d.status().message();
        EXPECT_EQ(d->device(), kGPU);
        const Tensor back = to_host(d.value());
        ASSERT_EQ(back.dtype(), dt);
        EXPECT_EQ(std::memcmp(back.raw(), h.raw(), h.nbytes()), 0) << dtype_name(dt);
    }
    // A non-contiguous host view travels as its elements.
    const Tensor t = x.transpose(0, 2);
    EXPECT_EQ(to_host(to_device(t, kGPU).value()).to_float_vector(), t.to_float_vector());
    EXPECT_NE(device_description(kGPU).find("sm_"), std::string::npos) << device_description(kGPU);
}

TEST(CudaDevice, ParseDeviceAndHalfDType) {
    SD3_REQUIRE_GPU();
    EXPECT_EQ(parse_device("cuda").value(), kGPU);
    EXPECT_EQ(parse_device("cpu").value(), kCPU);
    EXPECT_FALSE(parse_device("cuda:99").ok());
    EXPECT_FALSE(parse_device("gpu").ok());
    const DType h = half_dtype(kGPU);
    EXPECT_TRUE(h == DType::BF16 || h == DType::F16);
    // The switch that forces the sm_75 (T4) fp16 path on any card.
    setenv("SD3_FORCE_FP16", "1", 1);
    EXPECT_EQ(half_dtype(kGPU), DType::F16);
    unsetenv("SD3_FORCE_FP16");
    EXPECT_EQ(half_dtype(kGPU), h);
}

TEST(CudaDevice, OutOfMemoryIsAnError) {
    SD3_REQUIRE_GPU();
    // 2^40 f32 elements = 4 TiB: no card has it. A borrowed host tensor of that shape needs no host memory.
    static float dummy;
    const Tensor huge = Tensor::borrow(&dummy, {1ll << 40}, DType::F32, kCPU);
    auto r = to_device(huge, kGPU);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), ErrorCode::OUT_OF_MEMORY);
    EXPECT_NE(r.status().message().find("free"), std::string::npos) << r.status().message();
    // The device still works afterwards.
    const Tensor x = cpu_randn({4}, 2);
    EXPECT_EQ(to_host(to_device(x, kGPU).value()).to_float_vector(), x.to_float_vector());
}

TEST_P(CudaTensorOps, LinearOnTransposedInput) {
    const Tensor x = cpu_randn({45, 3, 19}, 10).permute({1, 2, 0});  // [3, 19, 45], non-contiguous
    const Tensor w = cpu_randn({33, 45}, 11, 0.2f), b = cpu_randn({33}, 12);
    const Tensor ref = ops::linear(rounded(x, dt()), rounded(w, dt()), rounded(b, dt()));
    const Tensor gx = on_gpu(x.contiguous(), dt()).permute({0, 1, 2});
    // Build the non-contiguous device view the same way as on the CPU.
    const Tensor gxv = on_gpu(cpu_randn({45, 3, 19}, 10), dt()).permute({1, 2, 0});
    const Tensor y = ops::linear(gxv, on_gpu(w, dt()), on_gpu(b, dt()));
    EXPECT_TRUE(same_as_cpu(y, ref, dt(), bias_epilogue_factor(dt())));
    EXPECT_TRUE(same_as_cpu(ops::linear(gx, on_gpu(w, dt())), ops::linear(rounded(x, dt()), rounded(w, dt())), dt()));
}

TEST_P(CudaTensorOps, NormsActivationsAttention) {
    const Tensor x = cpu_randn({2, 19, 111}, 20, 2.0f), w = cpu_randn({111}, 21), b = cpu_randn({111}, 22);
    const Tensor xr = rounded(x, dt()), wr = rounded(w, dt()), br = rounded(b, dt());
    const Tensor gx = on_gpu(x, dt()), gw = on_gpu(w, dt()), gb = on_gpu(b, dt());
    EXPECT_TRUE(same_as_cpu(ops::layer_norm(gx, gw, gb, 1e-6f), ops::layer_norm(xr, wr, br, 1e-6f), dt()));
    EXPECT_TRUE(same_as_cpu(ops::layer_norm(gx, {}, {}, 1e-6f), ops::layer_norm(xr, {}, {}, 1e-6f), dt()));
    EXPECT_TRUE(same_as_cpu(ops::rms_norm(gx, gw, 1e-6f), ops::rms_norm(xr, wr, 1e-6f), dt()));
    EXPECT_TRUE(same_as_cpu(ops::activation(gx, ops::Activation::GELU_TANH),
                            ops::activation(xr, ops::Activation::GELU_TANH), dt(), 2.0));

    const Tensor img = cpu_randn({2, 6, 9, 7}, 23), gnw = cpu_randn({6}, 24), gnb = cpu_randn({6}, 25);
    EXPECT_TRUE(same_as_cpu(ops::group_norm(on_gpu(img, dt()), on_gpu(gnw, dt()), on_gpu(gnb, dt()), 2, 1e-6f),
                            ops::group_norm(rounded(img, dt()), rounded(gnw, dt()), rounded(gnb, dt()), 2, 1e-6f),
                            dt()));
    const Tensor cw = cpu_randn({4, 6, 3, 3}, 26, 0.2f), cb = cpu_randn({4}, 27);
    EXPECT_TRUE(same_as_cpu(ops::conv2d(on_gpu(img, dt()), on_gpu(cw, dt()), on_gpu(cb, dt()), 2, 1),
                            ops::conv2d(rounded(img, dt()), rounded(cw, dt()), rounded(cb, dt()), 2, 1), dt()));

    const Tensor q = cpu_randn({2, 77, 128}, 28), k = cpu_randn({2, 45, 128}, 29), v = cpu_randn({2, 45, 128}, 30);
    EXPECT_TRUE(same_as_cpu(ops::attention(on_gpu(q, dt()), on_gpu(k, dt()), on_gpu(v, dt()), 2, 0.125f),
                            ops::attention(rounded(q, dt()), rounded(k, dt()), rounded(v, dt()), 2, 0.125f), dt(),
                            dt() == DType::F32 ? 1.0 : 2.0));  // 16-bit: cuDNN or the tensor cores round P too
}

TEST_P(CudaTensorOps, ElementwiseCatAndConvert) {
    const Tensor a = cpu_randn({7, 13}, 40), b = cpu_randn({7, 13}, 41), c = cpu_randn({7, 5}, 42);
    const Tensor ar = rounded(a, dt()), br = rounded(b, dt()), cr = rounded(c, dt());
    const Tensor ga = on_gpu(a, dt()), gb = on_gpu(b, dt()), gc = on_gpu(c, dt());
    EXPECT_TRUE(same_as_cpu(ops::add(ga, gb), ops::add(ar, br), dt()));
    EXPECT_TRUE(same_as_cpu(ops::mul(ga, gb), ops::mul(ar, br), dt()));
    EXPECT_TRUE(same_as_cpu(ops::scale(ga, 0.25f), ops::scale(ar, 0.25f), dt()));
    // Concatenation copies: exact. The second part is a transposed (non-contiguous) view.
    const Tensor gb_view = on_gpu(b.transpose(0, 1).contiguous(), dt()).transpose(0, 1);  // [7, 13], strided
    const Tensor cat_gpu = ops::cat({ga, gc, gb_view}, 1);
    EXPECT_EQ(download(cat_gpu), ops::cat({ar, cr, br}, 1).to_float_vector());
    // Device-side conversion rounds like the CPU's (both round to nearest even).
    const Tensor gf = on_gpu(a, DType::F32);
    EXPECT_EQ(to_host(convert(gf, dt())).to(DType::F32).to_float_vector(), ar.to_float_vector());
}

// The sampler's step on the device gives the CPU's bits: with guidance (velocity [2B, ...], unconditional half
// first) and without, on an odd element count (the latents of 3 images of 5 x 7 x 11).
TEST(CudaDevice, GuidedEulerStepIsBitExact) {
    SD3_REQUIRE_GPU();
    const Tensor x = cpu_randn({3, 5, 7, 11}, 50), v2 = cpu_randn({6, 5, 7, 11}, 51, 1.7f, 0.2f);
    for (const float guidance : {7.0f, 1.0f}) {
        const Tensor v = guidance > 1.0f ? v2 : v2.slice(0, 0, 3).contiguous();
        Tensor cpu_x = x.clone();
        ops::guided_euler_step_(cpu_x, v, guidance, 0.8571429f, 0.7826087f);
        Tensor gpu_x = to_device(x, kGPU).value();
        ops::guided_euler_step_(gpu_x, to_device(v, kGPU).value(), guidance, 0.8571429f, 0.7826087f);
        const Tensor back = to_host(gpu_x);
        EXPECT_EQ(std::memcmp(back.raw(), cpu_x.raw(), cpu_x.nbytes()), 0) << "guidance " << guidance;
        EXPECT_NE(back.to_float_vector(), x.to_float_vector());  // the step moved the latents
    }
}

// The denoising loop with its latents and timesteps on the device gives the CPU loop's latents bit for bit. The
// velocity (a function of the latents, the timestep and the conditioning row) is computed on the host from what
// the loop hands over, so any mix-up of rows, timesteps or the step's arithmetic shows.
TEST(CudaDevice, SamplerLoopOnTheDeviceMatchesTheCpu) {
    SD3_REQUIRE_GPU();
    auto velocity = [](const Tensor& x_any, const Tensor& t_any, const Tensor& ctx, const Tensor& pooled) {
        const Tensor x = to_host(x_any), t = to_host(t_any);
        Tensor v = Tensor::empty(x.shape(), DType::F32);
        const int64_t per = x.numel() / x.size(0);
        for (int64_t r = 0; r < x.size(0); ++r) {
            const float c = ctx.data<float>()[r * ctx.size(1) * ctx.size(2)] + pooled.data<float>()[r * pooled.size(1)];
            for (int64_t k = 0; k < per; ++k)
                v.data<float>()[r * per + k] = 0.3f * x.data<float>()[r * per + k] + 0.001f * t.data<float>()[r] + c;
        }
        return v;
    };
    VelocityFn on_cpu = velocity;
    VelocityFn on_gpu = [&](const Tensor& x, const Tensor& t, const Tensor& ctx, const Tensor& pooled) {
        EXPECT_EQ(x.device(), kGPU);
        EXPECT_EQ(t.device(), kGPU);
        return to_device(velocity(x, t, ctx, pooled), kGPU);
    };
    Conditioning c;
    c.context = Tensor::full({2, 3, 2}, 0.25);
    c.pooled = Tensor::full({2, 4}, 0.5);
    c.negative_context = Tensor::full({2, 3, 2}, -0.125);
    c.negative_pooled = Tensor::full({2, 4}, 0.0625);
    FlowMatchSchedulerConfig sc;
    sc.shift = 3.0;
    const FlowMatchSchedule schedule = FlowMatchEulerScheduler(sc).inference_schedule(5);
    const Tensor x0 = cpu_randn({2, 4, 3, 5}, 60);
    for (const float guidance : {7.0f, 1.0f}) {
        std::vector<int64_t> reported;
        const Tensor want = sample_flow_match(on_cpu, x0, schedule, c, guidance).value();
        const Tensor got = sample_flow_match(on_gpu, x0, schedule, c, guidance, [&](const SamplerProgress& p) {
                               reported.push_back(p.step);
                               return true;
                           }, kGPU).value();
        EXPECT_EQ(got.device(), kCPU);
        EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << "guidance " << guidance;
        EXPECT_EQ(reported, (std::vector<int64_t>{1, 2, 3, 4, 5}));
    }
}

// DeviceGraph: the body runs at the first call, is recorded and launched at the second, and replayed after; each
// replay does what the body does (here: y = 0.5 * x + x, x = y, on fixed buffers).
TEST(CudaDevice, DeviceGraphRecordsOnceAndReplays) {
    SD3_REQUIRE_GPU();
    const Tensor x0 = cpu_randn({1000}, 90);
    Tensor x = to_device(x0, kGPU).value(), y = to_device(x0, kGPU).value();
    Tensor want = x0.clone();
    int bodies = 0;
    DeviceGraph graph(kGPU);
    for (int call = 0; call < 5; ++call) {
        ASSERT_TRUE(graph.run([&]() -> Status {
                        ++bodies;
                        const Tensor t = ops::add(ops::scale(x, 0.5f), x);  // freed before the body returns
                        copy_into(y, t);
                        copy_into(x, y);
                        return {};
                    }).ok());
        want = ops::add(ops::scale(want, 0.5f), want);
        EXPECT_EQ(to_host(x).to_float_vector(), want.to_float_vector()) << "call " << call;
    }
    EXPECT_EQ(bodies, 2);
    EXPECT_TRUE(graph.replaying());
}

// The sampler on the GPU with a model made of device ops only: recorded at the second step, so the model function
// runs twice for five steps, and the latents still match the CPU loop's bit for bit.
TEST(CudaDevice, SamplerReplaysTheModelCall) {
    SD3_REQUIRE_GPU();
    int calls = 0;
    VelocityFn model = [&](const Tensor& x, const Tensor&, const Tensor&, const Tensor&) -> Result<Tensor> {
        ++calls;
        return ops::add(ops::scale(x, 0.3f), x);
    };
    Conditioning c;
    c.context = Tensor::full({2, 3, 2}, 0.25);
    c.pooled = Tensor::full({2, 4}, 0.5);
    c.negative_context = Tensor::full({2, 3, 2}, -0.125);
    c.negative_pooled = Tensor::full({2, 4}, 0.0625);
    const FlowMatchSchedule schedule = FlowMatchEulerScheduler().inference_schedule(5);
    const Tensor x0 = cpu_randn({2, 4, 3, 5}, 61);
    const Tensor want = sample_flow_match(model, x0, schedule, c, 5.0f).value();
    calls = 0;
    const Tensor got = sample_flow_match(model, x0, schedule, c, 5.0f, {}, kGPU, true).value();
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaTensorOps, ::testing::ValuesIn(kDTypes), dt_param_name);

}  // namespace
}  // namespace sd3::gputest
