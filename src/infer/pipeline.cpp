// Text-to-image pipeline (infer/pipeline.h), following diffusers' pipeline_stable_diffusion_3.py: check_inputs,
// encode_prompt, prepare_latents, the denoising loop (infer/sampling.cpp) and the decode + postprocess tail.
#include "infer/pipeline.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "core/check.h"
#include "core/log.h"
#include "io/lora_file.h"
#include "io/name_map.h"
#include "ops/device.h"
#include "ops/ops.h"

namespace sd3 {

// ---- opening --------------------------------------------------------------------------------------------------

Result<TextToImage> TextToImage::open(const ModelFolder& model, const PipelineOptions& options) {
    TextToImage p;
    p.model_ = model;
    p.options_ = options;
    p.options_.text.placement = options.placement;
    for (const char* part : {"transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                             "tokenizer_2", "tokenizer_3", "scheduler"})
        SD3_TRY(model.require(part).status());
    SD3_ASSIGN_OR_RETURN(PromptTokenizer tok, PromptTokenizer::open(model));
    p.tokenizer_.emplace(std::move(tok));
    SD3_ASSIGN_OR_RETURN(const Component* sched, model.require("scheduler"));
    SD3_ASSIGN_OR_RETURN(FlowMatchSchedulerConfig sc, FlowMatchSchedulerConfig::from_json(sched->config, sched->config_path));
    p.scheduler_ = FlowMatchEulerScheduler(sc);
    SD3_ASSIGN_OR_RETURN(const Component* tr, model.require("transformer"));
    SD3_ASSIGN_OR_RETURN(p.mmdit_config_, MMDiTConfig::from_json(tr->config, tr->config_path));
    SD3_ASSIGN_OR_RETURN(const Component* vae, model.require("vae"));
    SD3_ASSIGN_OR_RETURN(p.vae_config_, VaeConfig::from_json(vae->config, vae->config_path));
    if (p.vae_config_.latent_channels != p.mmdit_config_.in_channels ||
        p.mmdit_config_.out_channels != p.mmdit_config_.in_channels)
        return make_error(ErrorCode::CORRUPT_FILE, "the VAE has ", p.vae_config_.latent_channels,
                          " latent channels but the transformer takes ", p.mmdit_config_.in_channels, " and returns ",
                          p.mmdit_config_.out_channels);
    for (const LoraRequest& l : options.loras) {
        if (!std::isfinite(l.scale))
            return make_error(ErrorCode::INVALID_ARGUMENT, l.path, ": the LoRA scale must be a finite number");
        // Any dialect (diffusers/PEFT, kohya, ComfyUI) through the one name map.
        SD3_ASSIGN_OR_RETURN(LoraSet set, read_lora_any(l.path, static_cast<int>(p.mmdit_config_.num_layers)));
        p.loras_.emplace_back(std::move(set), l.scale);
    }
    return p;
}

Result<GenerateRequest> TextToImage::resolve(const GenerateRequest& in) const {
    GenerateRequest r = in;
    if (r.width == 0) r.width = default_size();
    if (r.height == 0) r.height = default_size();
    const int64_t multiple = vae_scale_factor() * mmdit_config_.patch_size;  // check_inputs: 8 * 2 = 16
    if (r.width <= 0 || r.height <= 0 || r.width % multiple != 0 || r.height % multiple != 0)
        return make_error(ErrorCode::INVALID_ARGUMENT, "width and height must be positive multiples of ", multiple,
                          " (got ", r.width, "x", r.height, ")");
    const int64_t max_side = mmdit_config_.pos_embed_max_size * multiple;
    if (r.width > max_side || r.height > max_side)
        return make_error(ErrorCode::INVALID_ARGUMENT, "width and height can be at most ", max_side,
                          " for this model (pos_embed_max_size ", mmdit_config_.pos_embed_max_size, "); got ", r.width,
                          "x", r.height);
    if (r.steps < 1) return make_error(ErrorCode::INVALID_ARGUMENT, "steps must be at least 1 (got ", r.steps, ")");
    if (r.num_images < 1)
        return make_error(ErrorCode::INVALID_ARGUMENT, "num-images must be at least 1 (got ", r.num_images, ")");
    if (r.max_sequence_length < 1 || r.max_sequence_length > 512)  // check_inputs rejects more than 512
        return make_error(ErrorCode::INVALID_ARGUMENT, "max-sequence-length must be between 1 and 512 (got ",
                          r.max_sequence_length, ")");
    if (!std::isfinite(r.guidance_scale))
        return make_error(ErrorCode::INVALID_ARGUMENT, "the guidance scale must be a finite number");
    if (r.initial_latents.defined()) {
        const Shape want = {r.num_images, mmdit_config_.in_channels, r.height / vae_scale_factor(),
                            r.width / vae_scale_factor()};
        if (r.initial_latents.shape() != want || !dtype_is_float(r.initial_latents.dtype()))
            return make_error(ErrorCode::INVALID_ARGUMENT, "initial latents must be ", shape_str(want), " for ",
                              r.num_images, " image(s) of ", r.width, "x", r.height, "; got ",
                              r.initial_latents.describe());
    }
    return r;
}

// ---- running --------------------------------------------------------------------------------------------------

Status TextToImage::ensure_transformer(const StageFn& stage) {
    if (transformer_) return {};
    if (stage) stage("loading the transformer");
    SD3_ASSIGN_OR_RETURN(const Component* c, model_.require("transformer"));
    SD3_ASSIGN_OR_RETURN(MMDiT m, MMDiT::load(*c, !options_.placement.on_cpu()));
    SD3_TRY(m.to(options_.placement, options_.base_format, options_.transformer_max_resident_bytes));
    for (size_t i = 0; i < loras_.size(); ++i) {
        const Status s = options_.fuse_loras ? m.fuse_lora(loras_[i].first, loras_[i].second)
                                             : m.attach_lora(loras_[i].first, loras_[i].second);
        SD3_TRY(s.with_context(options_.loras[i].path));
    }
    transformer_.emplace(std::move(m));
    return {};
}

Status TextToImage::ensure_vae(const StageFn& stage) {
    if (vae_) return {};
    if (stage) stage("loading the VAE decoder");
    SD3_ASSIGN_OR_RETURN(const Component* c, model_.require("vae"));
    SD3_ASSIGN_OR_RETURN(Vae v, Vae::load_component(*c, Vae::Part::DECODER));
    SD3_TRY(v.to(nn::overflow_safe(options_.placement)));
    vae_.emplace(std::move(v));
    return {};
}

Result<MMDiT*> TextToImage::transformer(const StageFn& stage) {
    SD3_TRY(ensure_transformer(stage));
    return &*transformer_;
}

void TextToImage::release_models() {
    transformer_.reset();
    vae_.reset();
}

Result<std::pair<PromptEmbeds, PromptEmbeds>> TextToImage::encode_prompts(const std::string& prompt,
                                                                          const std::string& negative_prompt,
                                                                          int max_sequence_length,
                                                                          const StageFn& stage, bool with_negative) {
    if (stage) stage("encoding the prompt");
    TextEncoderOptions topt = options_.text;
    topt.max_sequence_length = max_sequence_length;
    topt.batch_size = 1;  // the reference encodes prompt and negative prompt in separate calls
    SD3_ASSIGN_OR_RETURN(TextEncoders enc, TextEncoders::open(model_, topt));
    const PromptTokens pos = tokenizer_->tokenize(prompt, max_sequence_length);
    if (!with_negative) {
        SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> p, enc.encode_tokens({pos}, true));
        return std::make_pair(p[0], PromptEmbeds{});
    }
    const PromptTokens neg = tokenizer_->tokenize(negative_prompt, max_sequence_length);
    // One pass over the encoders (each loaded once, then released); clip_skip applies to the prompt only (§8.1).
    if (topt.clip_skip == 0) {
        SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> both, enc.encode_tokens({pos, neg}, true));
        return std::make_pair(both[0], both[1]);
    }
    SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> p, enc.encode_tokens({pos}, true));
    SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> n, enc.encode_tokens({neg}, false));
    return std::make_pair(p[0], n[0]);
}

