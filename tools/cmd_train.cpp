// `sd3tune train`: LoRA fine-tuning. Our concise flags plus every flag name of the reference script
// (reference-training.md section 2, with upstream's later additions), so the seed's command line runs with
// `accelerate launch train_dreambooth_lora_sd3.py` replaced by `sd3tune train`. Flags that make no sense here are
// accepted with a one-line notice. `--config FILE` reads the same options from a TOML file (command line wins).
// Prints the progress bar; the library (src/train/trainer.h) does the work.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <toml++/toml.h>

#include <optional>

#include "core/log.h"
#include "io/image.h"
#include "io/quant.h"
#include "tools/commands.h"
#include "tools/device_options.h"
#include "tools/model_options.h"
#include "train/sd3_components.h"
#include "train/trainer.h"

namespace sd3::tools {

namespace {

using train::TrainOptions;

struct TrainCli {
    TrainOptions o;
    ModelSpec spec;
    std::string lr_scheduler = "constant";
    std::string weighting_scheme = "logit_normal";
    std::string lora_layers, lora_blocks;
    std::string report_to = "tensorboard";
    std::string resume;
    std::string dataset_name;
    int precondition_outputs = 1;
    std::string prodigy_decouple = "true", prodigy_use_bias_correction = "true", prodigy_safeguard_warmup = "true";
    double prodigy_beta3 = -1;
    int64_t max_train_steps = 0, validation_steps = 0;
    int checkpoints_total_limit = 0;
    uint64_t seed = 0;
    std::string mixed_precision;
    // accepted for compatibility, no effect (notices)
    std::string revision, variant, dataset_config_name, hub_token, hub_model_id,
        prior_generation_precision;
    bool push_to_hub = false, allow_tf32 = false, train_text_encoder = false, upcast_before_saving = false,
         cache_latents = false;
    int dataloader_num_workers = 0, local_rank = -1;
    double text_encoder_lr = 5e-6, adam_weight_decay_text_encoder = 1e-3;
    bool quiet = false;
    std::string config;
    DeviceCliOptions device;
    std::string t5_dtype = "int8";
    std::string attention_backward = "deterministic";
};

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
        if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
    }
    return out;
}

Result<bool> parse_bool(const std::string& name, const std::string& v) {
    std::string l = v;
    for (char& ch : l) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (l == "true" || l == "1" || l == "yes") return true;
    if (l == "false" || l == "0" || l == "no") return false;
    return make_error(ErrorCode::INVALID_ARGUMENT, name, " takes true or false, not '", v, "'");
}

std::string fmt_time(double s) {
    if (!(s >= 0) || s > 1e7) return "--:--";
    const int t = static_cast<int>(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else std::snprintf(buf, sizeof buf, "%02d:%02d", t / 60, t % 60);
    return buf;
}

// --config FILE: every top-level key (or key of a [train] table) sets the option of that name unless the command
// line gave it. Strings, numbers and booleans as written; arrays become comma lists (--lora_layers).
Status apply_config_file(const std::string& path, CLI::App* sub) {
    toml::table root;
    try {
        root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
        std::ostringstream os;
        os << e.description() << " at line " << e.source().begin.line;
        return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": ", os.str());
    }
    const toml::table* tables[2] = {&root, root["train"].as_table()};
    for (const toml::table* t : tables) {
        if (!t) continue;
        for (const auto& [key, node] : *t) {
            const std::string name(key.str());
            if (name == "train" && node.is_table()) continue;
            if (name == "config") return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": a config cannot name another config");
            CLI::Option* opt = nullptr;
            try {
                opt = sub->get_option("--" + name);
            } catch (const CLI::OptionNotFound&) {
                return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": unknown option '", name,
                                  "' (see sd3tune train --help)");
            }
            if (opt->count() > 0) continue;  // the command line wins
            std::string value;
            auto scalar = [](const toml::node& n) -> std::optional<std::string> {
                if (auto v = n.value<std::string>()) return *v;
                if (n.is_boolean()) return std::string(*n.value<bool>() ? "true" : "false");
                if (n.is_integer()) return std::to_string(*n.value<int64_t>());
                if (n.is_floating_point()) {
                    std::ostringstream os;
                    os.precision(17);
                    os << *n.value<double>();
                    return os.str();
                }
                return std::nullopt;
            };
            if (const toml::array* arr = node.as_array()) {
                for (const auto& el : *arr) {
                    auto v = scalar(el);
                    if (!v) return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": '", name, "' has a nested value");
                    value += (value.empty() ? "" : ",") + *v;
                }
            } else if (auto v = scalar(node)) {
                value = *v;
            } else {
                return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": '", name, "' must be a string, number, boolean or list");
            }
            if (opt->get_type_size() == 0) {  // a flag
                if (value == "false") continue;
                if (value != "true")
                    return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": '", name, "' takes true or false");
            }
            try {
                opt->add_result(value);
                opt->run_callback();
            } catch (const CLI::Error& e) {
                return make_error(ErrorCode::INVALID_ARGUMENT, "--config ", path, ": '", name, "': ", e.what());
            }
        }
    }
    return {};
}

