// Adapters from the model code to the trainer's interfaces (train/components.h).
#include "train/sd3_components.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

#include "core/check.h"
#include "core/log.h"
#include "core/status.h"
#include "infer/pipeline.h"
#include "infer/prompt_encoding.h"
#include "io/image.h"
#include "io/model_folder.h"
#include "io/single_file.h"
#include "models/mmdit.h"
#include "models/vae.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"
#include "ops/ops.h"
#include "ops/train_ops.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"
#include "train/cache.h"
#include "train/checkpoint.h"
#include "train/loss_scale.h"
#include "train/train_rng.h"

namespace sd3::train {

namespace fs = std::filesystem;

namespace {

Tensor ids_tensor(const std::vector<int32_t>& ids) {
    Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::I32);  // [1, T]
    std::copy(ids.begin(), ids.end(), t.data<int32_t>());
    return t;
}

// What the LoRA's training state takes where the transformer runs: on a GPU the adapters' copy in the compute
// dtype, the float32 master params and gradients, and the optimizer's moments (AdamW's 8 bytes a parameter, the
// most a device optimizer keeps); on the CPU the float32 params and gradients.
double lora_device_bytes(int64_t numel, const nn::Placement& p) {
    const double per_param = p.on_cpu() ? 2.0 * sizeof(float) : dtype_size(p.dtype) + 4.0 * sizeof(float);
    return static_cast<double>(numel) * per_param;
}

// The MMDiT with attached trainable LoRA. On the CPU the adapters view LoraTrainable's float32 params and grads.
// On a GPU the float32 master params and gradients live on the device, where the optimizer updates them; the
// adapters view a copy of the params in the compute dtype, refreshed before a forward when the params may have
// changed, and backward accumulates into the device gradients (in float16 through the loss scale:
// train/loss_scale.h).
class Sd3TrainableModel final : public TrainableModel {
  public:
    // `budget`: the device bytes the transformer may use (--max-vram; SIZE_MAX: none). Under checkpointing, what
    // its weights leave of it keeps whole blocks' activations, which then skip their recompute.
    Sd3TrainableModel(MMDiT model, LoraTrainable lora, bool checkpoint_blocks, size_t budget)
        : model_(std::move(model)), lora_(std::move(lora)), checkpoint_blocks_(checkpoint_blocks), budget_(budget) {}
    Status attach() {
        const nn::Placement& p = model_.placement();
        loss_scale_ = LossScale(p.dtype == DType::F16);
        if (p.on_cpu()) return model_.attach_trainable(lora_);
        SD3_ASSIGN_OR_RETURN(lora_.params, to_device(lora_.params, p.device));
        lora_.grads = ops::zeros({lora_.numel}, p.device);
        LoraTrainable on_device = lora_;
        on_device.params = Tensor::empty({lora_.numel}, p.dtype, p.device);
        on_device.grads = Tensor();
        device_params_ = on_device.params;
        return model_.attach_trainable(on_device);
    }

    const std::vector<LoraSlot>& slots() const override { return lora_.slots; }
    int64_t lora_numel() const override { return lora_.numel; }
    Tensor lora_params() override {
        params_changed_ = true;  // the caller may write them (optimizer step, resume)
        return lora_.params;
    }
    Tensor lora_grads() override { return lora_.grads; }
    Tensor stage_input(const Tensor& host) override {
        const nn::Placement& p = model_.placement();
        if (p.on_cpu()) return host;
        // float32 as given (the forward converts on the device), queued without waiting for the device's work
        Result<Tensor> d = upload_async(host, p.device);
        return d.ok() ? *d : host;  // out of memory: the forward uploads it and says so
    }

