// The training loop: with a small analytic stand-in for the MMDiT (fast: bit-identical reruns, resume equality,
// accumulation, loss going down) and with the tiny golden model end to end (loss on a fixed evaluation batch goes
// down, two runs give identical LoRA bytes, interrupted + resumed equals uninterrupted, the LoRA loads back).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/testing.h"
#include "io/image.h"
#include "io/lora_file.h"
#include "models/mmdit.h"
#include "train/cache.h"
#include "train/checkpoint.h"
#include "train/flow_matching.h"
#include "train/optimizer.h"
#include "train/sd3_components.h"
#include "train/trainer.h"

namespace sd3::train {
namespace {

namespace fs = std::filesystem;
using sd3::testing::data_path;

fs::path temp_dir(const std::string& name) {
    fs::path p = fs::temp_directory_path() / str_cat("sd3tune_loop_", name, "_", ::getpid());
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

std::vector<uint8_t> file_bytes(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

ImageDecoder file_decoder() {
    return [](const std::string& p) -> Result<RgbImage> {
        SD3_ASSIGN_OR_RETURN(Image img, read_image(p));
        return RgbImage{img.width, img.height, std::move(img.pixels)};
    };
}

// pred[b, :, p] = x[b, :, p] + s * B A x[b, :, p] + 0.1 * pooled[b, 0]: a LoRA on a 16-channel identity map.
class MockModel final : public TrainableModel {
  public:
    MockModel(int r, uint64_t seed, bool replayable = false) : r_(r), replayable_(replayable) {
        slots_ = {{"transformer_blocks.0.attn.to_q.lora_A.weight", 0, {r, 16}},
                  {"transformer_blocks.0.attn.to_q.lora_B.weight", 16 * r, {16, r}}};
        params_.assign(32 * r, 0.0f);
        grads_.assign(32 * r, 0.0f);
        TrainRng rng = TrainRng::for_purpose(seed, "lora_init");
        for (int i = 0; i < 16 * r; ++i) params_[i] = static_cast<float>(rng.normal() / r);
    }
    const std::vector<LoraSlot>& slots() const override { return slots_; }
    bool replayable() const override { return replayable_; }
    int64_t lora_numel() const override { return static_cast<int64_t>(params_.size()); }
    Tensor lora_params() override { return Tensor::borrow(params_.data(), {lora_numel()}, DType::F32, kCPU); }
    Tensor lora_grads() override { return Tensor::borrow(grads_.data(), {lora_numel()}, DType::F32, kCPU); }
    Result<Tensor> forward(const Tensor& x, const Tensor&, const Tensor&, const Tensor& pooled, uint64_t) override {
        x_ = x.clone();
        const int64_t B = x.size(0), P = x.numel() / (B * 16);
        Tensor out = x.clone();
        const float* A = params_.data();
        const float* Bm = params_.data() + 16 * r_;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t p = 0; p < P; ++p) {
                std::vector<float> ax(r_, 0.0f);
                for (int k = 0; k < r_; ++k)
                    for (int c = 0; c < 16; ++c) ax[k] += A[k * 16 + c] * x.data<float>()[(b * 16 + c) * P + p];
                for (int c = 0; c < 16; ++c) {
                    float v = 0;
                    for (int k = 0; k < r_; ++k) v += Bm[c * r_ + k] * ax[k];
                    out.data<float>()[(b * 16 + c) * P + p] += v + 0.1f * pooled.data<float>()[b * pooled.size(1)];
                }
            }
        return out;
    }
    Status backward(const Tensor& g) override {
        const int64_t B = g.size(0), P = g.numel() / (B * 16);
        std::vector<double> M(256, 0.0);  // sum_b,p g x^T
        for (int64_t b = 0; b < B; ++b)
            for (int64_t p = 0; p < P; ++p)
                for (int i = 0; i < 16; ++i)
                    for (int j = 0; j < 16; ++j)
                        M[i * 16 + j] += double(g.data<float>()[(b * 16 + i) * P + p]) * x_.data<float>()[(b * 16 + j) * P + p];
        const float* A = params_.data();
        const float* Bm = params_.data() + 16 * r_;
        for (int k = 0; k < r_; ++k)
            for (int j = 0; j < 16; ++j) {
                double s = 0;
                for (int i = 0; i < 16; ++i) s += Bm[i * r_ + k] * M[i * 16 + j];
                grads_[k * 16 + j] += static_cast<float>(s);  // dA = B^T M
            }
        for (int i = 0; i < 16; ++i)
            for (int k = 0; k < r_; ++k) {
                double s = 0;
                for (int j = 0; j < 16; ++j) s += M[i * 16 + j] * A[k * 16 + j];
                grads_[16 * r_ + i * r_ + k] += static_cast<float>(s);  // dB = M A^T
            }
        return {};
    }

  private:
    int r_;
    bool replayable_;
    std::vector<LoraSlot> slots_;
    std::vector<float> params_, grads_;
    Tensor x_;
};

// `replayable`: the mock says its steps may be recorded, so the trainer runs them from fixed buffers through a
// DeviceGraph (on the CPU the body runs each time: the buffers' path, without the recording).
TrainComponents mock_components(bool replayable = false) {
    TrainComponents c;
    c.model_identity = "mock";
    c.encode_prompts = [](const std::vector<std::string>& ps) -> Result<std::vector<EncodedPrompt>> {
        std::vector<EncodedPrompt> out;
        for (const auto& p : ps) out.push_back({Tensor::full({4, 8}, p.size() * 0.01), Tensor::full({8}, p.size() * 0.02)});
        return out;
    };
    c.load_vae_encoder = []() -> Result<std::function<Result<LatentDist>(const Tensor&)>> {
        return std::function<Result<LatentDist>(const Tensor&)>([](const Tensor& img) -> Result<LatentDist> {
            const int64_t h = img.size(1) / 8, w = img.size(2) / 8;
            Tensor m = Tensor::zeros({16, h, w}), lv = Tensor::full({16, h, w}, -6.0);
            for (int c = 0; c < 16; ++c)
                for (int64_t y = 0; y < h; ++y)
                    for (int64_t x = 0; x < w; ++x) {
                        double s = 0;
                        for (int dy = 0; dy < 8; ++dy)
                            for (int dx = 0; dx < 8; ++dx) s += img.data<float>()[((c % 3) * img.size(1) + y * 8 + dy) * img.size(2) + x * 8 + dx];
                        m.data<float>()[(c * h + y) * w + x] = static_cast<float>(s / 64 * (1 + c / 16.0));
                    }
            return LatentDist{m, lv};
        });
    };
    c.load_transformer = [replayable](const LoraSettings& l,
                                      uint64_t seed) -> Result<std::unique_ptr<TrainableModel>> {
        return std::unique_ptr<TrainableModel>(std::make_unique<MockModel>(static_cast<int>(l.rank), seed, replayable));
    };
    return c;
}

TrainOptions mock_options(const fs::path& out) {
    TrainOptions o;
    o.model = "mock";
    o.output_dir = out.string();
    o.seed = 7;
    o.data.instance_data_dir = data_path("train/images");
    o.data.instance_prompt = "a photo of sks dog";
    o.data.resolution = 32;
    o.data.random_flip = true;
    o.train_batch_size = 2;
    o.max_train_steps = 12;
    o.learning_rate = 5e-3;
    o.lr_schedule.warmup_steps = 0;
    o.checkpointing_steps = 1000;
    o.report_to = {"none"};
    return o;
}

TEST(TrainLoop, RunLengthBookkeeping) {
    TrainOptions o;
    o.train_batch_size = 4;
    o.gradient_accumulation_steps = 4;
    o.num_train_epochs = 3;
    RunLength r = compute_run_length(o, 20);  // 5 batches per epoch -> 2 updates per epoch (the last averages 1)
    EXPECT_EQ(r.batches_per_epoch, 5);
    EXPECT_EQ(r.updates_per_epoch, 2);
    EXPECT_EQ(r.max_train_steps, 6);
    o.max_train_steps = 7;
    EXPECT_EQ(compute_run_length(o, 20).num_epochs, 4);
}

// A replayable model's steps read fixed buffers that each micro-batch's inputs are uploaded into, with the loss's
// constants from a table: the same LoRA bytes and losses as the steps run on the micro-batches themselves, with
// gradient accumulation and with an epoch's smaller last batch (which runs as it is).
TEST(TrainLoop, StepsFromFixedBuffersGiveTheSameTraining) {
    auto train = [](bool replayable, const std::string& name) {
        const fs::path dir = temp_dir(name);
        TrainComponents c = mock_components(replayable);
        TrainOptions o = mock_options(dir);
        o.train_batch_size = 3;  // 3 and 1 of the folder's images per epoch
        o.gradient_accumulation_steps = 2;
        o.max_train_steps = 4;
        std::vector<double> losses;
        TrainCallbacks cb;
        cb.on_step = [&](const StepReport& r) { losses.push_back(r.loss); };
        EXPECT_TRUE(run_training(o, c, file_decoder(), cb).ok());
        return std::pair{file_bytes(dir / "pytorch_lora_weights.safetensors"), losses};
    };
    const auto [queued, queued_losses] = train(false, "mock_queued");
    const auto [fixed, fixed_losses] = train(true, "mock_fixed");
    ASSERT_FALSE(queued.empty());
    EXPECT_EQ(queued, fixed);
    EXPECT_EQ(queued_losses, fixed_losses);
}

TEST(TrainLoop, StepReportsSplitTheUpdateIntoPhases) {
    // The phases are parts of the update's wall time: each non-negative, together at most the whole, the forward
    // and backward (the mock's model work) never zero; and the JSONL log carries them.
    const fs::path dir = temp_dir("mock_phases");
    TrainComponents c = mock_components();
    TrainOptions o = mock_options(dir);
    o.max_train_steps = 3;
    std::vector<StepReport> reports;
    TrainCallbacks cb;
    cb.on_step = [&](const StepReport& r) { reports.push_back(r); };
    ASSERT_TRUE(run_training(o, c, file_decoder(), cb).ok());
    ASSERT_EQ(reports.size(), 3u);
    for (const StepReport& r : reports) {
        const StepReport::Phases& p = r.phases;
        EXPECT_GE(p.batch, 0.0);
        EXPECT_GT(p.step, 0.0);
        EXPECT_GE(p.optimizer, 0.0);
        EXPECT_LE(p.batch + p.step + p.optimizer, r.seconds + 1e-9);
    }
    std::ifstream log(dir / "logs" / "train_log.jsonl");
    std::string line;
    int with_phases = 0;
    while (std::getline(log, line)) with_phases += line.find("\"phase_seconds\":{\"batch\"") != std::string::npos;
    EXPECT_EQ(with_phases, 3);
    fs::remove_all(dir);
}

TEST(TrainLoop, MockRunsAreBitIdenticalAndLossFalls) {
    const fs::path a = temp_dir("mock_a"), b = temp_dir("mock_b");
    TrainComponents c = mock_components();
    TrainOptions oa = mock_options(a), ob = mock_options(b);
    oa.max_train_steps = ob.max_train_steps = 40;
    oa.learning_rate = ob.learning_rate = 2e-2;
    auto ra = run_training(oa, c, file_decoder());
    ASSERT_TRUE(ra.ok()) << ra.status().message();
    auto rb = run_training(ob, c, file_decoder());
    ASSERT_TRUE(rb.ok()) << rb.status().message();
    EXPECT_EQ(file_bytes(a / kLoraWeightName), file_bytes(b / kLoraWeightName));
    EXPECT_EQ(ra->losses, rb->losses);
    // mean of the last 10 updates below the first 10 (random timesteps make single losses noisy)
    double first = 0, last = 0;
    for (int i = 0; i < 10; ++i) first += ra->losses[i], last += ra->losses[30 + i];
    EXPECT_LT(last, first);
    // the second run reused the first run's cache? (separate output dirs: separate caches) -- a rerun in the same
    // folder reuses it:
    auto rc = run_training(oa, c, file_decoder());
    ASSERT_TRUE(rc.ok());
    EXPECT_EQ(file_bytes(a / kLoraWeightName), file_bytes(b / kLoraWeightName));
    fs::remove_all(a);
    fs::remove_all(b);
}

void expect_resume_equal(TrainOptions base, const std::string& name, int64_t stop_at) {
    const fs::path full = temp_dir(name + "_full"), part = temp_dir(name + "_part");
    TrainComponents c = mock_components();
    TrainOptions of = base, op = base;
    of.output_dir = full.string();
    op.output_dir = part.string();
    op.checkpointing_steps = stop_at;
    auto rf = run_training(of, c, file_decoder());
    ASSERT_TRUE(rf.ok()) << rf.status().message();
    TrainCallbacks stop;
    stop.stop_after = [stop_at](int64_t s) { return s == stop_at; };
    auto r1 = run_training(op, c, file_decoder(), stop);
    ASSERT_TRUE(r1.ok()) << r1.status().message();
    EXPECT_TRUE(r1->interrupted);
    EXPECT_FALSE(fs::exists(part / kLoraWeightName));
    op.resume_from_checkpoint = "latest";
    auto r2 = run_training(op, c, file_decoder());
    ASSERT_TRUE(r2.ok()) << r2.status().message();
    EXPECT_EQ(r2->resumed_from, stop_at);
    EXPECT_EQ(file_bytes(full / kLoraWeightName), file_bytes(part / kLoraWeightName)) << name;
    fs::remove_all(full);
    fs::remove_all(part);
}

TEST(TrainLoop, InterruptedAndResumedEqualsUninterrupted) {
    TrainOptions o = mock_options("unused");
    expect_resume_equal(o, "adamw", 5);  // mid-epoch (2 batches per epoch): resumes inside epoch 2
    o.gradient_accumulation_steps = 3;   // an update spans epochs' ends; stop on an epoch boundary and mid-way
    o.data.repeats = 2;
    expect_resume_equal(o, "accum", 3);
    o.use_8bit_adam = true;
    o.optim.min_8bit_size = 16;  // the mock's 64-element tensors quantized too
    o.optim.block_size = 32;
    expect_resume_equal(o, "adam8bit", 4);
    o.use_8bit_adam = false;
    o.optimizer = "prodigy";
    o.learning_rate = 1.0;
    o.lr_schedule.kind = LrScheduleKind::COSINE;
    expect_resume_equal(o, "prodigy", 6);
}

TEST(TrainLoop, ResumeRefusesOtherSettings) {
    const fs::path d = temp_dir("mismatch");
    TrainComponents c = mock_components();
    TrainOptions o = mock_options(d);
    o.checkpointing_steps = 2;
    o.max_train_steps = 2;
    ASSERT_TRUE(run_training(o, c, file_decoder()).ok());
    o.resume_from_checkpoint = "latest";
    o.max_train_steps = 4;
    o.lora.rank = 2;
    auto r = run_training(o, c, file_decoder());
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("other training settings"), std::string::npos);
    fs::remove_all(d);
}

TEST(TrainLoop, PriorPreservationNeedsAGeneratorForMissingClassImages) {
    const fs::path d = temp_dir("prior");
    TrainComponents c = mock_components();
    TrainOptions o = mock_options(d);
    o.data.with_prior_preservation = true;
    o.data.class_data_dir = (d / "class").string();
    o.data.class_prompt = "a photo of a dog";
    o.data.num_class_images = 3;
    auto r = run_training(o, c, file_decoder());
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("class images"), std::string::npos);
    // with class images present the run works, any batch size
    fs::create_directories(o.data.class_data_dir);
    for (int i = 0; i < 3; ++i)
        fs::copy_file(data_path("train/images/dog_2.png"), fs::path(o.data.class_data_dir) / str_cat("c", i, ".png"));
    o.train_batch_size = 3;
    o.max_train_steps = 3;
    auto ok = run_training(o, c, file_decoder());
    ASSERT_TRUE(ok.ok()) << ok.status().message();
    EXPECT_EQ(ok->losses.size(), 3u);
    fs::remove_all(d);
}

// ---- the tiny golden model, end to end ---------------------------------------------------------------------

TrainOptions tiny_options(const fs::path& out) {
    TrainOptions o;
    o.model = data_path("tiny-a/model");
    o.output_dir = out.string();
    o.seed = 3;
    o.data.instance_data_dir = data_path("train/images");
    o.data.instance_prompt = "a photo of sks dog";
    o.data.resolution = 32;
    o.train_batch_size = 2;
    o.max_train_steps = 6;
    o.learning_rate = 1e-2;
    o.lr_schedule.warmup_steps = 0;
    o.checkpointing_steps = 1000;
    o.report_to = {"none"};
    return o;
}

Result<TrainComponents> tiny_components() {
    ModelSpec spec;
    spec.model = data_path("tiny-a/model");
    return make_sd3_components(spec, {});
}

// Mean loss over fixed (image, noise, sigma) draws with the given LoRA params, through the real MMDiT.
double eval_loss(TrainComponents& c, const TrainOptions& o, const std::vector<float>* params) {
    auto model = c.load_transformer(o.lora, o.run_seed());
    EXPECT_TRUE(model.ok());
    if (params) std::copy(params->begin(), params->end(), (*model)->lora_params().data<float>());
    auto cache = TrainCache::open(o.effective_cache_dir(), "eval");
    auto list = list_instance_images(o.data);
    auto data = prepare_dataset(o.data, *list, {}, file_decoder(), 1);
    auto vae = c.load_vae_encoder();
    auto prompts = c.encode_prompts({o.data.instance_prompt});
    double total = 0;
    int n = 0;
    TrainRng rng(123);
    for (const auto& img : data->instance) {
        auto d = (*vae)(img.pixels);
        for (float sigma : {0.3f, 0.6f, 0.9f}) {
            Tensor x0 = d->mean.unsqueeze(0).clone();  // [1, 16, h, w]
            for (int64_t i = 0; i < x0.numel(); ++i)
                x0.data<float>()[i] = (x0.data<float>()[i] - float(c.vae_shift_factor)) * float(c.vae_scaling_factor);
            Tensor noise = Tensor::empty(x0.shape(), DType::F32);
            rng.normal_fill(noise.data<float>(), noise.numel());
            Tensor xt = noisy_input(x0, noise, {sigma});
            auto pred = (*model)->forward(xt, Tensor::from_vector({1}, {sigma * 1000}), (*prompts)[0].prompt_embeds.unsqueeze(0),
                                          (*prompts)[0].pooled.unsqueeze(0), 0);
            LossInputs li{*pred, xt, x0, noise, {sigma}, {1.0f}};
            total += flow_matching_loss(li).loss;
            ++n;
        }
    }
    return total / n;
}

TEST(TrainTiny, LossFallsRunsRepeatAndLoraLoadsBack) {
    auto comps = tiny_components();
    ASSERT_TRUE(comps.ok()) << comps.status().message();
    const fs::path a = temp_dir("tiny_a"), b = temp_dir("tiny_b");
    TrainOptions oa = tiny_options(a), ob = tiny_options(b);
    oa.max_train_steps = ob.max_train_steps = 12;
    auto ra = run_training(oa, *comps, file_decoder());
    ASSERT_TRUE(ra.ok()) << ra.status().message();
    auto rb = run_training(ob, *comps, file_decoder());
    ASSERT_TRUE(rb.ok()) << rb.status().message();
    EXPECT_EQ(file_bytes(a / kLoraWeightName), file_bytes(b / kLoraWeightName));  // same seed: same bytes
    // the LoRA loads back (io/lora_file.h) into the MMDiT's trainable layout and lowers the loss on fixed draws
    auto model = (*comps).load_transformer(oa.lora, oa.run_seed());
    ASSERT_TRUE(model.ok());
    std::vector<float> init((*model)->lora_params().data<float>(), (*model)->lora_params().data<float>() + (*model)->lora_numel());
    std::vector<float> trained(init.size());
    ASSERT_TRUE(load_lora_params((a / kLoraWeightName).string(), (*model)->slots(), trained.data()).ok());
    EXPECT_NE(init, trained);
    auto set = sd3::read_lora_file((a / kLoraWeightName).string());
    ASSERT_TRUE(set.ok()) << set.status().message();
    auto mmdit = MMDiT::load_dir(data_path("tiny-a/model/transformer"));
    ASSERT_TRUE(mmdit.ok());
    EXPECT_TRUE(mmdit->attach_lora(*set, 1.0f).ok());
    const double before = eval_loss(*comps, oa, &init), after = eval_loss(*comps, oa, &trained);
    EXPECT_LT(after, before) << "before " << before << " after " << after;
    fs::remove_all(a);
    fs::remove_all(b);
}

TEST(TrainTiny, InterruptedAndResumedEqualsUninterrupted) {
    auto comps = tiny_components();
    ASSERT_TRUE(comps.ok()) << comps.status().message();
    const fs::path full = temp_dir("tiny_full"), part = temp_dir("tiny_part");
    TrainOptions of = tiny_options(full), op = tiny_options(part);
    of.max_train_steps = op.max_train_steps = 4;
    op.checkpointing_steps = 3;  // mid-epoch (2 updates per epoch): the resumed run starts inside epoch 1
    ASSERT_TRUE(run_training(of, *comps, file_decoder()).ok());
    TrainCallbacks stop;
    stop.stop_after = [](int64_t s) { return s == 3; };
    ASSERT_TRUE(run_training(op, *comps, file_decoder(), stop).ok());
    op.resume_from_checkpoint = "latest";
    auto r = run_training(op, *comps, file_decoder());
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->resumed_from, 3);
    EXPECT_EQ(file_bytes(full / kLoraWeightName), file_bytes(part / kLoraWeightName));
    fs::remove_all(full);
    fs::remove_all(part);
}

}  // namespace
}  // namespace sd3::train

