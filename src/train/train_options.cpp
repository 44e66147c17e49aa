// Validation and derived settings of TrainOptions.
#include "train/train_options.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace sd3::train {

double TrainOptions::effective_learning_rate() const {
    // lr *= gradient_accumulation_steps * train_batch_size * num_processes (1)
    return scale_lr ? learning_rate * gradient_accumulation_steps * train_batch_size : learning_rate;
}

std::string TrainOptions::effective_cache_dir() const {
    return cache_dir.empty() ? (std::filesystem::path(output_dir) / "cache").string() : cache_dir;
}

Status validate_train_options(const TrainOptions& o) {
    auto bad = [](auto... a) { return make_error(ErrorCode::INVALID_ARGUMENT, a...); };
    if (o.model.empty()) return bad("no model given: pass --pretrained_model_name_or_path DIR (a diffusers SD3 folder)");
    if (o.data.instance_data_dir.empty()) return bad("no training images: pass --instance_data_dir DIR");
    if (o.data.resolution < 16 || o.data.resolution % 16 != 0)
        return bad("--resolution ", o.data.resolution, " must be a positive multiple of 16 (the VAE downsamples by 8 and "
                   "the transformer patches by 2)");
    if (o.data.repeats < 1) return bad("--repeats must be at least 1");
    if (o.train_batch_size < 1) return bad("--train_batch_size must be at least 1");
    if (o.sample_batch_size < 1) return bad("--sample_batch_size must be at least 1");
    if (o.gradient_accumulation_steps < 1) return bad("--gradient_accumulation_steps must be at least 1");
    if (o.max_train_steps && *o.max_train_steps < 1) return bad("--max_train_steps must be at least 1");
    if (!o.max_train_steps && o.num_train_epochs < 1) return bad("--num_train_epochs must be at least 1");
    if (o.lora.rank < 1) return bad("--rank must be at least 1");
    if (o.lora.dropout < 0 || o.lora.dropout >= 1) return bad("--lora_dropout must be in [0, 1)");
    if (o.lora.target_modules.empty()) return bad("--lora_layers names no module");
    if (!(o.learning_rate > 0)) return bad("--learning_rate must be positive");
    if (o.max_grad_norm <= 0) return bad("--max_grad_norm must be positive");
    if (o.lora_format != "diffusers" && o.lora_format != "comfyui" && o.lora_format != "both")
        return bad("--lora_format must be diffusers, comfyui or both");
    std::string opt = o.optimizer;
    std::transform(opt.begin(), opt.end(), opt.begin(), ::tolower);
    if (opt != "adamw" && opt != "prodigy") return bad("--optimizer must be AdamW or prodigy");
    if (opt == "prodigy" && o.use_8bit_adam)
        return bad("--use_8bit_adam applies to AdamW only; drop it or use --optimizer AdamW");
    if (o.data.with_prior_preservation) {
        if (o.data.class_data_dir.empty()) return bad("--with_prior_preservation needs --class_data_dir");
        if (o.data.class_prompt.empty()) return bad("--with_prior_preservation needs --class_prompt");
        if (o.data.num_class_images < 1) return bad("--num_class_images must be at least 1");
    }
    if (o.checkpointing_steps < 1) return bad("--checkpointing_steps must be at least 1");
    if (o.checkpoints_total_limit && *o.checkpoints_total_limit < 1)
        return bad("--checkpoints_total_limit must be at least 1");
    if (o.validation_epochs < 1) return bad("--validation_epochs must be at least 1");
    if (o.num_validation_images < 0) return bad("--num_validation_images must be >= 0");
    if (o.validation_steps < 0) return bad("--validation_steps must be >= 0");
    if (o.timesteps.scheme == WeightingScheme::LOGIT_NORMAL && !(o.timesteps.logit_std > 0))
        return bad("--logit_std must be positive");
    if (o.max_sequence_length < 1 || o.max_sequence_length > 512)
        return bad("--max_sequence_length must be in 1..512");
    for (const std::string& r : o.report_to)
        if (r != "tensorboard" && r != "wandb" && r != "comet_ml" && r != "all" && r != "none" && r != "jsonl")
            return bad("--report_to ", r, " is not known; use tensorboard or none");
    LrScheduleConfig lc = lr_schedule_config(o, o.max_train_steps.value_or(1));
    SD3_TRY(validate_lr_schedule(lc));
    return {};
}