Status finish_options(TrainCli& c, CLI::App* sub) {
    TrainOptions& o = c.o;
    if (!c.config.empty()) SD3_TRY(apply_config_file(c.config, sub));
    if (o.model.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "no model: pass --model (or --pretrained_model_name_or_path) DIR");
    auto given = [&](const char* name) { return sub->count(name) > 0; };
    auto notice = [](const std::string& m) { std::fprintf(stderr, "notice: %s\n", m.c_str()); };
    if (given("--push_to_hub") || given("--hub_token") || given("--hub_model_id"))
        notice("--push_to_hub/--hub_token/--hub_model_id: uploading is not done here; the LoRA stays in --output_dir");
    if (given("--allow_tf32")) notice("--allow_tf32 has no effect: the CPU computes in float32; the GPU backend picks its own math");
    if (given("--dataloader_num_workers")) notice("--dataloader_num_workers has no effect: images are prepared and cached once");
    if (given("--mixed_precision")) {
        if (c.mixed_precision != "no" && c.mixed_precision != "fp16" && c.mixed_precision != "bf16")
            return make_error(ErrorCode::INVALID_ARGUMENT, "--mixed_precision ", c.mixed_precision,
                              ": expected no, fp16 or bf16");
        c.device.precision = c.mixed_precision == "no" ? "f32" : c.mixed_precision;
        SD3_ASSIGN_OR_RETURN(const Device device, resolve_device(c.device));
        if (device.is_cpu() && c.device.precision != "f32") {
            notice("--mixed_precision " + c.mixed_precision + ": the CPU trains in float32 with float32 LoRA master weights");
            c.device.precision = "f32";
        }
    }
    if (given("--prior_generation_precision")) notice("--prior_generation_precision has no effect on the CPU");
    if (given("--local_rank")) notice("--local_rank ignored: one process");
    if (given("--revision") || given("--variant")) notice("--revision/--variant ignored: the model is read from a local folder or file");
    if (given("--text_encoder_lr") || given("--adam_weight_decay_text_encoder"))
        notice("--text_encoder_lr/--adam_weight_decay_text_encoder have no effect without text-encoder training");
    if (given("--upcast_before_saving")) notice("--upcast_before_saving: the LoRA is always saved in float32");
    if (given("--cache_latents")) notice("--cache_latents: latents are always cached");
    if (given("--gradient_checkpointing")) o.gradient_checkpointing = true;
    if (c.train_text_encoder)
        return make_error(ErrorCode::UNSUPPORTED, "--train_text_encoder is not supported: only the transformer gets LoRA; "
                          "drop the flag");
    o.report_to = split_list(c.report_to);
    for (const std::string& r : o.report_to)
        if (r == "wandb" || r == "comet_ml") notice("--report_to " + r + ": not available here; writing TensorBoard files and the JSONL log instead");
    for (std::string& r : o.report_to)
        if (r == "wandb" || r == "comet_ml") r = "tensorboard";
    if (!c.dataset_name.empty()) {
        if (!o.data.instance_data_dir.empty())
            return make_error(ErrorCode::INVALID_ARGUMENT, "give only one of --dataset_name and --instance_data_dir");
        if (!std::filesystem::is_directory(c.dataset_name))
            return make_error(ErrorCode::UNSUPPORTED, "--dataset_name ", c.dataset_name,
                              ": only local folders (images + metadata.jsonl/metadata.csv) are supported, not Hub datasets");
        o.data.instance_data_dir = c.dataset_name;
        if (given("--dataset_config_name")) notice("--dataset_config_name ignored for a local folder");
    }
    c.spec.model = o.model;
    SD3_ASSIGN_OR_RETURN(o.lr_schedule.kind, train::parse_lr_schedule(c.lr_scheduler));
    SD3_ASSIGN_OR_RETURN(o.timesteps.scheme, train::parse_weighting_scheme(c.weighting_scheme));
    if (!c.lora_layers.empty()) o.lora.target_modules = split_list(c.lora_layers);
    for (const std::string& b : split_list(c.lora_blocks)) {
        try {
            o.lora.blocks.push_back(std::stoll(b));
        } catch (...) {
            return make_error(ErrorCode::INVALID_ARGUMENT, "--lora_blocks takes block numbers like 0,1,5; got '", b, "'");
        }
    }
    o.precondition_outputs = c.precondition_outputs != 0;
    SD3_ASSIGN_OR_RETURN(o.optim.decouple, parse_bool("--prodigy_decouple", c.prodigy_decouple));
    SD3_ASSIGN_OR_RETURN(o.optim.use_bias_correction, parse_bool("--prodigy_use_bias_correction", c.prodigy_use_bias_correction));
    SD3_ASSIGN_OR_RETURN(o.optim.safeguard_warmup, parse_bool("--prodigy_safeguard_warmup", c.prodigy_safeguard_warmup));
    o.optim.beta3 = c.prodigy_beta3;
    if (given("--max_train_steps")) o.max_train_steps = c.max_train_steps;
    if (given("--checkpoints_total_limit")) o.checkpoints_total_limit = c.checkpoints_total_limit;
    if (given("--seed")) o.seed = c.seed;
    o.validation_steps = c.validation_steps;
    o.resume_from_checkpoint = c.resume;
    if (o.data.with_prior_preservation == false && (!o.data.class_data_dir.empty() || !o.data.class_prompt.empty()))
        notice("--class_data_dir/--class_prompt are unused without --with_prior_preservation");
    std::string opt = o.optimizer;
    for (char& ch : opt) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (opt == "prodigy" && o.learning_rate <= 0.1)
        notice("Prodigy works best with --learning_rate around 1.0");
    return train::validate_train_options(o);
}