    Result<Tensor> forward(const Tensor& x_t, const Tensor& timesteps, const Tensor& prompt_embeds,
                           const Tensor& pooled, uint64_t rng_seed) override {
        saved_ = MMDiTActivations();
        saved_.checkpoint_blocks = checkpoint_blocks_;
        saved_.kept_blocks = kept_blocks_;
        saved_.ctx = {true, rng_seed};
        saved_.device_output = true;
        // The compute copy of the LoRA follows the master params at every forward, so a recorded forward does too.
        if (device_params_.defined()) {
            copy_into(device_params_, lora_.params);
            params_changed_ = false;
        }
        Result<Tensor> pred = model_.forward(x_t, timesteps, prompt_embeds, pooled, &saved_);
        if (!first_update_reported_ && device_params_.defined())
            forward_peak_ = memory_stats(device_params_.device()).peak;
        return pred;
    }

    Status backward(const Tensor& grad_pred) override {
        if (!loss_scale_.enabled()) {
            model_.backward(grad_pred, saved_, lora_.grads, nullptr);  // accumulates
        } else {
            for (;;) {  // once, unless a float16 backward overflows at the current loss scale
                const float scale = loss_scale_.value();
                Tensor grads = ops::zeros({lora_.numel}, device_params_.device());  // f32
                model_.backward(ops::scale(grad_pred, scale), saved_, grads, nullptr);
                const bool finite = ops::all_finite(grads);
                SD3_TRY(loss_scale_.record(finite));
                if (!finite) continue;
                ops::add_scaled_(lora_.grads, grads, 1.0f / scale);  // a power of two: exact
                break;
            }
        }
        saved_ = MMDiTActivations();
        if (!first_update_reported_ && device_params_.defined()) {  // how the plan printed at start-up held up
            first_update_reported_ = true;
            const MemoryStats m = memory_stats(device_params_.device());
            log_info("memory in the first micro-batch: peak ", format_bytes(double(forward_peak_)), " by the end of the "
                     "forward, ", format_bytes(double(m.peak)), " by the end of the backward; ",
                     format_bytes(double(m.in_use)), " in use after it");
        }
        return {};
    }

    bool replayable() const override {
        const nn::Placement& p = model_.placement();
        bool dropout = false;
        for (const nn::Linear* l : model_.linears())
            for (const nn::LoraAdapter& a : l->loras) dropout = dropout || a.dropout > 0.0f;
        return !p.on_cpu() && !loss_scale_.enabled() && !dropout &&
               model_.resident_blocks() == model_.config().num_layers;
    }

    DType text_input_dtype() const override { return model_.placement().dtype; }

    std::string plan_memory(int64_t batch, int64_t h, int64_t w, int64_t context_len) override {
        const nn::Placement& p = model_.placement();
        // The plan counts float32 bytes; activations are held in the compute dtype.
        auto activation_bytes = [&](int64_t kept) {
            const ActivationPlan a = model_.plan_activations(batch, h, w, context_len, checkpoint_blocks_, kept);
            return static_cast<double>(a.peak()) * dtype_size(p.dtype) / sizeof(float);
        };
        const double weights = static_cast<double>(model_.weight_bytes());
        const double lora = lora_device_bytes(lora_.numel, p);
        const int64_t blocks = model_.config().num_layers;
        // What the saved activations leave out: the backward's transient gradients and workspaces. At SD3-Medium
        // size the first micro-batch's peak exceeded weights + LoRA + saved activations by 2.6-4x one block's saved
        // forward (0.55 GiB at 512², batch 4; 0.8 GiB at 1024², batch 1; the log line of backward()).
        const double one_block = static_cast<double>(model_.plan_activations(batch, h, w, context_len, true).recompute) *
                                 dtype_size(p.dtype) / sizeof(float);
        const double transient = 4.0 * one_block + double(256ull << 20);
        // Recompute only what memory forces: under checkpointing, the last blocks whose saved activations fit keep
        // them, with room for the transients. The budget is --max-vram, or without it what the device has free now
        // less 1 GiB + 5% (validation images, fragmentation).
        kept_blocks_ = 0;
        if (checkpoint_blocks_ && (budget_ != SIZE_MAX || !p.on_cpu())) {
            double budget = static_cast<double>(budget_);
            if (budget_ == SIZE_MAX) {
                const MemoryStats m = memory_stats(p.device);
                budget = weights + lora + static_cast<double>(m.available()) - double(1ull << 30) -
                         0.05 * static_cast<double>(m.total);
            }
            while (kept_blocks_ < blocks && weights + lora + activation_bytes(kept_blocks_ + 1) + transient <= budget)
                ++kept_blocks_;
        }
        const double act = activation_bytes(kept_blocks_);
        const char* budget_name = budget_ == SIZE_MAX ? "the free memory" : "--max-vram";
        const std::string streamed =
            model_.resident_blocks() < blocks
                ? str_cat(" (", model_.resident_blocks(), " of ", blocks, " blocks resident, the rest streamed)")
                : std::string();
        std::string s = str_cat("memory plan on ", p.device.str(), ": transformer weights ", format_bytes(weights),
                                streamed, ", LoRA ", format_bytes(lora), ", saved activations of a micro-batch of ", batch,
                                " up to ", format_bytes(act), " (",
                                !checkpoint_blocks_ ? std::string("every block kept")
                                : kept_blocks_ == 0 ? std::string("block inputs + one block recomputed")
                                : kept_blocks_ == blocks
                                    ? str_cat("every block kept: ", budget_name, " holds them all, nothing is recomputed")
                                    : str_cat("block inputs + one block recomputed; the last ", kept_blocks_, " of ",
                                              blocks, " blocks keep theirs within ", budget_name),
                                "); about ", format_bytes(weights + lora + act));
        if (!p.on_cpu()) {
            const MemoryStats m = memory_stats(p.device);
            s += str_cat(", up to about ", format_bytes(weights + lora + act + transient),
                         " with the backward's transient gradients and workspaces; ",
                         format_bytes(double(m.available())), " free after loading");
        }
        return s;
    }

