// Every setting of a training run (reference-training.md section 2 for the reference's names and defaults;
// docs/training.md for ours), checked as a whole before anything is loaded.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "train/components.h"
#include "train/dataset.h"
#include "train/flow_matching.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace sd3::train {

struct TrainOptions {
    std::string model;       // --pretrained_model_name_or_path / --model
    std::string output_dir = "sd3-dreambooth";
    std::string cache_dir;   // default <output_dir>/cache
    std::optional<uint64_t> seed;
    DatasetOptions data;
    int max_sequence_length = 77;
    // LoRA
    LoraSettings lora;
    std::string lora_format = "diffusers";  // diffusers | comfyui | both
    // batches and length
    int train_batch_size = 4;
    int sample_batch_size = 4;
    int num_train_epochs = 1;
    std::optional<int64_t> max_train_steps;
    int gradient_accumulation_steps = 1;
    bool gradient_checkpointing = false;
    // optimisation
    double learning_rate = 1e-4;
    bool scale_lr = false;
    std::string optimizer = "AdamW";  // AdamW | prodigy
    bool use_8bit_adam = false;
    OptimizerConfig optim;            // betas, eps, weight decay, Prodigy switches
    double max_grad_norm = 1.0;
    LrScheduleConfig lr_schedule{LrScheduleKind::CONSTANT, 500};  // --lr_warmup_steps default 500
    // flow matching
    TimestepSampling timesteps;
    bool precondition_outputs = true;
    double prior_loss_weight = 1.0;
    // checkpoints
    int64_t checkpointing_steps = 500;  // upstream's default (the seed's 10000 worked around a crash)
    std::optional<int> checkpoints_total_limit;
    std::string resume_from_checkpoint;  // "", "latest" or a path
    // validation
    std::string validation_prompt;
    int num_validation_images = 4;
    int validation_epochs = 50;
    int64_t validation_steps = 0;  // 0: by epochs only
    int validation_inference_steps = 28;
    double validation_guidance_scale = 7.0;
    // logging
    std::vector<std::string> report_to = {"tensorboard"};
    std::string logging_dir = "logs";
    bool use_cache = true;  // write/read the cache folder

    // The seed actually used (0 when --seed is not given: runs are still deterministic).
    uint64_t run_seed() const { return seed.value_or(0); }
    double effective_learning_rate() const;  // with --scale_lr
    std::string effective_cache_dir() const;
};

// Impossible combinations and out-of-range values, each with what to change.
Status validate_train_options(const TrainOptions& o);

// The optimizer configuration implied by the options (AdamW, AdamW8bit or Prodigy).
OptimizerConfig optimizer_config(const TrainOptions& o);
// Schedule with training steps and polynomial lr_init filled in.
LrScheduleConfig lr_schedule_config(const TrainOptions& o, int64_t max_train_steps);

// All options as JSON text (written beside the outputs and into TensorBoard/JSONL headers).
std::string train_options_json(const TrainOptions& o);

}  // namespace sd3::train