std::pair<CLI::App*, CommandRunner> setup_train(CLI::App& app) {
    auto c = std::make_shared<TrainCli>();
    TrainOptions& o = c->o;
    CLI::App* sub = app.add_subcommand("train", "Fine-tune the transformer with LoRA (DreamBooth / captioned images)");
    sub->add_option("--config", c->config, "TOML file with any of these options (key = value, names without --); the command line wins");
    sub->footer(
        "Quick start:  sd3tune train --model MODEL --data IMAGES --prompt \"a photo of sks dog\" --out OUT --steps 100\n"
        "The reference script's flags (--pretrained_model_name_or_path, --instance_data_dir, ...) work as well.\n"
        "See docs/training.md for every option, the outputs and how to resume.");
    auto* g = sub;
    // model and data
    g->add_option("--model,--pretrained_model_name_or_path", o.model, "SD3 model: diffusers folder or single file (required)");
    g->add_option("--tokenizers", c->spec.tokenizers, "folder with tokenizer/, tokenizer_2/, tokenizer_3/ (single files carry none)");
    g->add_option("--clip-l", c->spec.clip_l, "CLIP-L weights file, adds or replaces the model's");
    g->add_option("--clip-g", c->spec.clip_g, "CLIP-G weights file");
    g->add_option("--t5", c->spec.t5, "T5-XXL weights file");
    g->add_option("--vae", c->spec.vae, "VAE weights file");
    g->add_option("--data,--instance_data_dir", o.data.instance_data_dir,
                  "folder of training images (png/jpg/webp); captions from NAME.txt or metadata.jsonl/csv");
    g->add_option("--dataset_name", c->dataset_name, "a local folder in the imagefolder layout (images + metadata)");
    g->add_option("--prompt,--instance_prompt", o.data.instance_prompt, "prompt of every image without its own caption");
    g->add_option("--image_column", o.data.image_column, "metadata column with the file name")->capture_default_str();
    g->add_option("--caption_column", o.data.caption_column, "metadata column with the caption (default: caption, then text)");
    g->add_option("--repeats", o.data.repeats, "repeat every image this many times per epoch")->capture_default_str();
    g->add_option("--resolution", o.data.resolution, "training size (square)")->capture_default_str();
    g->add_flag("--center_crop", o.data.center_crop, "center crop instead of random crop");
    g->add_flag("--random_flip", o.data.random_flip, "flip half of the samples horizontally");
    g->add_flag("--strict", o.data.strict, "stop on an unreadable or too small image instead of skipping it");
    g->add_option("--min_image_size", o.data.min_image_size, "images with a shorter side below this are skipped")->capture_default_str();
    g->add_option("--max_sequence_length", o.max_sequence_length, "T5 tokens per caption")->capture_default_str();
    // prior preservation
    g->add_flag("--with_prior_preservation", o.data.with_prior_preservation, "add the class-image (prior) loss");
    g->add_option("--class_data_dir", o.data.class_data_dir, "class images (missing ones are generated)");
    g->add_option("--class_prompt", o.data.class_prompt, "prompt of the class images");
    g->add_option("--num_class_images", o.data.num_class_images, "minimum number of class images")->capture_default_str();
    g->add_option("--prior_loss_weight", o.prior_loss_weight, "weight of the prior loss")->capture_default_str();
    g->add_option("--sample_batch_size", o.sample_batch_size, "batch for class-image generation")->capture_default_str();
    // output
    g->add_option("--out,--output_dir", o.output_dir, "output folder (LoRA, checkpoints, logs)")->capture_default_str();
    g->add_option("--cache_dir", o.cache_dir, "cache of prompt encodings and latents (default OUT/cache)");
    g->add_option("--lora_format", o.lora_format, "diffusers, comfyui or both")->capture_default_str();
    g->add_option("--seed", c->seed, "random seed (same seed and settings: identical LoRA)");
    // LoRA
    g->add_option("--rank", o.lora.rank, "LoRA rank")->capture_default_str();
    g->add_option("--lora_alpha", o.lora.alpha, "LoRA alpha (default: the rank)");
    g->add_option("--lora_layers", c->lora_layers, "comma list of target modules (default to_k,to_q,to_v,to_out.0)");
    g->add_option("--lora_blocks", c->lora_blocks, "comma list of transformer block numbers (default all)");
    g->add_option("--lora_dropout", o.lora.dropout, "LoRA dropout")->capture_default_str();
    // length and batches
    g->add_option("--batch,--train_batch_size", o.train_batch_size, "images per micro-batch")->capture_default_str();
    g->add_option("--epochs,--num_train_epochs", o.num_train_epochs, "epochs (when --max_train_steps is not given)")->capture_default_str();
    g->add_option("--steps,--max_train_steps", c->max_train_steps, "optimizer updates");
    g->add_option("--grad-accum,--gradient_accumulation_steps", o.gradient_accumulation_steps, "micro-batches per update")->capture_default_str();
    g->add_flag("--gradient_checkpointing", o.gradient_checkpointing, "recompute block activations in backward (less memory)");
    // optimisation
    g->add_option("--lr,--learning_rate", o.learning_rate, "learning rate")->capture_default_str();
    g->add_flag("--scale_lr", o.scale_lr, "multiply the LR by batch size x accumulation");
    g->add_option("--optimizer", o.optimizer, "AdamW or prodigy")->capture_default_str();
    g->add_flag("--use_8bit_adam", o.use_8bit_adam, "8-bit blockwise AdamW moments (bitsandbytes AdamW8bit)");
    g->add_option("--adam_beta1", o.optim.beta1, "")->capture_default_str();
    g->add_option("--adam_beta2", o.optim.beta2, "")->capture_default_str();
    g->add_option("--adam_weight_decay", o.optim.weight_decay, "")->capture_default_str();
    g->add_option("--adam_epsilon", o.optim.eps, "")->capture_default_str();
    g->add_option("--prodigy_beta3", c->prodigy_beta3, "Prodigy beta3 (default sqrt(beta2))");
    g->add_option("--prodigy_decouple", c->prodigy_decouple, "true/false")->capture_default_str();
    g->add_option("--prodigy_use_bias_correction", c->prodigy_use_bias_correction, "true/false")->capture_default_str();
    g->add_option("--prodigy_safeguard_warmup", c->prodigy_safeguard_warmup, "true/false")->capture_default_str();
    g->add_option("--max_grad_norm", o.max_grad_norm, "gradient clipping norm")->capture_default_str();
    g->add_option("--lr_scheduler", c->lr_scheduler,
                  "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial")->capture_default_str();
    g->add_option("--lr_warmup_steps", o.lr_schedule.warmup_steps, "")->capture_default_str();
    g->add_option("--lr_num_cycles", o.lr_schedule.num_cycles, "restarts of cosine_with_restarts")->capture_default_str();
    g->add_option("--lr_power", o.lr_schedule.power, "power of polynomial")->capture_default_str();
    // flow matching
    g->add_option("--weighting_scheme", c->weighting_scheme, "logit_normal, mode, sigma_sqrt, cosmap, none")->capture_default_str();
    g->add_option("--logit_mean", o.timesteps.logit_mean, "")->capture_default_str();
    g->add_option("--logit_std", o.timesteps.logit_std, "")->capture_default_str();
    g->add_option("--mode_scale", o.timesteps.mode_scale, "")->capture_default_str();
    g->add_option("--precondition_outputs", c->precondition_outputs, "1: target x0 (preconditioned); 0: target noise - x0")->capture_default_str();
    // checkpoints
    g->add_option("--checkpointing_steps", o.checkpointing_steps, "save a resumable checkpoint every N updates")->capture_default_str();
    g->add_option("--checkpoints_total_limit", c->checkpoints_total_limit, "keep at most N checkpoints");
    g->add_option("--resume,--resume_from_checkpoint", c->resume, "checkpoint-N folder or 'latest'");
    // validation and logs
    g->add_option("--validation_prompt", o.validation_prompt, "render validation images of this prompt");
    g->add_option("--num_validation_images", o.num_validation_images, "")->capture_default_str();
    g->add_option("--validation_epochs", o.validation_epochs, "validate every N epochs")->capture_default_str();
    g->add_option("--validation_steps", c->validation_steps, "validate every N updates instead");
    g->add_option("--report_to", c->report_to, "tensorboard or none (wandb is accepted with a notice)")->capture_default_str();
    g->add_option("--logging_dir", o.logging_dir, "log folder under --output_dir")->capture_default_str();
    g->add_flag("--quiet", c->quiet, "no progress bar");
    // device and memory
    add_device_options(g, c->device, nullptr);
    add_base_dtype_option(g, c->device);
    g->add_option("--t5-dtype", c->t5_dtype, "T5 weight format in the cache phase: int8, fp8, nf4, bf16, fp16, f32")
        ->check(CLI::IsMember({"int8", "fp8", "nf4", "bf16", "fp16", "f32"}))
        ->capture_default_str();
    add_max_vram_option(g, c->device, "the frozen weights (T5 in the cache phase, then the transformer)",
                        "T5 as much as the transformer will hold, the transformer all of it");
    g->add_option("--attention-backward", c->attention_backward,
                  "GPU attention backward: deterministic (the same seed and settings give the same LoRA bytes) or "
                  "atomic (cuDNN's faster one, which sums with atomic adds: the LoRA's last bits differ from run to "
                  "run, as with PyTorch's attention). The CPU is always deterministic")
        ->check(CLI::IsMember({"deterministic", "atomic"}))
        ->capture_default_str();
    // reference flags without an effect here
    g->add_option("--revision", c->revision, "(ignored)");
    g->add_option("--variant", c->variant, "(ignored)");
    g->add_option("--dataset_config_name", c->dataset_config_name, "(ignored)");
    g->add_option("--hub_token", c->hub_token, "(ignored)");
    g->add_option("--hub_model_id", c->hub_model_id, "(ignored)");
    g->add_flag("--push_to_hub", c->push_to_hub, "(ignored)");
    g->add_flag("--allow_tf32", c->allow_tf32, "(ignored)");
    g->add_option("--dataloader_num_workers", c->dataloader_num_workers, "(ignored)");
    g->add_option("--mixed_precision", c->mixed_precision,
                  "GPU compute dtype: bf16, fp16 or no (float32); default bf16 (fp16 on cards without bf16); "
                  "LoRA master weights and the optimizer stay float32. The CPU trains in float32");
    g->add_option("--prior_generation_precision", c->prior_generation_precision, "(ignored)");
    g->add_option("--local_rank", c->local_rank, "(ignored)");
    g->add_option("--text_encoder_lr", c->text_encoder_lr, "(ignored)");
    g->add_option("--adam_weight_decay_text_encoder", c->adam_weight_decay_text_encoder, "(ignored)");
    g->add_flag("--train_text_encoder", c->train_text_encoder, "(not supported)");
    g->add_flag("--upcast_before_saving", c->upcast_before_saving, "(always float32)");
    g->add_flag("--cache_latents", c->cache_latents, "(always cached)");

    return {sub, [c, sub]() -> Status {
                SD3_TRY(finish_options(*c, sub));
                SD3_ASSIGN_OR_RETURN(const nn::Placement placement, resolve_placement(c->device));
                train::Sd3ComponentOptions so;
                so.max_sequence_length = c->o.max_sequence_length;
                so.gradient_checkpointing = c->o.gradient_checkpointing;
                so.placement = placement;
                so.base_format = base_format(c->device);
                so.text.t5.format = *quant_format_from_name(c->t5_dtype);
                so.text.t5_max_resident_bytes = max_vram_bytes(c->device);
                if (max_vram_bytes(c->device) > 0 && !placement.on_cpu())  // the CPU streams nothing
                    so.transformer_max_resident_bytes = max_vram_bytes(c->device);
                const bool deterministic = c->attention_backward == "deterministic";
                if (!deterministic && placement.on_cpu())
                    std::fprintf(stderr, "notice: --attention-backward atomic has no effect on the CPU, whose "
                                         "attention backward is always deterministic\n");
                set_deterministic_attention(placement.device, deterministic);
                std::fprintf(stderr, "device: %s, compute dtype %s%s\n", device_description(placement.device).c_str(),
                             std::string(dtype_name(placement.dtype)).c_str(),
                             deterministic || placement.on_cpu()
                                 ? ""
                                 : ", attention backward with atomics (not bit-reproducible)");
                SD3_ASSIGN_OR_RETURN(train::TrainComponents comp, train::make_sd3_components(c->spec, so));
                train::ImageDecoder decode = [](const std::string& path) -> Result<train::RgbImage> {
                    SD3_ASSIGN_OR_RETURN(Image img, read_image(path));
                    return train::RgbImage{img.width, img.height, std::move(img.pixels)};
                };
                const bool tty = isatty(fileno(stderr)) && !c->quiet;
                const auto t0 = std::chrono::steady_clock::now();
                int64_t first_step = -1;
                train::TrainCallbacks cb;
                cb.on_phase = [tty](const std::string& m) {
                    std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", m.c_str());
                };
                // Measurements for --metrics-json: the cache phase, then the updates (median: steady state).
                double cache_seconds = 0;
                size_t cache_peak = 0;
                std::vector<double> update_seconds;
                std::vector<train::StepReport::Phases> update_phases;
                cb.on_cache_done = [&]() {
                    synchronize(placement.device);
                    cache_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    cache_peak = memory_stats(placement.device).peak;
                    reset_peak_memory(placement.device);
                };
                cb.on_step = [&, tty](const train::StepReport& r) {
                    update_seconds.push_back(r.seconds);
                    update_phases.push_back(r.phases);
                    if (c->quiet) return;
                    if (first_step < 0) first_step = r.step - 1;
                    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    const double rate = (r.step - first_step) / std::max(el, 1e-9);
                    const double eta = (r.max_steps - r.step) / std::max(rate, 1e-12);
                    const int width = 24;
                    const int filled = static_cast<int>(width * r.step / std::max<int64_t>(1, r.max_steps));
                    std::string bar(filled, '#');
                    bar.resize(width, '.');
                    std::fprintf(stderr, "%s[%s] %lld/%lld  loss %.4f  lr %.2e  %.2f steps/s  ETA %s%s",
                                 tty ? "\r\033[K" : "", bar.c_str(), static_cast<long long>(r.step),
                                 static_cast<long long>(r.max_steps), r.loss, r.lr, rate, fmt_time(eta).c_str(),
                                 tty && r.step < r.max_steps ? "" : "\n");
                    std::fflush(stderr);
                };
                reset_peak_memory(placement.device);
                SD3_ASSIGN_OR_RETURN(train::TrainResult res, train::run_training(c->o, comp, decode, cb));
                if (!c->quiet) std::fprintf(stderr, "\n");
                std::printf("trained %lld updates; LoRA written to %s\n", static_cast<long long>(res.global_step),
                            res.lora_path.c_str());
                const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                const size_t train_peak = memory_stats(placement.device).peak;
                nlohmann::ordered_json m;
                m["wall_seconds"] = wall;
                m["cache_seconds"] = cache_seconds;
                m["train_seconds"] = wall - cache_seconds;
                m["updates"] = update_seconds.size();
                // The median over updates after the first two (warm-up: cuBLASLt/cuDNN plans, pool growth).
                const size_t warmup = std::min<size_t>(2, update_seconds.size() / 2);
                auto steady_median = [&](auto seconds_of) {
                    std::vector<double> v;
                    for (size_t i = warmup; i < update_seconds.size(); ++i) v.push_back(seconds_of(i));
                    std::sort(v.begin(), v.end());
                    return v.empty() ? 0.0 : v[v.size() / 2];
                };
                const double median = steady_median([&](size_t i) { return update_seconds[i]; });
                m["seconds_per_update"] = median;
                // Where an update's time goes (train/trainer.h StepReport::Phases), each the median on its own.
                m["phase_seconds_per_update"] = {
                    {"batch", steady_median([&](size_t i) { return update_phases[i].batch; })},
                    {"step", steady_median([&](size_t i) { return update_phases[i].step; })},
                    {"optimizer", steady_median([&](size_t i) { return update_phases[i].optimizer; })},
                    {"report", steady_median([&](size_t i) { return update_phases[i].report; })}};
                const double images = static_cast<double>(c->o.train_batch_size * c->o.gradient_accumulation_steps);
                m["images_per_second"] = median > 0 ? images / median : 0.0;
                m["cache_peak_gpu_bytes"] = cache_peak;
                m["train_peak_gpu_bytes"] = train_peak;
                m["peak_gpu_bytes"] = std::max(cache_peak, train_peak);
                return write_metrics(c->device, placement, m);
            }};
}

SD3_COMMAND(30, setup_train);

}  // namespace

}  // namespace sd3::tools
