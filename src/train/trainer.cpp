// The training loop; see trainer.h. Every random draw comes from a TrainRng keyed by (seed, purpose, micro step),
// so a run resumed from a checkpoint draws exactly what the uninterrupted run drew.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/log.h"
#include "io/name_map.h"
#include "ops/device.h"
#include "ops/train_ops.h"
#include "train/cache.h"
#include "train/checkpoint.h"
#include "train/flow_matching.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"
#include "train/tensorboard.h"

namespace sd3::train {

namespace fs = std::filesystem;

RunLength compute_run_length(const TrainOptions& o, int64_t dataset_length) {
    RunLength r;
    r.dataset_length = dataset_length;
    r.batches_per_epoch = (dataset_length + o.train_batch_size - 1) / o.train_batch_size;  // drop_last=False
    r.updates_per_epoch = (r.batches_per_epoch + o.gradient_accumulation_steps - 1) / o.gradient_accumulation_steps;
    r.max_train_steps = o.max_train_steps ? *o.max_train_steps : o.num_train_epochs * r.updates_per_epoch;
    r.num_epochs = (r.max_train_steps + r.updates_per_epoch - 1) / r.updates_per_epoch;
    return r;
}

namespace {

// The settings a resumed run must share with the run that wrote the checkpoint.
std::string trajectory_hash(const TrainOptions& o) {
    nlohmann::json j = nlohmann::json::parse(train_options_json(o));
    for (const char* k : {"output_dir", "max_train_steps", "num_train_epochs", "checkpointing_steps", "validation_prompt",
                          "num_validation_images", "validation_epochs", "validation_steps"})
        j.erase(k);
    return Hasher().add(j.dump()).hex();
}

Status write_json_line(std::ofstream& f, const nlohmann::ordered_json& j) {
    if (!f.is_open()) return {};
    f << j.dump() << "\n";
    f.flush();
    return {};
}

Result<std::vector<uint8_t>> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error(ErrorCode::IO_ERROR, "cannot read ", path);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

struct Sample {
    const LatentDist* latent;
    const EncodedPrompt* prompt;
};

}  // namespace

Result<TrainResult> run_training(const TrainOptions& o, TrainComponents& c, const ImageDecoder& decode,
                                 const TrainCallbacks& cb) {
    SD3_TRY(validate_train_options(o));
    auto phase = [&](const std::string& m) {
        if (cb.on_phase) cb.on_phase(m);
        else log_info(m);
    };
    const uint64_t seed = o.run_seed();
    if (!o.validation_prompt.empty() && o.num_validation_images > 0 && !c.generate)
        return make_error(ErrorCode::UNSUPPORTED, "--validation_prompt needs image generation, which this build lacks; "
                          "drop --validation_prompt");
    std::error_code ec;
    fs::create_directories(o.output_dir, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, "cannot create --output_dir ", o.output_dir, ": ", ec.message());

    // 1. Prior-preservation class images: generate the missing ones with the base model (reference 3.1 step 3).
    SD3_ASSIGN_OR_RETURN(std::vector<ImageEntry> instance, list_instance_images(o.data));
    SD3_ASSIGN_OR_RETURN(std::vector<ImageEntry> class_list, list_class_images(o.data));
    if (o.data.with_prior_preservation && static_cast<int>(class_list.size()) < o.data.num_class_images) {
        if (!c.generate)
            return make_error(ErrorCode::UNSUPPORTED, "--class_data_dir has ", class_list.size(), " of ",
                              o.data.num_class_images, " class images and this build cannot generate the rest; add images");
        fs::create_directories(o.data.class_data_dir, ec);
        const int missing = o.data.num_class_images - static_cast<int>(class_list.size());
        phase(str_cat("generating ", missing, " class images with the base model"));
        for (int start = 0; start < missing; start += o.sample_batch_size) {
            std::vector<GenerateRequest> reqs;
            for (int i = start; i < std::min(missing, start + o.sample_batch_size); ++i) {
                GenerateRequest r;
                r.prompt = o.data.class_prompt;
                r.width = r.height = o.data.resolution;
                r.seed = seed + 1000003ull * (class_list.size() + i);
                r.with_lora = false;
                r.out_png = (fs::path(o.data.class_data_dir) / str_cat("class-", class_list.size() + i, ".png")).string();
                reqs.push_back(r);
            }
            SD3_TRY(c.generate(reqs, nullptr, o.lora).with_context("generating class images"));
        }
        SD3_ASSIGN_OR_RETURN(class_list, list_class_images(o.data));
    }

    // 2. Decode and preprocess every image once.
    phase(str_cat("preparing ", instance.size(), " training images", class_list.empty() ? "" : str_cat(" and ", class_list.size(), " class images")));
    SD3_ASSIGN_OR_RETURN(PreparedDataset data, prepare_dataset(o.data, instance, class_list, decode, seed));

    // 3. Cache phase: prompt encodings, then latents; encoders gone before the transformer loads.
    const std::string cache_key = str_cat("sd3tune-cache-v1|", c.model_identity, "|seq", o.max_sequence_length);
    SD3_ASSIGN_OR_RETURN(TrainCache cache, TrainCache::open(o.effective_cache_dir(), cache_key));
    std::vector<std::string> prompt_list;
    for (const auto& p : data.instance) prompt_list.push_back(p.entry.caption);
    if (o.data.with_prior_preservation) prompt_list.push_back(o.data.class_prompt);
    // The validation prompt and the empty negative prompt are encoded here too, so validation needs no encoder.
    const bool validating = !o.validation_prompt.empty() && o.num_validation_images > 0;
    if (validating) {
        prompt_list.push_back(o.validation_prompt);
        prompt_list.push_back("");
    }
    phase(str_cat("encoding ", prompt_list.size(), " prompts (cached encodings are reused)"));
    SD3_ASSIGN_OR_RETURN(std::vector<EncodedPrompt> enc, cache.prompts(prompt_list, c.encode_prompts));
    EncodedPrompt validation_positive, validation_negative;
    if (validating) {
        validation_negative = enc.back();
        enc.pop_back();
        validation_positive = enc.back();
        enc.pop_back();
    }
    std::vector<LatentDist> inst_lat, inst_lat_flip, class_lat;
    {
        bool need_vae = false;
        for (const auto& p : data.instance) {
            need_vae = need_vae || !cache.has_latent(p.pixels);
            if (p.pixels_flipped.defined()) need_vae = need_vae || !cache.has_latent(p.pixels_flipped);
        }
        for (const auto& p : data.class_images) need_vae = need_vae || !cache.has_latent(p.pixels);
        std::function<Result<LatentDist>(const Tensor&)> vae;
        if (need_vae) {
            if (!c.load_vae_encoder) return make_error(ErrorCode::UNSUPPORTED, "this build has no VAE encoder");
            SD3_ASSIGN_OR_RETURN(vae, c.load_vae_encoder());
        }
        size_t done = 0;
        const size_t total = data.instance.size() + data.class_images.size();
        for (const auto& p : data.instance) {
            SD3_ASSIGN_OR_RETURN(LatentDist d, cache.latent(p.pixels, vae));
            inst_lat.push_back(d);
            if (p.pixels_flipped.defined()) {
                SD3_ASSIGN_OR_RETURN(LatentDist f, cache.latent(p.pixels_flipped, vae));
                inst_lat_flip.push_back(f);
            }
            if (++done % 8 == 0) phase(str_cat("latents ", done, "/", total));
        }
        for (const auto& p : data.class_images) {
            SD3_ASSIGN_OR_RETURN(LatentDist d, cache.latent(p.pixels, vae));
            class_lat.push_back(d);
        }
    }  // the VAE encoder is released here
    const CacheStats& cs = cache.stats();
    phase(str_cat("cache: ", cs.prompts_hit, " prompt encodings and ", cs.latents_hit, " latents reused, ",
                  cs.prompts_encoded, " and ", cs.latents_encoded, " computed"));

    if (cb.on_cache_done) cb.on_cache_done();

    // 4. The transformer with LoRA, the optimizer, the schedule.
    if (!c.load_transformer) return make_error(ErrorCode::UNSUPPORTED, "this build has no trainable transformer");
    SD3_ASSIGN_OR_RETURN(std::unique_ptr<TrainableModel> model, c.load_transformer(o.lora, seed));
    std::vector<ParamSegment> segments;
    for (const LoraSlot& s : model->slots()) segments.push_back({s.offset, shape_numel(s.shape)});
    std::sort(segments.begin(), segments.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
    // The optimizer lives where the model keeps its master params (a GPU runs the whole update there).
    std::unique_ptr<Optimizer> optimizer = make_optimizer(optimizer_config(o), segments, model->lora_params().device());
    {
        // A micro-batch holds the instance samples and, with prior preservation, as many class samples.
        const int64_t micro = o.train_batch_size * (o.data.with_prior_preservation ? 2 : 1);
        const Tensor& lat = inst_lat.at(0).mean;  // [16, h, w]
        const std::string plan = model->plan_memory(micro, lat.size(1), lat.size(2), 77 + o.max_sequence_length);
        if (!plan.empty()) phase(plan);
    }
    const int64_t P = model->lora_numel();
    ops::zero_(model->lora_grads());
    // The params as host float32 (a copy when they live on a GPU), for checkpoints and LoRA files.
    auto host_params = [&model]() { return to_host(model->lora_params()); };

    const int64_t len = dataset_length(o.data, static_cast<int64_t>(data.instance.size()),
                                       static_cast<int64_t>(data.class_images.size()));
    const RunLength rl = compute_run_length(o, len);
    const LrScheduleConfig sched = lr_schedule_config(o, rl.max_train_steps);
    const double base_lr = o.effective_learning_rate();
    const SigmaTable table = SigmaTable::make(c.num_train_timesteps, c.scheduler_shift);
    phase(str_cat("training: ", len, " samples, ", rl.batches_per_epoch, " batches of ", o.train_batch_size,
                  " per epoch, ", rl.updates_per_epoch, " updates per epoch, ", rl.max_train_steps, " updates in ",
                  rl.num_epochs, " epochs; ", P, " LoRA parameters (", model->slots().size(), " tensors), ",
                  optimizer_kind_name(optimizer_config(o).kind), " state ", optimizer->state_bytes() / 1024, " KiB"));

    // 5. Resume.
    TrainerState st;
    st.settings_hash = trajectory_hash(o);
    TrainResult result;
    if (!o.resume_from_checkpoint.empty()) {
        SD3_ASSIGN_OR_RETURN(std::string dir, resolve_checkpoint(o.output_dir, o.resume_from_checkpoint));
        if (dir.empty()) {
            phase("no checkpoint to resume from in " + o.output_dir + "; starting a new run");
        } else {
            TrainerState loaded;
            const Tensor params = model->lora_params();
            const Tensor host = host_params();  // the params themselves on the CPU
            SD3_TRY(load_checkpoint(dir, model->slots(), host.data<float>(), *optimizer, &loaded, st.settings_hash));
            if (!params.device().is_cpu()) copy_into(params, host);
            st = loaded;
            result.resumed_from = st.global_step;
            phase(str_cat("resumed from ", dir, " at update ", st.global_step));
        }
    }
    // The JSONL log and TensorBoard.
    const fs::path log_dir = fs::path(o.output_dir) / o.logging_dir;
    fs::create_directories(log_dir, ec);
    std::ofstream jsonl(log_dir / "train_log.jsonl", result.resumed_from >= 0 ? std::ios::app : std::ios::trunc);
    if (result.resumed_from < 0) {
        nlohmann::ordered_json head;
        head["event"] = "start";
        head["options"] = nlohmann::json::parse(train_options_json(o));
        SD3_TRY(write_json_line(jsonl, head));
    }
    const bool tensorboard =
        std::find_if(o.report_to.begin(), o.report_to.end(),
                     [](const std::string& r) { return r == "tensorboard" || r == "all"; }) != o.report_to.end();
    TensorBoardWriter tb;
    if (tensorboard) {
        SD3_ASSIGN_OR_RETURN(tb, TensorBoardWriter::open((log_dir / "dreambooth-sd3-lora").string()));
    }

    auto validate = [&](const std::string& phase_name, int64_t step) -> Status {
        if (o.validation_prompt.empty() || o.num_validation_images == 0) return {};
        if (!c.generate) return make_error(ErrorCode::UNSUPPORTED, "this build cannot render validation images");
        phase(str_cat("validation (", phase_name, "): ", o.num_validation_images, " images of \"", o.validation_prompt, "\""));
        std::vector<GenerateRequest> reqs;
        const fs::path dir = fs::path(o.output_dir) / "validation";
        fs::create_directories(dir, ec);
        for (int i = 0; i < o.num_validation_images; ++i) {
            GenerateRequest r;
            r.prompt = o.validation_prompt;
            r.width = r.height = o.data.resolution;
            r.steps = o.validation_inference_steps;
            r.guidance_scale = o.validation_guidance_scale;
            r.seed = seed + i;
            r.positive = validation_positive;
            r.negative = validation_negative;
            r.out_png = (dir / str_cat(phase_name, "-step", step, "-", i, ".png")).string();
            reqs.push_back(r);
        }
        SD3_TRY(c.generate(reqs, model.get(), o.lora));
        for (size_t i = 0; i < reqs.size(); ++i) {
            if (tensorboard) {
                auto png = read_bytes(reqs[i].out_png);
                if (png.ok()) SD3_TRY(tb.image(str_cat(phase_name, "/", i), *png, reqs[i].width, reqs[i].height, step));
            }
            nlohmann::ordered_json j;
            j["event"] = phase_name;
            j["step"] = step;
            j["image"] = reqs[i].out_png;
            SD3_TRY(write_json_line(jsonl, j));
        }
        return {};
    };

    // 6. The loop.
    const int64_t bs = o.train_batch_size;
    // A micro-batch's inputs: latents sampled from the cached posteriors, noise, timesteps, the noisy input and
    // the prompts, built on the host and staged where the model runs. Every draw is keyed by the micro step, so
    // it can be built ahead of its turn.
    struct MicroBatch {
        Tensor x0, noise, noisy, pe, pooled;  // [B, 16, h, w] x3, [B, T, D], [B, P]
        Tensor t;                             // [B] timesteps
        Tensor loss_table;                    // for a replayed step: the loss's per-sample constants
        LossInputs loss;                      // all but model_pred, for the loss and its report
    };
    const int accum = o.gradient_accumulation_steps;
    // Whether micro-batch steps are recorded and replayed (run_micro_batch below; SD3_CUDA_GRAPHS=0: never). Their
    // inputs then stay on the host until they go up into the step's fixed buffers, so the device holds one copy,
    // the text inputs already in the dtype the model computes them in (converted here with the device's rounding).
    // The thread building the next micro-batch then queues nothing on the device, which a recording needs: work
    // another thread queued on the recorded stream would land in the graph and invalidate it.
    const char* graphs_env = std::getenv("SD3_CUDA_GRAPHS");
    const bool replay = model->replayable() && !(graphs_env != nullptr && std::string(graphs_env) == "0");
    auto stage = [&](const Tensor& host) { return replay ? host : model->stage_input(host); };
    auto build_micro_batch = [&](int64_t epoch, int64_t bi, int64_t micro) {
        const std::vector<int64_t> perm = epoch_permutation(seed, epoch, len);
        // batch: instance samples, then (prior preservation) their class samples
        std::vector<Sample> samples;
        TrainRng flip_rng = TrainRng::for_purpose(seed, str_cat("flip.", micro));
        std::vector<Sample> class_samples;
        for (int64_t k = bi * bs; k < std::min(len, (bi + 1) * bs); ++k) {
            const SampleRef ref = sample_at(o.data, perm[k], static_cast<int64_t>(data.instance.size()),
                                            static_cast<int64_t>(data.class_images.size()));
            const bool flip = o.data.random_flip && flip_rng.uniform() < 0.5;
            samples.push_back({flip ? &inst_lat_flip[ref.instance] : &inst_lat[ref.instance], &enc[ref.instance]});
            if (o.data.with_prior_preservation) class_samples.push_back({&class_lat[ref.class_image], &enc.back()});
        }
        samples.insert(samples.end(), class_samples.begin(), class_samples.end());
        const int64_t B = static_cast<int64_t>(samples.size());
        const Shape lat_shape = samples[0].latent->mean.shape();  // [16, h, w]
        const int64_t per = shape_numel(lat_shape);
        Shape bshape = {B};
        bshape.insert(bshape.end(), lat_shape.begin(), lat_shape.end());
        Tensor x0 = Tensor::empty(bshape, DType::F32);     // [B, 16, h, w]
        Tensor noise = Tensor::empty(bshape, DType::F32);  // [B, 16, h, w]
        TrainRng vae_rng = TrainRng::for_purpose(seed, str_cat("vae.", micro));
        TrainRng noise_rng = TrainRng::for_purpose(seed, str_cat("noise.", micro));
        TrainRng t_rng = TrainRng::for_purpose(seed, str_cat("timesteps.", micro));
        const float sf = static_cast<float>(c.vae_scaling_factor), sh = static_cast<float>(c.vae_shift_factor);
        for (int64_t b = 0; b < B; ++b) {
            const Tensor m = samples[b].latent->mean.contiguous(), lv = samples[b].latent->logvar.contiguous();
            float* dst = x0.data<float>() + b * per;
            for (int64_t i = 0; i < per; ++i) {
                // DiagonalGaussianDistribution: logvar clamped to [-30, 20], z = mean + exp(logvar/2) * eps
                const float l = std::clamp(lv.data<float>()[i], -30.0f, 20.0f);
                const float z = m.data<float>()[i] + std::exp(0.5f * l) * static_cast<float>(vae_rng.normal());
                dst[i] = (z - sh) * sf;  // upstream's fix: (z - shift_factor) * scaling_factor
            }
        }
        noise_rng.normal_fill(noise.data<float>(), noise.numel());
        const std::vector<float> u = sample_u(o.timesteps, B, t_rng);
        std::vector<float> sigmas(B), timesteps(B), weighting(B);
        for (int64_t b = 0; b < B; ++b) {
            const int64_t idx = timestep_index(u[b], c.num_train_timesteps);
            sigmas[b] = table.sigmas[idx];
            timesteps[b] = table.timesteps[idx];
            weighting[b] = loss_weighting(o.timesteps.scheme, sigmas[b]);
        }
        const Tensor noisy = noisy_input(x0, noise, sigmas);
        const Shape pe_shape = samples[0].prompt->prompt_embeds.shape();  // [T, D]
        Tensor pe = Tensor::empty({B, pe_shape[0], pe_shape[1]}, DType::F32);                     // [B, T, D]
        Tensor pooled = Tensor::empty({B, samples[0].prompt->pooled.numel()}, DType::F32);       // [B, P]
        for (int64_t b = 0; b < B; ++b) {
            pe.select(0, b).copy_from(samples[b].prompt->prompt_embeds);
            pooled.select(0, b).copy_from(samples[b].prompt->pooled.view({-1}));
        }
        if (replay) {
            pe = pe.to(model->text_input_dtype());
            pooled = pooled.to(model->text_input_dtype());
        }
        MicroBatch mb{stage(x0),    stage(noise),  stage(noisy), stage(pe), stage(pooled),
                      stage(Tensor::from_vector({B}, timesteps)), Tensor(), LossInputs{}};
        mb.loss.noisy = mb.noisy;
        mb.loss.x0 = mb.x0;
        mb.loss.noise = mb.noise;
        mb.loss.sigmas = sigmas;
        mb.loss.weighting = weighting;
        mb.loss.precondition_outputs = o.precondition_outputs;
        mb.loss.with_prior_preservation = o.data.with_prior_preservation;
        mb.loss.prior_loss_weight = o.prior_loss_weight;
        // accelerator.backward divides by accum. A step run as queued builds the table in flow_matching_loss_deferred.
        if (replay) mb.loss_table = loss_sample_table(mb.loss, bshape, 1.0 / accum);
        return mb;
    };
    // Where the micro-batch after (epoch, bi) is: the next batch of the epoch or the first of the next epoch.
    auto following = [&](int64_t epoch, int64_t bi) -> std::pair<int64_t, int64_t> {
        return bi + 1 < rl.batches_per_epoch ? std::pair{epoch, bi + 1} : std::pair{epoch + 1, int64_t{0}};
    };
    std::future<MicroBatch> ahead;  // the next micro-batch, built on another thread while the device works
    int64_t ahead_micro = -1;
    // A micro-batch's forward, loss and backward. Where the model allows it (TrainableModel::replayable) they read
    // fixed buffers, into which each micro-batch's inputs are uploaded first, so they queue the same work on the
    // same memory every time: recorded once as a CUDA graph and replayed after (DeviceGraph), one launch instead of
    // some 2400 kernels queued one by one, and the graph's memory planned once for all of the step's activations.
    // A micro-batch of another shape (an epoch's smaller last batch) runs as it is. SD3_CUDA_GRAPHS=0 turns the
    // recording off.
    DeviceGraph step_graph(model->lora_params().device());
    struct StepBuffers {
        Tensor noisy, x0, noise, pe, pooled, t, loss_table, sums;
    } fixed;
    auto run_micro_batch = [&](const MicroBatch& mb, uint64_t dropout_seed) -> Result<DeferredLoss> {
        const bool fits = !fixed.noisy.defined() ||
                          (fixed.noisy.shape() == mb.noisy.shape() && fixed.pe.shape() == mb.pe.shape() &&
                           fixed.pooled.shape() == mb.pooled.shape());
        if (!replay || !fits) {
            SD3_ASSIGN_OR_RETURN(Tensor pred, model->forward(mb.noisy, mb.t, mb.pe, mb.pooled, dropout_seed));
            LossInputs li = mb.loss;
            li.model_pred = pred;
            DeferredLoss loss = flow_matching_loss_deferred(li, 1.0 / accum);
            SD3_TRY(model->backward(loss.grad_pred));
            loss.grad_pred = Tensor();
            return loss;
        }
        const Device device = model->lora_params().device();
        auto place = [&](Tensor& buffer, const Tensor& host) {
            if (!buffer.defined()) buffer = Tensor::empty(host.shape(), host.dtype(), device);
            upload_async_into(buffer, host);
        };
        for (auto [buffer, t] : {std::pair{&fixed.noisy, &mb.noisy}, {&fixed.x0, &mb.x0}, {&fixed.noise, &mb.noise},
                                 {&fixed.pe, &mb.pe}, {&fixed.pooled, &mb.pooled}, {&fixed.t, &mb.t},
                                 {&fixed.loss_table, &mb.loss_table}})
            place(*buffer, *t);
        if (!fixed.sums.defined()) fixed.sums = Tensor::empty({mb.noisy.size(0)}, DType::F64, device);
        const bool recorded = step_graph.replaying();
        SD3_TRY(step_graph.run([&]() -> Status {
            SD3_ASSIGN_OR_RETURN(Tensor pred, model->forward(fixed.noisy, fixed.t, fixed.pe, fixed.pooled, dropout_seed));
            Tensor grad;
            copy_into(fixed.sums, ops::flow_matching_loss(pred, fixed.noisy, fixed.x0, fixed.noise, fixed.loss_table,
                                                          o.precondition_outputs, &grad));
            return model->backward(grad);
        }));
        if (!recorded && step_graph.replaying())
            log_info("the micro-batch's forward, loss and backward were recorded as a CUDA graph and are replayed");
        return deferred_loss(mb.loss, mb.noisy.shape(), download_async(fixed.sums));
    };
    std::vector<DeferredLoss> pending_losses;  // this update's micro-batches
    auto t_update = std::chrono::steady_clock::now();
    StepReport::Phases phases;
    using Clock = std::chrono::steady_clock;
    auto lap = [](Clock::time_point& since) {  // seconds since `since`, which moves to now
        const Clock::time_point now = Clock::now();
        const double s = std::chrono::duration<double>(now - since).count();
        since = now;
        return s;
    };
    // An update whose loss and gradient norm are still on their way from the device. Its report (the log, the
    // callbacks, a checkpoint, validation) runs once they arrive: at once where what follows depends on it (a
    // checkpoint or validation, the end of an epoch or of the run, a stop callback), otherwise after the next
    // micro-batch is queued, so that the device does not wait for the host between updates.
    struct FinishedUpdate {
        TrainerState state;  // after the update
        int64_t epoch = 0;
        double lr = 0;
        std::vector<DeferredLoss> losses;
        PendingDownload grad_stats;  // (norm, clip coefficient)
        StepReport::Phases phases;
        double seconds = 0;
    };
    // Reports `f`; true when a stop callback ends the run there.
    auto report = [&](FinishedUpdate& f) -> Result<bool> {
        std::vector<double> micro_losses;
        for (DeferredLoss& l : f.losses) {
            micro_losses.push_back(l.value().loss);
            if (!std::isfinite(micro_losses.back()))
                return make_error(ErrorCode::INTERNAL, "the loss became ", micro_losses.back(), " at update ",
                                  f.state.global_step, "; lower --learning_rate or check the data");
        }
        const float norm = f.grad_stats.wait().data<float>()[0];
        if (!std::isfinite(norm))
            return make_error(ErrorCode::INTERNAL, "the gradients are not finite at update ", f.state.global_step,
                              "; lower --learning_rate, or train with --mixed_precision bf16 or no");
        double mean_loss = 0;
        for (double l : micro_losses) mean_loss += l / static_cast<double>(micro_losses.size());
        f.state.last_loss = mean_loss;
        st.last_loss = mean_loss;
        const int64_t step = f.state.global_step;
        StepReport rep{step, rl.max_train_steps, f.epoch, mean_loss, f.lr, norm, f.seconds, f.phases};
        result.losses.push_back(mean_loss);
        nlohmann::ordered_json j;
        j["step"] = step;
        j["epoch"] = f.epoch;
        j["loss"] = mean_loss;
        j["micro_losses"] = micro_losses;
        j["lr"] = f.lr;
        j["grad_norm"] = norm;
        j["seconds"] = rep.seconds;
        j["phase_seconds"] = {{"batch", rep.phases.batch},         {"step", rep.phases.step},
                              {"optimizer", rep.phases.optimizer},
                              {"report", rep.phases.report}};
        SD3_TRY(write_json_line(jsonl, j));
        if (tensorboard) {
            SD3_TRY(tb.scalar("loss", mean_loss, step));
            SD3_TRY(tb.scalar("lr", f.lr, step));
        }
        if (cb.on_step) cb.on_step(rep);
        if (step % o.checkpointing_steps == 0) {
            SD3_ASSIGN_OR_RETURN(std::string dir, save_checkpoint(o.output_dir, f.state, model->slots(), host_params().data<float>(),
                                                                  o.lora, *optimizer, o.checkpoints_total_limit.value_or(0)));
            phase("saved " + dir);
        }
        if (o.validation_steps > 0 && step % o.validation_steps == 0) SD3_TRY(validate("validation", step));
        return cb.stop_after && cb.stop_after(step);
    };
    std::optional<FinishedUpdate> waiting;  // reported after the next micro-batch is queued
    // SD3_PROFILE_UPDATE=N: the CUDA profiler captures update N alone (docs/benchmarks.md, the profile workload).
    const char* profile_env = std::getenv("SD3_PROFILE_UPDATE");
    const int64_t profiled_update = profile_env != nullptr ? std::atoll(profile_env) : 0;
    bool done = st.global_step >= rl.max_train_steps;
    for (int64_t epoch = st.epoch; epoch < rl.num_epochs && !done; ++epoch) {
        const int64_t first_batch = epoch == st.epoch ? st.batch_in_epoch : 0;
        for (int64_t bi = first_batch; bi < rl.batches_per_epoch; ++bi) {
            const int64_t micro = st.micro_steps;
            if (pending_losses.empty() && st.global_step + 1 == profiled_update) profiler_capture(true);
            Clock::time_point t_phase = Clock::now();
            MicroBatch mb = ahead.valid() && ahead_micro == micro ? ahead.get() : build_micro_batch(epoch, bi, micro);
            if (const auto [ne, nb] = following(epoch, bi); ne < rl.num_epochs) {
                ahead = std::async(std::launch::async, build_micro_batch, ne, nb, micro + 1);
                ahead_micro = micro + 1;
            }
            phases.batch += lap(t_phase);
            SD3_ASSIGN_OR_RETURN(
                DeferredLoss loss,
                run_micro_batch(mb, TrainRng::for_purpose(seed, str_cat("dropout.", micro)).uniform_int(0, INT64_MAX)));
            pending_losses.push_back(std::move(loss));
            phases.step += lap(t_phase);
            if (waiting) {  // the device has this micro-batch queued: the last update's numbers can be waited for
                SD3_TRY(report(*waiting).status());
                waiting.reset();
                phases.report += lap(t_phase);
            }
            ++st.micro_steps;
            st.batch_in_epoch = bi + 1;
            st.epoch = epoch;
            const bool sync = (bi + 1) % accum == 0 || bi + 1 == rl.batches_per_epoch;
            if (!sync) continue;

            const Tensor grads = model->lora_grads();
            const Tensor grad_stats = optimizer->clip_grad_norm(grads, o.max_grad_norm);
            const double lr = lr_for_update(sched, base_lr, st.global_step + 1);
            optimizer->step(model->lora_params(), grads, lr);
            ops::zero_(grads);
            phases.optimizer += lap(t_phase);
            if (st.global_step + 1 == profiled_update) profiler_capture(false);
            ++st.global_step;
            if (st.batch_in_epoch == rl.batches_per_epoch) {
                st.epoch = epoch + 1;
                st.batch_in_epoch = 0;
            }
            const auto now = std::chrono::steady_clock::now();
            FinishedUpdate f{st, epoch, lr, std::move(pending_losses), download_async(grad_stats), phases,
                             std::chrono::duration<double>(now - t_update).count()};
            pending_losses.clear();
            t_update = now;
            phases = {};
            const bool last = st.global_step >= rl.max_train_steps;
            const bool now_needed = last || bi + 1 == rl.batches_per_epoch || cb.stop_after ||
                                    st.global_step % o.checkpointing_steps == 0 ||
                                    (o.validation_steps > 0 && st.global_step % o.validation_steps == 0);
            if (!now_needed) {
                waiting = std::move(f);
                continue;
            }
            SD3_ASSIGN_OR_RETURN(const bool stop, report(f));
            if (stop) {
                result.global_step = st.global_step;
                result.interrupted = true;
                return result;
            }
            if (last) {
                done = true;
                break;
            }
        }
        // per-epoch validation (reference: epoch % validation_epochs == 0, epoch 0 included)
        if (o.validation_steps == 0 && epoch % o.validation_epochs == 0) SD3_TRY(validate("validation", st.global_step));
    }

    // 7. The LoRA file, then the final validation with it.
    std::string out;
    const Tensor final_params = host_params();
    if (o.lora_format != "comfyui") {
        out = (fs::path(o.output_dir) / kLoraWeightName).string();
        SD3_TRY(save_lora_params(out, model->slots(), final_params.data<float>(), o.lora));
        phase("wrote " + out);
    }
    if (o.lora_format != "diffusers") {  // ComfyUI's key dialect through io/name_map (fused qkv, Stability names)
        const std::string comfy = (fs::path(o.output_dir) / kComfyLoraWeightName).string();
        SD3_TRY(write_lora(comfy, lora_set_from_params(model->slots(), final_params.data<float>(), o.lora),
                           LoraDialect::COMFYUI));
        phase("wrote " + comfy);
        if (out.empty()) out = comfy;
    }
    result.lora_path = out;
    result.global_step = st.global_step;
    SD3_TRY(validate("test", st.global_step));
    nlohmann::ordered_json j;
    j["event"] = "end";
    j["step"] = st.global_step;
    j["lora"] = out;
    SD3_TRY(write_json_line(jsonl, j));
    return result;
}

}  // namespace sd3::train
