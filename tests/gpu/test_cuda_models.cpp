// The models on the GPU against the golden data of tests/data/tiny-a (the reference's float32 outputs) and
// against themselves on the CPU: MMDiT forward, the reference training step (loss gradients into the LoRA),
// the VAE, CLIP-L/G and T5 (resident and streamed block by block), the text-to-image pipeline, and
// bit-identical reruns (also with checkpointing and with streamed transformer blocks). Every test runs in f32,
// bf16 and f16 and skips without a GPU.
//
// Tolerances. f32 runs the same math as the CPU with another summation order (cuBLASLt, TF32 off): per-element
// bounds a little wider than the CPU golden tests' (those measured ~1e-6). In bf16/f16 every activation is
// rounded to 8/11 significant bits at every op, so per-element bounds mean little through a deep network; the
// checks use the norm-wise relative error ‖got − ref‖ / ‖ref‖, bounded by a few unit roundoffs times the depth:
// bf16 (u = 2^-8 = 0.4%) 3%, f16 (u = 2^-11 = 0.05%) 0.5%. A wrong op (a missing term, a swapped chunk, a wrong
// scale) moves these by 10-100%.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "common/random_mmdit.h"
#include "common/reference_mmdit.h"
#include "common/testing.h"
#include "gpu/gpu_testing.h"
#include "infer/pipeline.h"
#include "io/json_file.h"
#include "io/lora_file.h"
#include "io/model_folder.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/t5_encoder.h"
#include "models/vae.h"
#include "ops/device.h"
#include "train/loss_scale.h"
#include "ops/mmdit_ops.h"