    MMDiT& mmdit() { return model_; }
    // Brings the compute copy of the LoRA up to date with the master params (before inference with the live model).
    void sync_params() {
        if (device_params_.defined() && params_changed_) {
            copy_into(device_params_, lora_.params);
            params_changed_ = false;
        }
    }

  private:
    MMDiT model_;
    LoraTrainable lora_;
    bool checkpoint_blocks_;
    size_t budget_;
    int64_t kept_blocks_ = 0;  // set by plan_memory
    MMDiTActivations saved_;
    Tensor device_params_;       // the LoRA params in the compute dtype on the GPU (undefined on the CPU)
    bool params_changed_ = true;
    LossScale loss_scale_{false};  // enabled for float16 compute (train/loss_scale.h)
    bool first_update_reported_ = false;
    size_t forward_peak_ = 0;
};

}  // namespace

Result<TrainComponents> make_sd3_components(const ModelSpec& spec, const Sd3ComponentOptions& opt) {
    SD3_ASSIGN_OR_RETURN(ModelFolder folder, open_model(spec));
    auto shared = std::make_shared<ModelFolder>(std::move(folder));
    TrainComponents c;
    SD3_ASSIGN_OR_RETURN(const Component* vae_c, shared->require("vae"));
    SD3_ASSIGN_OR_RETURN(VaeConfig vae_cfg, VaeConfig::from_json(vae_c->config, vae_c->config_path));
    c.vae_scaling_factor = vae_cfg.scaling_factor;
    c.vae_shift_factor = vae_cfg.shift_factor;
    SD3_ASSIGN_OR_RETURN(const Component* sched_c, shared->require("scheduler"));
    c.scheduler_shift = sched_c->config.value("shift", 1.0);
    c.num_train_timesteps = sched_c->config.value("num_train_timesteps", 1000);
    // identity for cache keys: every file given (or under the folders given), by path, size and modification time
    Hasher id;
    for (const std::string& path : {spec.model, spec.tokenizers, spec.clip_l, spec.clip_g, spec.t5, spec.vae}) {
        if (path.empty()) continue;
        std::error_code ec;
        auto add_file = [&](const fs::path& p) {
            const auto t = fs::last_write_time(p, ec).time_since_epoch().count();
            const auto n = fs::file_size(p, ec);
            id.add(fs::absolute(p).string()).add(&t, sizeof t).add(&n, sizeof n);
        };
        if (fs::is_directory(path)) {
            for (const auto& e : fs::recursive_directory_iterator(path, ec))
                if (e.is_regular_file()) add_file(e.path());
        } else {
            add_file(path);
        }
    }
    c.model_identity = id.hex();

    const int max_seq = opt.max_sequence_length;
    TextEncoderOptions text_opt = opt.text;
    text_opt.placement = opt.placement;
    if (text_opt.t5_max_resident_bytes == 0 && !opt.placement.on_cpu()) {
        // Without --max-vram, the cache phase's T5 holds at most what the transformer will hold in training: the
        // run's peak is then the training's, and T5's other blocks stream in (each once per pass over the prompts).
        SD3_ASSIGN_OR_RETURN(const Component* tc, shared->require("transformer"));
        text_opt.t5_max_resident_bytes = MMDiT::placed_bytes(*tc->weights, opt.placement, opt.base_format);
    }
    text_opt.max_sequence_length = max_seq;
    c.encode_prompts = [shared, max_seq, text_opt](const std::vector<std::string>& prompts) -> Result<std::vector<EncodedPrompt>> {
        const ModelFolder& f = *shared;
        SD3_ASSIGN_OR_RETURN(const Component* tl, f.require("tokenizer"));
        SD3_ASSIGN_OR_RETURN(const Component* tg, f.require("tokenizer_2"));
        SD3_ASSIGN_OR_RETURN(const Component* t5t, f.require("tokenizer_3"));
        SD3_ASSIGN_OR_RETURN(ClipTokenizer tok_l, ClipTokenizer::load(tl->dir));
        SD3_ASSIGN_OR_RETURN(ClipTokenizer tok_g, ClipTokenizer::load(tg->dir));
        SD3_ASSIGN_OR_RETURN(T5Tokenizer tok_t5, T5Tokenizer::load(t5t->dir));
        std::vector<PromptTokens> toks;
        for (const std::string& p : prompts) {
            PromptTokens t;
            t.clip_l = ids_tensor(tok_l.encode(p).ids);
            t.clip_g = ids_tensor(tok_g.encode(p).ids);
            t.t5 = ids_tensor(tok_t5.encode(p, max_seq).ids);
            toks.push_back(t);
        }
        SD3_ASSIGN_OR_RETURN(const Component* e1, f.require("text_encoder"));
        SD3_ASSIGN_OR_RETURN(const Component* e2, f.require("text_encoder_2"));
        SD3_ASSIGN_OR_RETURN(const Component* e3, f.require("text_encoder_3"));
        SD3_ASSIGN_OR_RETURN(TextEncoders enc, TextEncoders::create(*e1, *e2, *e3, text_opt));
        SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> out, enc.encode_tokens(toks));  // loads and frees each encoder
        std::vector<EncodedPrompt> r;
        for (const PromptEmbeds& e : out) {
            EncodedPrompt p;
            p.prompt_embeds = e.prompt_embeds.select(0, 0).clone();  // [T, D]
            p.pooled = e.pooled.select(0, 0).clone();                // [P]
            r.push_back(p);
        }
        return r;
    };

    const nn::Placement placement = opt.placement;
    c.load_vae_encoder = [shared, vae_cfg, placement]() -> Result<std::function<Result<LatentDist>(const Tensor&)>> {
        SD3_ASSIGN_OR_RETURN(const Component* vc, shared->require("vae"));
        SD3_ASSIGN_OR_RETURN(Vae vae, Vae::load(vae_cfg, vc->weights, Vae::Part::ENCODER));
        // float32, as the reference script keeps its VAE ("to avoid NaN losses"); it runs once per image.
        SD3_TRY(vae.to(nn::Placement{placement.device, DType::F32}));
        auto v = std::make_shared<Vae>(std::move(vae));
        return std::function<Result<LatentDist>(const Tensor&)>([v](const Tensor& image) -> Result<LatentDist> {
            SD3_ASSIGN_OR_RETURN(VaeLatentDist d, v->encode(image.unsqueeze(0)));  // [1, 3, R, R]
            return LatentDist{d.mean.select(0, 0).clone(), d.logvar.select(0, 0).clone()};  // [16, h, w]
        });
    };

    const bool ckpt = opt.gradient_checkpointing;
    const auto patch = opt.patch_transformer;
    const std::optional<QuantFormat> base_format = opt.base_format;
    const size_t resident_bytes = opt.transformer_max_resident_bytes;
    c.load_transformer = [shared, ckpt, patch, placement, base_format, resident_bytes](const LoraSettings& lora,
                                        uint64_t init_seed) -> Result<std::unique_ptr<TrainableModel>> {
        release_workspace(placement.device);  // the cache phase's (the VAE's convolutions) is not training's
        SD3_ASSIGN_OR_RETURN(const Component* tc, shared->require("transformer"));
        SD3_ASSIGN_OR_RETURN(MMDiT model, MMDiT::load(*tc, !placement.on_cpu()));
        if (patch) patch(model);
        SD3_ASSIGN_OR_RETURN(LoraTrainable trainable, model.make_trainable_lora(lora));
        // --max-vram covers the LoRA's training state too: the resident weights get what it leaves.
        const size_t state = static_cast<size_t>(lora_device_bytes(trainable.numel, placement));
        SD3_TRY(model.to(placement, base_format,
                         resident_bytes == SIZE_MAX ? SIZE_MAX : resident_bytes - std::min(resident_bytes, state)));
        TrainRng rng = TrainRng::for_purpose(init_seed, "lora_init");
        init_lora_gaussian(trainable, [&rng]() { return static_cast<float>(rng.normal()); });
        auto m = std::make_unique<Sd3TrainableModel>(std::move(model), std::move(trainable), ckpt, resident_bytes);
        SD3_TRY(m->attach());
        return std::unique_ptr<TrainableModel>(std::move(m));
    };
    // Text-to-image through infer/pipeline.h: validation with the live model and the prompts encoded in the cache
    // phase; class images with the base model (loaded for them, before training).
    c.generate = [shared, placement](const std::vector<GenerateRequest>& reqs, TrainableModel* model,
                                     const LoraSettings& /*lora*/) -> Status {
        if (reqs.empty()) return {};
        release_workspace(placement.device);  // training's (the attention backward's) is not generation's
        PipelineOptions po;
        po.placement = placement;
        po.replay_steps = false;  // the training's memory budget holds: no second pool for a recorded step
        SD3_ASSIGN_OR_RETURN(TextToImage pipe, TextToImage::open(*shared, po));
        if (model != nullptr && reqs[0].with_lora) {
            // Validation samples with the training transformer itself (its LoRA unfused, at scale 1): exactly the
            // trained model, and no second copy of the transformer in memory.
            auto* live = dynamic_cast<Sd3TrainableModel*>(model);
            SD3_ASSERT(live != nullptr, "validation needs the SD3 trainable model");
            live->sync_params();
            pipe.use_transformer(&live->mmdit());
        }
        for (const GenerateRequest& r : reqs) {
            sd3::GenerateRequest g;
            g.prompt = r.prompt;
            g.steps = r.steps;
            g.guidance_scale = static_cast<float>(r.guidance_scale);
            g.width = r.width;
            g.height = r.height;
            g.seed = r.seed;
            GenerateOutput out;
            if (r.positive.prompt_embeds.defined()) {
                const PromptEmbeds pos{r.positive.prompt_embeds.unsqueeze(0), r.positive.pooled.view({1, -1})};
                const PromptEmbeds neg{r.negative.prompt_embeds.unsqueeze(0), r.negative.pooled.view({1, -1})};
                SD3_ASSIGN_OR_RETURN(out, pipe.generate_from_embeds(g, pos, neg));
            } else {
                SD3_ASSIGN_OR_RETURN(out, pipe.generate(g));
            }
            SD3_TRY(write_png(r.out_png, out.images.at(0), generation_text(g, {}, 0, "")));
        }
        release_workspace(placement.device);  // the decoder's, before training goes on
        return {};
    };
    return c;
}

}  // namespace sd3::train