namespace {
// prompt_embeds.repeat(1, K, 1).view(K, ...): every image of the batch gets the same row.
Tensor repeat_rows(const Tensor& one, int64_t k) {
    SD3_ASSERT(one.size(0) == 1, "expected one row, got ", one.describe());
    std::vector<Tensor> parts(static_cast<size_t>(k), one.to(DType::F32));
    return k == 1 ? parts[0].contiguous() : ops::cat(parts, 0);
}
}  // namespace

Result<GenerateOutput> TextToImage::generate_from_embeds(const GenerateRequest& request, const PromptEmbeds& positive,
                                                         const PromptEmbeds& negative, const ProgressFn& progress,
                                                         const StageFn& stage) {
    SD3_ASSIGN_OR_RETURN(GenerateRequest r, resolve(request));
    const int64_t K = r.num_images;
    Conditioning cond;
    cond.context = repeat_rows(positive.prompt_embeds, K);  // [K, M, D]
    cond.pooled = repeat_rows(positive.pooled, K);          // [K, P]
    if (r.guidance_scale > 1.0f) {
        cond.negative_context = repeat_rows(negative.prompt_embeds, K);
        cond.negative_pooled = repeat_rows(negative.pooled, K);
    }
    GenerateOutput out;
    out.width = r.width;
    out.height = r.height;
    if (r.initial_latents.defined()) {
        out.initial_latents = r.initial_latents.to(DType::F32).contiguous();
    } else {
        TorchGenerator generator(r.seed);  // torch.Generator().manual_seed(seed) on the CPU
        out.initial_latents = prepare_latents(generator, K, mmdit_config_.in_channels, r.height, r.width,
                                              vae_scale_factor());  // [K, 16, h, w]
    }
    if (external_transformer_ == nullptr) SD3_TRY(ensure_transformer(stage));
    const FlowMatchSchedule schedule = scheduler_.inference_schedule(r.steps);
    const MMDiT& model = external_transformer_ != nullptr ? *external_transformer_ : *transformer_;
    // The conditioning is the same tensor at every step: moved to the model's device once.
    std::pair<const void*, Tensor> ctx_placed, pooled_placed;
    auto on_model_device = [&model](std::pair<const void*, Tensor>& cache, const Tensor& t) -> const Tensor& {
        if (cache.first != t.raw()) cache = {t.raw(), nn::to_placement(t, model.placement())};
        return cache.second;
    };
    VelocityFn velocity = [&](const Tensor& x, const Tensor& t, const Tensor& ctx, const Tensor& pooled) {
        return model.forward_on_device(x, t, on_model_device(ctx_placed, ctx), on_model_device(pooled_placed, pooled));
    };
    if (stage) stage("sampling");
    // A transformer with every block resident queues the same work at every step without waiting: replayable.
    const bool replay = options_.replay_steps && model.resident_blocks() == model.config().num_layers;
    SD3_ASSIGN_OR_RETURN(out.latents, sample_flow_match(velocity, out.initial_latents, schedule, cond, r.guidance_scale,
                                                        progress, model.placement().device, replay));
    if (options_.single_use) transformer_.reset();
    SD3_TRY(ensure_vae(stage));
    if (stage) stage("decoding");
    const Tensor unscaled = vae_->latents_to_vae(out.latents);
    // SD3_PROFILE_DECODE=1: the CUDA profiler captures the decode alone (docs/benchmarks.md, profile_generate).
    const bool profile_decode = std::getenv("SD3_PROFILE_DECODE") != nullptr;
    if (profile_decode) profiler_capture(true);
    SD3_ASSIGN_OR_RETURN(Tensor decoded, options_.vae_tiling ? vae_->decode_tiled(unscaled)
                                                             : vae_->decode(unscaled));  // [K, 3, H, W]
    out.images_unit = denormalize_images(decoded);
    if (profile_decode) profiler_capture(false);
    out.images = images_from_batch(out.images_unit);
    return out;
}