namespace sd3 {
namespace {

using gputest::kGPU;
using testing::golden_tensor;
using testing::reference_mmdit;
using testing::open_golden;
using testing::tiny_path;

class GpuModels : public ::testing::TestWithParam<DType> {
  protected:
    nn::Placement placement() const { return nn::Placement{kGPU, GetParam()}; }
    bool f32() const { return GetParam() == DType::F32; }
    // The norm-wise bound for the 16-bit dtypes (see the file comment).
    double norm_tol() const { return GetParam() == DType::BF16 ? 3e-2 : 5e-3; }
};


// f32: per element with the given bounds; 16-bit: norm-wise. Records the error as a test property.
void expect_close(const GpuModels& t, const Tensor& got, const Tensor& ref, double atol, double rtol,
                  const std::string& what, double norm_tol) {
    const double rel = testing::relative_error(host_f32(got), host_f32(ref));
    ::testing::Test::RecordProperty(what, std::to_string(rel));
    std::printf("%s: norm-wise relative error %.3g\n", what.c_str(), rel);
    if (t.GetParam() == DType::F32) {
        EXPECT_TRUE(testing::all_close(host_f32(got), host_f32(ref), atol, rtol)) << what;
    } else {
        EXPECT_LT(rel, norm_tol) << what;
    }
}


TEST_P(GpuModels, MMDiTForwardMatchesTheReference) {
    SD3_REQUIRE_GPU();
    MMDiT m = reference_mmdit();
    ASSERT_TRUE(m.to(placement()).ok());
    SafetensorsFile g = open_golden("tiny-a/mmdit.safetensors");
    for (int n : {0, 1}) {
        const std::string p = std::to_string(n) + ".";
        auto out = m.forward(golden_tensor(g, p + "hidden_states"), golden_tensor(g, p + "timestep"),
                             golden_tensor(g, p + "encoder_hidden_states"), golden_tensor(g, p + "pooled_projections"));
        ASSERT_TRUE(out.ok()) << out.status().message();
        // f32: the CPU golden test's 5e-6 + 1e-5 relative, doubled for cuBLASLt's other summation order.
        expect_close(*this, *out, golden_tensor(g, p + "output"), 1e-5, 2e-5, "mmdit case " + std::to_string(n),
                     norm_tol());
    }
}

// The reference's training step (tests/golden/test_mmdit_lora.cpp): forward, loss, backward into the LoRA.
struct GpuTrainStep {
    Tensor pred, grads;
    LoraTrainable lora;
};

// `resident_bytes`: the transformer's block budget (blocks past it stream from host memory, --max-vram).
GpuTrainStep gpu_train_step(const nn::Placement& p, bool checkpoint, size_t resident_bytes = SIZE_MAX) {
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    MMDiT m = reference_mmdit();
    EXPECT_TRUE(m.to(p, std::nullopt, resident_bytes).ok());
    GpuTrainStep out;
    out.lora = m.make_trainable_lora(LoraTrainConfig{}).value();
    auto set = read_lora_file(tiny_path("lora/pytorch_lora_weights.safetensors"));
    EXPECT_TRUE(set.ok() && out.lora.load(*set).ok());
    LoraTrainable on_device = out.lora;
    on_device.params = convert(to_device(out.lora.params, p.device).value(), p.dtype);
    EXPECT_TRUE(m.attach_trainable(on_device).ok());

    const Tensor x0 = golden_tensor(r, "train.x0"), noise = golden_tensor(r, "train.noise");
    const std::vector<float> sig = golden_tensor(r, "train.sigmas").to_float_vector();
    const int64_t B = 2, per = x0.numel() / B;
    Tensor noisy = Tensor::empty(x0.shape(), DType::F32);
    for (int64_t i = 0; i < x0.numel(); ++i) {
        const float s = sig[i / per];
        noisy.data<float>()[i] = s * noise.data<float>()[i] + (1.0f - s) * x0.data<float>()[i];
    }
    MMDiTActivations saved;
    saved.checkpoint_blocks = checkpoint;
    auto pred = m.forward(noisy, golden_tensor(r, "train.timesteps"), golden_tensor(r, "train.encoder_hidden_states"),
                          golden_tensor(r, "train.pooled_projections"), &saved);
    EXPECT_TRUE(pred.ok()) << pred.status().message();
    out.pred = *pred;
    Tensor dpred = Tensor::empty(x0.shape(), DType::F32);
    for (int64_t i = 0; i < x0.numel(); ++i) {
        const float s = sig[i / per];
        const float e = out.pred.data<float>()[i] * (-s) + noisy.data<float>()[i] - x0.data<float>()[i];
        dpred.data<float>()[i] = 2.0f * e / static_cast<float>(per * B) * (-s);
    }
    // The trainer's loss scale: float16 backwards run at 2^16 and divide it out (train/loss_scale.h).
    const float scale = train::LossScale(p.dtype == DType::F16).value();
    for (int64_t i = 0; i < x0.numel(); ++i) dpred.data<float>()[i] *= scale;
    Tensor grads = ops::zeros({out.lora.numel}, p.device);  // float32 master gradients
    m.backward(dpred, saved, grads);
    out.grads = to_host(grads);
    for (int64_t i = 0; i < out.grads.numel(); ++i) {
        out.grads.data<float>()[i] /= scale;
        EXPECT_TRUE(std::isfinite(out.grads.data<float>()[i])) << "gradient " << i << " overflowed at the loss scale";
    }
    return out;
}

TEST_P(GpuModels, TrainingStepGradientsMatchTheReference) {
    SD3_REQUIRE_GPU();
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    const GpuTrainStep st = gpu_train_step(placement(), false);
    expect_close(*this, st.pred, golden_tensor(r, "train.model_pred"), 1e-5, 2e-5, "train model_pred", norm_tol());
    // Gradients: the CPU golden test's bound (2e-5 of each tensor's scale + 1e-4 relative), doubled for f32; in
    // 16-bit the backward chain is twice the forward's depth: twice the norm-wise bound.
    for (size_t i = 0; i < st.lora.slots.size(); ++i) {
        std::string name = st.lora.slots[i].name;
        name = name.substr(0, name.rfind(".weight")) + ".default.weight";
        const Tensor ref = golden_tensor(r, "train.grad." + name);
        double scale = 0;
        for (float v : ref.to_float_vector()) scale = std::max(scale, static_cast<double>(std::fabs(v)));
        const Shape shape = st.lora.slots[i].shape;
        const int64_t off = st.lora.slots[i].offset;
        const Tensor got = st.grads.slice(0, off, off + shape_numel(shape)).view(shape);
        expect_close(*this, got, ref, 4e-5 * scale, 2e-4, "grad " + name, 2 * norm_tol());
    }
}

TEST_P(GpuModels, TrainingStepIsBitIdenticalAcrossRunsCheckpointingAndStreaming) {
    SD3_REQUIRE_GPU();
    const GpuTrainStep a = gpu_train_step(placement(), false);
    const GpuTrainStep b = gpu_train_step(placement(), false);
    const GpuTrainStep c = gpu_train_step(placement(), true);
    EXPECT_TRUE(testing::all_close(a.grads, b.grads, 0, 0)) << "rerun";
    EXPECT_TRUE(testing::all_close(a.grads, c.grads, 0, 0)) << "activation checkpointing";
    // Every block streamed from host memory: the same kernels on the same data, so the same bits.
    const GpuTrainStep d = gpu_train_step(placement(), true, 0);
    EXPECT_TRUE(testing::all_close(a.pred, d.pred, 0, 0)) << "streamed blocks: prediction";
    EXPECT_TRUE(testing::all_close(a.grads, d.grads, 0, 0)) << "streamed blocks: gradients";
}

// Five random blocks, all streamed through the two slots on the device (the copies on the side stream, each
// waiting for the kernels that read the slot's previous block), two forward+backward steps in a row: bit for bit
// the resident model's steps.
TEST_P(GpuModels, FiveStreamedBlocksGiveTheResidentStepsBitForBit) {
    SD3_REQUIRE_GPU();
    MMDiTConfig c = testing::small_config();
    c.num_layers = 5;
    c.attention_head_dim = 8;  // the CUDA attention backward takes head dims 8, 16, 32, 64
    c.caption_projection_dim = c.inner_dim();
    std::mt19937 rng(21);
    const auto weights = testing::random_weights(c, rng);
    const testing::RandomInputs in = testing::random_inputs(rng);
    auto steps = [&](size_t resident_bytes, bool checkpoint) {
        MMDiT m = MMDiT::create(c, weights).value();
        EXPECT_TRUE(m.to(placement(), std::nullopt, resident_bytes).ok());
        LoraTrainable lora = m.make_trainable_lora(LoraTrainConfig{}).value();
        for (int64_t k = 0; k < lora.numel; ++k) lora.params.data<float>()[k] = 0.05f * std::sin(0.37f * k);
        LoraTrainable on_device = lora;
        on_device.params = convert(to_device(lora.params, kGPU).value(), GetParam());
        EXPECT_TRUE(m.attach_trainable(on_device).ok());
        std::vector<testing::TrainingStep> out = testing::two_training_steps(m, in, checkpoint, lora.numel, kGPU);
        EXPECT_EQ(m.resident_blocks(), resident_bytes == 0 ? 0 : 5);
        return out;
    };
    for (bool checkpoint : {false, true}) {
        const std::vector<testing::TrainingStep> ref = steps(SIZE_MAX, checkpoint), got = steps(0, checkpoint);
        for (size_t i = 0; i < ref.size(); ++i) {
            EXPECT_TRUE(testing::all_close(got[i].pred, ref[i].pred, 0, 0))
                << "prediction of step " << i << (checkpoint ? ", checkpointing" : "");
            EXPECT_TRUE(testing::all_close(got[i].grads, ref[i].grads, 0, 0))
                << "gradients of step " << i << (checkpoint ? ", checkpointing" : "");
        }
    }
}

const Vae& tiny_vae_on(const nn::Placement& p) {
    static std::map<DType, Vae> cache;
    auto it = cache.find(p.dtype);
    if (it == cache.end()) {
        auto v = Vae::load_folder(tiny_path("model/vae"));
        EXPECT_TRUE(v.ok()) << v.status().message();
        EXPECT_TRUE(v->to(p).ok());
        it = cache.emplace(p.dtype, std::move(v).value()).first;
    }
    return it->second;
}

TEST_P(GpuModels, VaeMatchesTheReference) {
    SD3_REQUIRE_GPU();
    const Vae& vae = tiny_vae_on(nn::overflow_safe(placement()));  // f16 runs the VAE in f32, as shipped
    SafetensorsFile f = open_golden("tiny-a/vae.safetensors");
    for (const std::string p : {"0.", "1."}) {
        auto dist = vae.encode(golden_tensor(f, p + "image"));
        ASSERT_TRUE(dist.ok()) << dist.status().message();
        // f32: the CPU golden test's 2e-5 + 1e-4 relative.
        expect_close(*this, dist->mean, golden_tensor(f, p + "latent_mean"), 2e-5, 1e-4, "vae mean " + p, norm_tol());
        auto img = vae.decode(golden_tensor(f, p + "latent_in"));
        ASSERT_TRUE(img.ok()) << img.status().message();
        // The decoder is the deepest chain here (its mid block, 3 up blocks of resnets and upsampling convs with a
        // group norm each): bf16 measured 3.1-3.2%, so its bound is 5%.
        const double decode_tol = GetParam() == DType::BF16 ? 5e-2 : norm_tol();
        expect_close(*this, *img, golden_tensor(f, p + "decoded"), 2e-5, 1e-4, "vae decode " + p, decode_tol);
    }
}

template <typename Config>
Config tiny_config(const std::string& sub) {
    const std::string path = tiny_path("model/" + sub + "/config.json");
    return Config::from_json(read_json_file(path).value(), path).value();
}

std::shared_ptr<const TensorSource> tiny_source(const std::string& sub) {
    return SafetensorsSource::open(tiny_path("model/" + sub), {"model"}).value();
}

TEST_P(GpuModels, ClipEncodersMatchTheReference) {
    SD3_REQUIRE_GPU();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    for (const auto& [sub, key] : {std::pair<std::string, std::string>{"text_encoder", "clip_l"},
                                   {"text_encoder_2", "clip_g"}}) {
        auto model = ClipTextModel::load(tiny_config<ClipTextConfig>(sub), tiny_source(sub));
        ASSERT_TRUE(model.ok()) << model.status().message();
        ASSERT_TRUE(model->to(placement()).ok());
        auto out = model->forward(golden_tensor(g, "0." + key + ".input_ids"));
        ASSERT_TRUE(out.ok()) << out.status().message();
        // f32: the CPU golden test's 1e-5 + 1e-5 relative, doubled.
        expect_close(*this, out->penultimate, golden_tensor(g, "0." + key + ".penultimate"), 2e-5, 2e-5,
                     key + " penultimate", norm_tol());
        expect_close(*this, out->pooled, golden_tensor(g, "0." + key + ".pooled"), 2e-5, 2e-5, key + " pooled",
                     norm_tol());
    }
}

// T5 with every block resident, and with every block streamed from host memory (a budget of 0 bytes): the same
// kernels on the same data, so the outputs are bit-identical; both against the reference.
TEST_P(GpuModels, T5MatchesTheReferenceResidentAndStreamed) {
    SD3_REQUIRE_GPU();
    const SafetensorsFile g = open_golden("tiny-a/text_encoders.safetensors");
    T5LoadOptions opt;
    opt.format = T5WeightFormat::F32;
    const nn::Placement p = nn::overflow_safe(placement());
    auto resident = T5Encoder::load(tiny_config<T5Config>("text_encoder_3"), tiny_source("text_encoder_3"), opt);
    auto streamed = T5Encoder::load(tiny_config<T5Config>("text_encoder_3"), tiny_source("text_encoder_3"), opt);
    ASSERT_TRUE(resident.ok() && streamed.ok());
    ASSERT_TRUE(resident->to(p).ok());
    ASSERT_TRUE(streamed->to(p, 0).ok());
    EXPECT_EQ(resident->resident_blocks(), resident->config().num_layers);
    EXPECT_EQ(streamed->resident_blocks(), 0);
    const Tensor ids0 = golden_tensor(g, "0.t5.input_ids"), ids1 = golden_tensor(g, "1.t5.input_ids");
    auto a = resident->forward(ids0);
    auto b = streamed->forward_batches({ids0, ids1});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(testing::all_close(*a, (*b)[0], 0, 0)) << "streamed vs resident";
    expect_close(*this, *a, golden_tensor(g, "0.t5.last_hidden"), 2e-5, 2e-5, "t5 case 0", norm_tol());
    expect_close(*this, (*b)[1], golden_tensor(g, "1.t5.last_hidden"), 2e-5, 2e-5, "t5 case 1", norm_tol());
}

// The whole pipeline (encoders, 28-step sampling with CFG, decoder) on the GPU against the same on the CPU.
TEST_P(GpuModels, PipelineMatchesTheCpu) {
    SD3_REQUIRE_GPU();
    auto model = ModelFolder::open(tiny_path("model"));
    ASSERT_TRUE(model.ok()) << model.status().message();
    GenerateRequest req;
    req.prompt = "a photo of a cat";
    req.steps = 8;
    req.width = req.height = 64;
    req.seed = 7;
    PipelineOptions cpu_opt, gpu_opt;
    cpu_opt.text.t5.format = gpu_opt.text.t5.format = T5WeightFormat::F32;
    gpu_opt.placement = placement();
    auto cpu_pipe = TextToImage::open(*model, cpu_opt);
    auto gpu_pipe = TextToImage::open(*model, gpu_opt);
    ASSERT_TRUE(cpu_pipe.ok() && gpu_pipe.ok());
    auto ref = cpu_pipe->generate(req);
    auto got = gpu_pipe->generate(req);
    ASSERT_TRUE(ref.ok() && got.ok()) << (ref.ok() ? got.status().message() : ref.status().message());
    // Eight guided Euler steps compound the per-step error: twice the norm-wise bound; f32 per element ~1e-4.
    expect_close(*this, got->latents, ref->latents, 1e-4, 1e-4, "pipeline latents", 2 * norm_tol());
    expect_close(*this, got->images_unit, ref->images_unit, 1e-4, 1e-4, "pipeline images", 2 * norm_tol());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuModels, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const ::testing::TestParamInfo<DType>& i) { return gputest::dt_name(i.param); });

}  // namespace
}  // namespace sd3
