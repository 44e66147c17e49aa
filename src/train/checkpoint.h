// LoRA output files and resumable checkpoints (reference-training.md 3.8, 4.3): the diffusers LoRA layout
// (`transformer.<peft name>` keys, float32, metadata with rank/alpha/targets), and checkpoint-N folders holding the
// LoRA, the optimizer state and trainer_state.json. A checkpoint is written into a temporary folder and renamed into
// place, so a crash mid-write never leaves a folder named checkpoint-N that looks whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/lora_file.h"
#include "train/components.h"
#include "train/optimizer.h"

namespace sd3::train {

inline constexpr const char* kLoraWeightName = "pytorch_lora_weights.safetensors";
inline constexpr const char* kComfyLoraWeightName = "pytorch_lora_weights_comfyui.safetensors";  // --lora_format comfyui|both

// "transformer_blocks.0.attn.to_q.lora_A.default.weight" -> "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
std::string diffusers_lora_key(const std::string& slot_name);

// params [P] laid out by `slots` as a LoraSet (module -> A, B, alpha).
LoraSet lora_set_from_params(const std::vector<LoraSlot>& slots, const float* params, const LoraSettings& lora);
// Writes params as a diffusers LoRA file (io/lora_file.h, atomic, float32, lora_adapter_metadata).
Status save_lora_params(const std::string& path, const std::vector<LoraSlot>& slots, const float* params,
                        const LoraSettings& lora);
// Reads a LoRA file into params [P]; every slot must be present with its shape, and no other module.
Status load_lora_params(const std::string& path, const std::vector<LoraSlot>& slots, float* params);

struct TrainerState {
    int64_t global_step = 0;        // optimizer updates done
    int64_t micro_steps = 0;        // micro-batches done (for RNG keys)
    int64_t epoch = 0;              // epoch of the next micro-batch
    int64_t batch_in_epoch = 0;     // index of the next micro-batch within that epoch
    std::string settings_hash;      // options that must not change across a resume
    double last_loss = 0;
};

// Saves checkpoint-<global_step> under output_dir; then keeps at most `total_limit` checkpoints (oldest removed
// first; 0 = no limit). Returns the folder written.
Result<std::string> save_checkpoint(const std::string& output_dir, const TrainerState& state,
                                    const std::vector<LoraSlot>& slots, const float* params,
                                    const LoraSettings& lora, const Optimizer& optimizer, int total_limit);

// "latest" -> the highest complete checkpoint-N in output_dir (empty string when none); a path -> that folder
// (as given, or its basename under output_dir as the reference resolves it).
Result<std::string> resolve_checkpoint(const std::string& output_dir, const std::string& spec);

// Restores params, optimizer state and trainer state from a checkpoint folder. A non-empty
// `expected_settings_hash` that differs from the checkpoint's is an error (checked before anything is loaded).
Status load_checkpoint(const std::string& dir, const std::vector<LoraSlot>& slots, float* params,
                       Optimizer& optimizer, TrainerState* state, const std::string& expected_settings_hash = "");

// checkpoint-N folders of output_dir, sorted by N.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir);

}  // namespace sd3::train