Result<GenerateOutput> TextToImage::generate(const GenerateRequest& request, const ProgressFn& progress,
                                             const StageFn& stage) {
    SD3_ASSIGN_OR_RETURN(GenerateRequest r, resolve(request));  // fail fast, before any encoder runs
    SD3_ASSIGN_OR_RETURN(auto embeds, encode_prompts(r.prompt, r.negative_prompt, r.max_sequence_length, stage,
                                                     r.guidance_scale > 1.0f));
    return generate_from_embeds(r, embeds.first, embeds.second, progress, stage);
}

// ---- PNG text -------------------------------------------------------------------------------------------------

ImageText generation_text(const GenerateRequest& r, const std::vector<LoraRequest>& loras, int64_t index,
                          const std::string& model) {
    std::ostringstream guidance;
    guidance << r.guidance_scale;
    ImageText t;
    t.emplace_back("prompt", r.prompt);
    t.emplace_back("negative_prompt", r.negative_prompt);
    t.emplace_back("seed", r.initial_latents.defined() ? std::string("none (initial latents given)")
                                                        : std::to_string(r.seed));
    t.emplace_back("image_index", str_cat(index, " of ", r.num_images, " (drawn as one batch from the seed)"));
    t.emplace_back("steps", std::to_string(r.steps));
    t.emplace_back("guidance_scale", guidance.str());
    t.emplace_back("size", str_cat(r.width, "x", r.height));
    t.emplace_back("max_sequence_length", std::to_string(r.max_sequence_length));
    t.emplace_back("sampler", "FlowMatchEulerDiscrete (shift from the model's scheduler config)");
    t.emplace_back("model", model);
    std::string lora_list;
    for (const LoraRequest& l : loras) {
        std::ostringstream s;
        s << l.scale;
        lora_list += (lora_list.empty() ? "" : "; ") + std::filesystem::path(l.path).filename().string() + ":" + s.str();
    }
    if (!lora_list.empty()) t.emplace_back("loras", lora_list);
    t.emplace_back("software", "sd3tune 0.1.0");
    // One line for tools that read AUTOMATIC1111's "parameters" chunk.
    std::string params = r.prompt;
    if (!r.negative_prompt.empty()) params += "\nNegative prompt: " + r.negative_prompt;
    params += str_cat("\nSteps: ", r.steps, ", Sampler: Euler (flow matching), CFG scale: ", guidance.str(),
                      ", Seed: ", r.initial_latents.defined() ? std::string("none") : std::to_string(r.seed),
                      ", Size: ", r.width, "x", r.height, ", Model: ",
                      std::filesystem::path(model).filename().string());
    if (!lora_list.empty()) params += ", LoRA: " + lora_list;
    t.emplace_back("parameters", params);
    return t;
}

}  // namespace sd3