namespace sd3::train {
namespace {

// One step of the reference (lora_and_training.safetensors train.*) through the trainer's own pieces: the MMDiT with
// LoRA behind TrainableModel, flow_matching_loss, clip_grad_norm and AdamW.
TEST(TrainTiny, GoldenTrainingStepThroughTheTrainerPieces) {
    using sd3::testing::golden_lora_name;
    ModelSpec spec;
    spec.model = data_path("tiny-a/model");
    Sd3ComponentOptions so;
    // the float32 sin-cos table the reference ran with (the folder stores it as fp16; see tests/golden/test_mmdit.cpp)
    so.patch_transformer = [](MMDiT& m) { m.mutable_weights().pos_embed = sincos_pos_embed(16, 8, 32); };
    auto comps = make_sd3_components(spec, so);
    ASSERT_TRUE(comps.ok()) << comps.status().message();
    SafetensorsFile g = sd3::testing::open_golden("tiny-a/lora_and_training.safetensors");
    auto model = comps->load_transformer(LoraSettings{}, 0);
    ASSERT_TRUE(model.ok()) << model.status().message();
    TrainableModel& m = **model;
    std::vector<ParamSegment> segs;
    for (const LoraSlot& s : m.slots()) {
        const Tensor before = sd3::testing::golden_tensor(g, "train.param_before." + golden_lora_name(s.name));
        ASSERT_EQ(before.shape(), s.shape) << s.name;
        std::copy(before.data<float>(), before.data<float>() + before.numel(), m.lora_params().data<float>() + s.offset);
        segs.push_back({s.offset, shape_numel(s.shape)});
    }
    EXPECT_EQ(segs.size(), 16u);
    const Tensor x0 = sd3::testing::golden_tensor(g, "train.x0"), noise = sd3::testing::golden_tensor(g, "train.noise");
    const std::vector<float> sig = sd3::testing::golden_tensor(g, "train.sigmas").to_float_vector();
    const Tensor ts = sd3::testing::golden_tensor(g, "train.timesteps");
    const Tensor xt = noisy_input(x0, noise, sig);
    auto pred = m.forward(xt, ts, sd3::testing::golden_tensor(g, "train.encoder_hidden_states"),
                          sd3::testing::golden_tensor(g, "train.pooled_projections"), 0);
    ASSERT_TRUE(pred.ok()) << pred.status().message();
    // float32 through two joint blocks in another summation order (the MMDiT's own golden test uses the same bound)
    EXPECT_TRUE(sd3::testing::all_close(*pred, sd3::testing::golden_tensor(g, "train.model_pred"), 5e-6, 1e-5));
    LossInputs li{*pred, xt, x0, noise, sig, {1.0f, 1.0f}};
    const LossResult r = flow_matching_loss(li);
    const double ref_loss = sd3::testing::golden_tensor(g, "train.loss.logit_normal").to_float_vector()[0];
    EXPECT_NEAR(r.loss, ref_loss, 1e-5 * ref_loss);
    std::fill(m.lora_grads().data<float>(), m.lora_grads().data<float>() + m.lora_numel(), 0.0f);
    ASSERT_TRUE(m.backward(r.grad_pred).ok());
    for (const LoraSlot& s : m.slots()) {
        Tensor got = Tensor::borrow(m.lora_grads().data<float>() + s.offset, s.shape, DType::F32, kCPU);
        // gradients accumulate float32 products over 2x64 tokens: relative ~1e-5 of the largest entries
        const Tensor ref = sd3::testing::golden_tensor(g, "train.grad." + golden_lora_name(s.name));
        EXPECT_TRUE(sd3::testing::all_close(got, ref, 1e-6, 2e-3)) << s.name;
    }
    const float norm = clip_grad_norm(m.lora_grads().data<float>(), segs, 1.0);
    const float ref_norm = sd3::testing::golden_tensor(g, "train.grad_norm_before_clip").to_float_vector()[0];
    EXPECT_NEAR(norm, ref_norm, 1e-4 * ref_norm);
    auto opt = make_optimizer(OptimizerConfig{}, segs);
    opt->step(m.lora_params().data<float>(), m.lora_grads().data<float>(), 1e-4);
    for (const LoraSlot& s : m.slots()) {
        Tensor got = Tensor::borrow(m.lora_params().data<float>() + s.offset, s.shape, DType::F32, kCPU);
        // the first Adam step moves each parameter by ~lr·sign(g); a gradient differing by 1e-3 relative changes
        // that by far less than 1e-7 except where |g| ~ eps
        EXPECT_TRUE(sd3::testing::all_close(
            got, sd3::testing::golden_tensor(g, "train.param_after." + golden_lora_name(s.name)), 2e-7, 1e-6))
            << s.name;
    }
}

// --max-vram under checkpointing: the blocks whose whole forward fits in what the weights leave of the budget
// skip their recompute (the memory plan says how many), with the same gradients to the bit.
TEST(TrainSd3Components, CheckpointingKeepsTheBlocksTheBudgetAllows) {
    ModelSpec spec;
    spec.model = data_path("tiny-a/model");
    SafetensorsFile g = sd3::testing::open_golden("tiny-a/lora_and_training.safetensors");
    const Tensor x0 = sd3::testing::golden_tensor(g, "train.x0");  // [2, 16, h, w]
    const Tensor ctx = sd3::testing::golden_tensor(g, "train.encoder_hidden_states");
    const Tensor pooled = sd3::testing::golden_tensor(g, "train.pooled_projections");
    const Tensor ts = sd3::testing::golden_tensor(g, "train.timesteps");
    auto train_step = [&](size_t budget, std::string* plan) {
        Sd3ComponentOptions so;
        so.gradient_checkpointing = true;
        so.transformer_max_resident_bytes = budget;
        auto comps = make_sd3_components(spec, so);
        EXPECT_TRUE(comps.ok()) << comps.status().message();
        auto model = comps->load_transformer(LoraSettings{}, 7);
        EXPECT_TRUE(model.ok()) << model.status().message();
        TrainableModel& m = **model;
        for (int64_t i = 0; i < m.lora_numel(); ++i) m.lora_params().data<float>()[i] = 0.01f * static_cast<float>(i % 17 - 8);
        *plan = m.plan_memory(x0.size(0), x0.size(2), x0.size(3), ctx.size(1));
        auto pred = m.forward(x0, ts, ctx, pooled, 0);
        EXPECT_TRUE(pred.ok()) << pred.status().message();
        std::fill(m.lora_grads().data<float>(), m.lora_grads().data<float>() + m.lora_numel(), 0.0f);
        EXPECT_TRUE(m.backward(*pred).ok());  // d(0.5·|pred|²)/d(pred) = pred
        return std::vector<float>(m.lora_grads().data<float>(), m.lora_grads().data<float>() + m.lora_numel());
    };
    std::string unbounded, tight, roomy;
    const std::vector<float> a = train_step(SIZE_MAX, &unbounded);
    const std::vector<float> b = train_step(1, &tight);             // every block streamed and recomputed
    const std::vector<float> c = train_step(size_t{1} << 40, &roomy);  // room for every block's activations
    EXPECT_EQ(unbounded.find("keep theirs"), std::string::npos) << unbounded;
    EXPECT_EQ(tight.find("keep theirs"), std::string::npos) << tight;
    EXPECT_NE(roomy.find("every block kept: --max-vram holds them all"), std::string::npos) << roomy;
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, c);
    EXPECT_TRUE(std::any_of(a.begin(), a.end(), [](float v) { return v != 0.0f; }));
}

}  // namespace
}  // namespace sd3::train