OptimizerConfig optimizer_config(const TrainOptions& o) {
    OptimizerConfig c = o.optim;
    std::string opt = o.optimizer;
    std::transform(opt.begin(), opt.end(), opt.begin(), ::tolower);
    c.kind = opt == "prodigy" ? OptimizerKind::PRODIGY
                              : (o.use_8bit_adam ? OptimizerKind::ADAMW_8BIT : OptimizerKind::ADAMW);
    return c;
}

LrScheduleConfig lr_schedule_config(const TrainOptions& o, int64_t max_train_steps) {
    LrScheduleConfig c = o.lr_schedule;
    c.training_steps = max_train_steps;
    // diffusers reads optimizer.defaults["lr"]: the class default for AdamW/AdamW8bit (LR passed per group),
    // the constructor's lr for Prodigy (reference-training.md 3.6).
    c.polynomial_lr_init = optimizer_config(o).kind == OptimizerKind::PRODIGY ? o.effective_learning_rate() : 1e-3;
    return c;
}

std::string train_options_json(const TrainOptions& o) {
    nlohmann::ordered_json j;
    j["model"] = o.model;
    j["output_dir"] = o.output_dir;
    j["seed"] = o.seed ? nlohmann::json(*o.seed) : nlohmann::json(nullptr);
    j["instance_data_dir"] = o.data.instance_data_dir;
    j["instance_prompt"] = o.data.instance_prompt;
    j["caption_column"] = o.data.caption_column;
    j["image_column"] = o.data.image_column;
    j["repeats"] = o.data.repeats;
    j["resolution"] = o.data.resolution;
    j["center_crop"] = o.data.center_crop;
    j["random_flip"] = o.data.random_flip;
    j["with_prior_preservation"] = o.data.with_prior_preservation;
    j["class_data_dir"] = o.data.class_data_dir;
    j["class_prompt"] = o.data.class_prompt;
    j["num_class_images"] = o.data.num_class_images;
    j["prior_loss_weight"] = o.prior_loss_weight;
    j["max_sequence_length"] = o.max_sequence_length;
    j["rank"] = o.lora.rank;
    j["lora_alpha"] = o.lora.effective_alpha();
    j["lora_layers"] = o.lora.target_modules;
    j["lora_blocks"] = o.lora.blocks;
    j["lora_dropout"] = o.lora.dropout;
    j["train_batch_size"] = o.train_batch_size;
    j["num_train_epochs"] = o.num_train_epochs;
    j["max_train_steps"] = o.max_train_steps ? nlohmann::json(*o.max_train_steps) : nlohmann::json(nullptr);
    j["gradient_accumulation_steps"] = o.gradient_accumulation_steps;
    j["gradient_checkpointing"] = o.gradient_checkpointing;
    j["learning_rate"] = o.learning_rate;
    j["scale_lr"] = o.scale_lr;
    j["optimizer"] = optimizer_kind_name(optimizer_config(o).kind);
    j["adam_beta1"] = o.optim.beta1;
    j["adam_beta2"] = o.optim.beta2;
    j["adam_weight_decay"] = o.optim.weight_decay;
    j["adam_epsilon"] = o.optim.eps;
    j["max_grad_norm"] = o.max_grad_norm;
    j["lr_scheduler"] = lr_schedule_name(o.lr_schedule.kind);
    j["lr_warmup_steps"] = o.lr_schedule.warmup_steps;
    j["lr_num_cycles"] = o.lr_schedule.num_cycles;
    j["lr_power"] = o.lr_schedule.power;
    j["weighting_scheme"] = weighting_scheme_name(o.timesteps.scheme);
    j["logit_mean"] = o.timesteps.logit_mean;
    j["logit_std"] = o.timesteps.logit_std;
    j["mode_scale"] = o.timesteps.mode_scale;
    j["precondition_outputs"] = o.precondition_outputs;
    j["checkpointing_steps"] = o.checkpointing_steps;
    j["validation_prompt"] = o.validation_prompt;
    j["num_validation_images"] = o.num_validation_images;
    j["validation_epochs"] = o.validation_epochs;
    j["validation_steps"] = o.validation_steps;
    return j.dump();
}

}  // namespace sd3::train
