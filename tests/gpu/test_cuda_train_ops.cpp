// The training update on the GPU (ops/train_ops.h, the optimizers made for a CUDA device) against the CPU loops of
// ops/cpu/train_ops.h. The kernels spell every float operation of the CPU loop with a round-to-nearest intrinsic,
// so element-wise results must be the same bits; only the reductions' order differs (per-sample loss sums and
// per-tensor norms, both in double), which the tolerances below cover. Then the golden training step of the tiny
// model (lora_and_training.safetensors) with the model, loss and optimizer on the GPU in float32.
#include <cmath>
#include <limits>

#include "gpu_testing.h"
#include "models/mmdit.h"
#include "ops/ops.h"
#include "ops/train_ops.h"
#include "train/flow_matching.h"
#include "train/optimizer.h"
#include "train/sd3_components.h"

namespace sd3::gputest {
namespace {

using train::OptimizerConfig;
using train::OptimizerKind;
using train::ParamSegment;

Tensor cpu_vec(const std::vector<float>& v) { return Tensor::from_vector({static_cast<int64_t>(v.size())}, v); }

// Bitwise equality of two float32 buffers (NaNs compare by bits too), naming the first difference.
::testing::AssertionResult same_bits(const Tensor& got_any, const Tensor& ref_any) {
    const Tensor got = to_host(got_any), ref = to_host(ref_any);
    if (got.nbytes() != ref.nbytes() || got.dtype() != ref.dtype())
        return ::testing::AssertionFailure() << got.describe() << " vs " << ref.describe();
    const auto* a = static_cast<const uint8_t*>(got.raw());
    const auto* b = static_cast<const uint8_t*>(ref.raw());
    const size_t es = dtype_size(got.dtype());
    for (size_t i = 0; i < got.nbytes(); ++i)
        if (a[i] != b[i]) {
            const size_t e = i / es;
            ::testing::AssertionResult r = ::testing::AssertionFailure();
            r << "element " << e << " differs";
            if (got.dtype() == DType::F32)
                r << ": " << got.data<float>()[e] << " vs " << ref.data<float>()[e];
            return r;
        }
    return ::testing::AssertionSuccess();
}

class CudaTrainLoss : public ::testing::TestWithParam<DType> {};

// grad is the same bits; the per-sample sums (double, another summation order) agree to 1e-12 relative.
TEST_P(CudaTrainLoss, MatchesTheCpu) {
    SD3_REQUIRE_GPU();
    const DType dt = GetParam();
    for (const bool precondition : {false, true}) {
        // A sample of 1008 elements (one block), of 105, and of 16 x 64 x 65 (9 blocks of 8192, the last partial).
        for (const int64_t B : {int64_t{3}, int64_t{70}, int64_t{2}}) {
            const Shape shape = B == 3 ? Shape{B, 16, 9, 7} : B == 70 ? Shape{B, 3, 5, 7} : Shape{B, 16, 64, 65};
            const Tensor pred = rounded(cpu_randn(shape, 1), dt);  // what the GPU holds in dt
            const Tensor noisy = cpu_randn(shape, 2), x0 = cpu_randn(shape, 3), noise = cpu_randn(shape, 4);
            std::vector<cpu::LossSample> samples;
            for (int64_t b = 0; b < B; ++b)
                samples.push_back({0.05f + 0.9f * static_cast<float>(b) / static_cast<float>(B),
                                   1.0f + 0.1f * static_cast<float>(b % 5), 1e-3 * static_cast<double>(b + 1)});
            const Tensor table = ops::loss_sample_table(samples);
            Tensor grad_cpu, grad_gpu;
            const Tensor sums_cpu = ops::flow_matching_loss(pred, noisy, x0, noise, table, precondition, &grad_cpu);
            const Tensor sums_gpu = ops::flow_matching_loss(on_gpu(pred, dt), on_gpu(noisy, DType::F32),
                                                            on_gpu(x0, DType::F32), on_gpu(noise, DType::F32),
                                                            to_device(table, kGPU).value(), precondition, &grad_gpu);
            EXPECT_TRUE(same_bits(grad_gpu, grad_cpu)) << "precondition " << precondition << " B " << B;
            const Tensor got = to_host(sums_gpu);
            for (int64_t b = 0; b < B; ++b)
                EXPECT_NEAR(got.data<double>()[b], sums_cpu.data<double>()[b], 1e-12 * sums_cpu.data<double>()[b])
                    << "sample " << b;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaTrainLoss, ::testing::ValuesIn(kDTypes), dt_param_name);

// Prior preservation through train::flow_matching_loss_deferred: the same loss parts from the GPU.
TEST(CudaTrainOps, DeferredLossWithPriorPreservationMatchesTheCpu) {
    SD3_REQUIRE_GPU();
    const Shape shape{4, 16, 6, 5};
    train::LossInputs in;
    in.model_pred = cpu_randn(shape, 11);
    in.noisy = cpu_randn(shape, 12);
    in.x0 = cpu_randn(shape, 13);
    in.noise = cpu_randn(shape, 14);
    in.sigmas = {0.2f, 0.7f, 0.4f, 0.9f};
    in.weighting = {1.0f, 2.0f, 0.5f, 1.5f};
    in.with_prior_preservation = true;
    in.prior_loss_weight = 0.75;
    const train::LossResult ref = train::flow_matching_loss(in, 0.5);
    train::LossInputs gpu = in;
    gpu.model_pred = on_gpu(in.model_pred, DType::F32);
    gpu.noisy = on_gpu(in.noisy, DType::F32);
    gpu.x0 = on_gpu(in.x0, DType::F32);
    gpu.noise = on_gpu(in.noise, DType::F32);
    train::DeferredLoss d = train::flow_matching_loss_deferred(gpu, 0.5);
    EXPECT_EQ(d.grad_pred.device(), kGPU);
    EXPECT_TRUE(same_bits(d.grad_pred, ref.grad_pred));
    const train::LossResult got = d.value();
    EXPECT_NEAR(got.loss, ref.loss, 1e-12 * ref.loss);
    EXPECT_NEAR(got.instance_loss, ref.instance_loss, 1e-12 * ref.instance_loss);
    EXPECT_NEAR(got.prior_loss, ref.prior_loss, 1e-12 * ref.prior_loss);
}

// Odd segment sizes: 8-bit blocks with a partial last one, float32 segments longer and shorter than a block.
const std::vector<ParamSegment> kSegments = {{0, 10000}, {10000, 3000}, {13000, 4096}, {17096, 5}, {17101, 2049}};
constexpr int64_t kNumel = 17101 + 2049;

std::vector<float> gradients(int step, bool with_nonfinite) {
    std::vector<float> g = randn(kNumel, 100 + step, 1e-2f);
    if (with_nonfinite) {  // the 8-bit optimizer zeroes these moments and leaves the params
        g[17] = std::numeric_limits<float>::quiet_NaN();
        g[10003] = std::numeric_limits<float>::infinity();
        g[17099] = -std::numeric_limits<float>::infinity();
    }
    return g;
}

// Runs `steps` updates on the CPU and the GPU from the same params, comparing params and the whole state.
void expect_same_updates(const OptimizerConfig& c, int steps, bool with_nonfinite) {
    auto cpu_opt = train::make_optimizer(c, kSegments);
    auto gpu_opt = train::make_optimizer(c, kSegments, kGPU);
    EXPECT_EQ(gpu_opt->device(), kGPU);
    Tensor p_cpu = cpu_vec(randn(kNumel, 7, 0.1f));
    Tensor p_gpu = on_gpu(p_cpu, DType::F32);
    for (int k = 0; k < steps; ++k) {
        const Tensor g_cpu = cpu_vec(gradients(k, with_nonfinite));
        const double lr = 1e-3 * (k + 1);
        cpu_opt->step(p_cpu, g_cpu, lr);
        gpu_opt->step(p_gpu, on_gpu(g_cpu, DType::F32), lr);
        ASSERT_TRUE(same_bits(p_gpu, p_cpu)) << train::optimizer_kind_name(c.kind) << " step " << k + 1;
    }
    const NamedTensors a = gpu_opt->state(), b = cpu_opt->state();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].first, b[i].first);
        EXPECT_TRUE(same_bits(a[i].second, b[i].second)) << a[i].first;
    }
    // The state goes back into a fresh GPU optimizer (a resumed run) and the next step agrees too.
    auto resumed = train::make_optimizer(c, kSegments, kGPU);
    ASSERT_TRUE(resumed->load_state(b).ok());
    const Tensor g = cpu_vec(gradients(steps, with_nonfinite));
    cpu_opt->step(p_cpu, g, 1e-3);
    resumed->step(p_gpu, on_gpu(g, DType::F32), 1e-3);
    EXPECT_TRUE(same_bits(p_gpu, p_cpu)) << "after load_state";
}

TEST(CudaTrainOps, AdamWMatchesTheCpuBitForBit) {
    SD3_REQUIRE_GPU();
    expect_same_updates(OptimizerConfig{}, 4, false);
}

TEST(CudaTrainOps, AdamW8bitMatchesTheCpuBitForBit) {
    SD3_REQUIRE_GPU();
    OptimizerConfig c;
    c.kind = OptimizerKind::ADAMW_8BIT;
    c.weight_decay = 1e-2;
    expect_same_updates(c, 5, true);
}

TEST(CudaTrainOps, ProdigyOnTheHostMatchesTheCpu) {
    SD3_REQUIRE_GPU();
    OptimizerConfig c;
    c.kind = OptimizerKind::PRODIGY;
    expect_same_updates(c, 3, false);
}

// The norm's per-tensor sums run in another order (double): the norm agrees to a float ulp, the clipped gradients
// to the ulp the coefficient may move.
TEST(CudaTrainOps, ClipGradNormMatchesTheCpu) {
    SD3_REQUIRE_GPU();
    auto gpu_opt = train::make_optimizer(OptimizerConfig{}, kSegments, kGPU);
    for (const double max_norm : {1e-3, 1e3}) {  // clipped, and left alone
        std::vector<float> g = randn(kNumel, 5, 1e-2f);
        const Tensor g_gpu = on_gpu(cpu_vec(g), DType::F32);
        const float ref = train::clip_grad_norm(g.data(), kSegments, max_norm);
        const float got = to_host(gpu_opt->clip_grad_norm(g_gpu, max_norm)).data<float>()[0];
        EXPECT_NEAR(got, ref, 2e-7 * ref);
        EXPECT_TRUE(close(download(g_gpu), g, DType::F32)) << "max_norm " << max_norm;
    }
}

TEST(CudaTrainOps, FiniteCheckAccumulateAndZero) {
    SD3_REQUIRE_GPU();
    std::vector<float> x = randn(1001, 9);
    const Tensor acc_cpu = cpu_vec(randn(1001, 10));
    const Tensor acc = on_gpu(acc_cpu, DType::F32), xg = on_gpu(cpu_vec(x), DType::F32);
    EXPECT_TRUE(ops::all_finite(xg));
    ops::add_scaled_(acc, xg, 0.25f);
    ops::add_scaled_(acc_cpu, cpu_vec(x), 0.25f);
    EXPECT_TRUE(same_bits(acc, acc_cpu));
    ops::zero_(acc);
    EXPECT_TRUE(same_bits(acc, Tensor::zeros({1001})));
    x[1000] = std::numeric_limits<float>::infinity();
    EXPECT_FALSE(ops::all_finite(on_gpu(cpu_vec(x), DType::F32)));
    x[1000] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_FALSE(ops::all_finite(on_gpu(cpu_vec(x), DType::F32)));
}

// The trainer's transfers that do not wait for the device's queue: uploads through pinned staging (the source may
// change right after the call) and downloads waited for one by one, many in flight at once.
TEST(CudaTrainOps, AsyncUploadsAndDownloadsKeepTheirBytes) {
    SD3_REQUIRE_GPU();
    std::vector<Tensor> sent, on_device;
    std::vector<PendingDownload> back;
    for (int k = 0; k < 12; ++k) {
        Tensor host = cpu_vec(randn(1000 + 7919 * k, 40 + k));
        sent.push_back(host.clone());
        auto d = upload_async(host, kGPU);
        ASSERT_TRUE(d.ok()) << d.status().message();
        std::fill(host.data<float>(), host.data<float>() + host.numel(), -1.0f);  // the upload has its own copy
        on_device.push_back(ops::scale(*d, 2.0f));
        back.push_back(download_async(on_device.back()));
    }
    for (int k = 11; k >= 0; --k) {  // in any order
        const Tensor got = back[k].wait();
        ASSERT_EQ(got.numel(), sent[k].numel());
        for (int64_t i = 0; i < got.numel(); ++i)
            ASSERT_EQ(got.data<float>()[i], 2.0f * sent[k].data<float>()[i]) << "transfer " << k << " element " << i;
    }
}

// One step of the reference (train.* of lora_and_training.safetensors) with everything on the GPU in float32: the
// MMDiT with LoRA behind TrainableModel, the deferred loss, the optimizer's clipping and AdamW. The bounds are the
// CPU test's (tests/unit/test_train_loop.cpp, GoldenTrainingStepThroughTheTrainerPieces).
TEST(CudaTrainOps, GoldenTrainingStepWithTheUpdateOnTheGpu) {
    using sd3::testing::golden_lora_name;
    SD3_REQUIRE_GPU();
    ModelSpec spec;
    spec.model = sd3::testing::data_path("tiny-a/model");
    train::Sd3ComponentOptions so;
    so.placement = nn::Placement{kGPU, DType::F32};
    so.patch_transformer = [](MMDiT& m) { m.mutable_weights().pos_embed = sincos_pos_embed(16, 8, 32); };
    auto comps = train::make_sd3_components(spec, so);
    ASSERT_TRUE(comps.ok()) << comps.status().message();
    SafetensorsFile g = sd3::testing::open_golden("tiny-a/lora_and_training.safetensors");
    auto model = comps->load_transformer(train::LoraSettings{}, 0);
    ASSERT_TRUE(model.ok()) << model.status().message();
    train::TrainableModel& m = **model;
    ASSERT_EQ(m.lora_params().device(), kGPU);
    Tensor params = Tensor::empty({m.lora_numel()}, DType::F32);
    std::vector<ParamSegment> segs;
    for (const train::LoraSlot& s : m.slots()) {
        const Tensor before = sd3::testing::golden_tensor(g, "train.param_before." + golden_lora_name(s.name));
        std::copy(before.data<float>(), before.data<float>() + before.numel(), params.data<float>() + s.offset);
        segs.push_back({s.offset, shape_numel(s.shape)});
    }
    copy_into(m.lora_params(), params);
    const Tensor x0 = sd3::testing::golden_tensor(g, "train.x0"), noise = sd3::testing::golden_tensor(g, "train.noise");
    const std::vector<float> sig = sd3::testing::golden_tensor(g, "train.sigmas").to_float_vector();
    const Tensor ts = m.stage_input(sd3::testing::golden_tensor(g, "train.timesteps"));
    const Tensor xt = train::noisy_input(x0, noise, sig);
    auto pred = m.forward(m.stage_input(xt), ts, sd3::testing::golden_tensor(g, "train.encoder_hidden_states"),
                          sd3::testing::golden_tensor(g, "train.pooled_projections"), 0);
    ASSERT_TRUE(pred.ok()) << pred.status().message();
    ASSERT_EQ(pred->device(), kGPU);  // the loss runs where the prediction is
    EXPECT_TRUE(sd3::testing::all_close(to_host(*pred), sd3::testing::golden_tensor(g, "train.model_pred"), 5e-6, 1e-5));
    train::LossInputs li{*pred, m.stage_input(xt), m.stage_input(x0), m.stage_input(noise), sig, {1.0f, 1.0f}};
    train::DeferredLoss loss = train::flow_matching_loss_deferred(li);
    ops::zero_(m.lora_grads());
    ASSERT_TRUE(m.backward(loss.grad_pred).ok());
    const double ref_loss = sd3::testing::golden_tensor(g, "train.loss.logit_normal").to_float_vector()[0];
    EXPECT_NEAR(loss.value().loss, ref_loss, 1e-5 * ref_loss);
    const Tensor grads = to_host(m.lora_grads());
    for (const train::LoraSlot& s : m.slots()) {
        const Tensor got = Tensor::borrow(grads.data<float>() + s.offset, s.shape, DType::F32, kCPU);
        const Tensor ref = sd3::testing::golden_tensor(g, "train.grad." + golden_lora_name(s.name));
        EXPECT_TRUE(sd3::testing::all_close(got, ref, 1e-6, 2e-3)) << s.name;
    }
    auto opt = train::make_optimizer(OptimizerConfig{}, segs, kGPU);
    const float norm = to_host(opt->clip_grad_norm(m.lora_grads(), 1.0)).data<float>()[0];
    const float ref_norm = sd3::testing::golden_tensor(g, "train.grad_norm_before_clip").to_float_vector()[0];
    EXPECT_NEAR(norm, ref_norm, 1e-4 * ref_norm);
    opt->step(m.lora_params(), m.lora_grads(), 1e-4);
    const Tensor after = to_host(m.lora_params());
    for (const train::LoraSlot& s : m.slots()) {
        const Tensor got = Tensor::borrow(after.data<float>() + s.offset, s.shape, DType::F32, kCPU);
        EXPECT_TRUE(sd3::testing::all_close(
            got, sd3::testing::golden_tensor(g, "train.param_after." + golden_lora_name(s.name)), 2e-7, 1e-6))
            << s.name;
    }
}

}  // namespace
}  // namespace sd3::gputest
