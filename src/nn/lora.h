// Trainable LoRA: which modules get adapters, the flat layout of their parameters and gradients (one contiguous
// f32 buffer each, DESIGN.md "Memory"; the optimizer's moments use the same layout), initialization and
// conversion to/from a LoraSet for saving and resuming.
// Reference (reference-training.md §4.1): LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian",
// target_modules=[to_k, to_q, to_v, to_out.0]); PEFT suffix-matches targets (`name == t` or ends with "." + t);
// gaussian init is A ~ N(0, std = 1/r), B = 0.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/lora_file.h"

namespace sd3 {

struct LoraTrainConfig {
    int64_t rank = 4;
    float alpha = 0.0f;  // 0: alpha = rank (the reference)
    std::vector<std::string> target_modules = {"to_k", "to_q", "to_v", "to_out.0"};
    std::vector<int64_t> blocks;  // restrict to transformer_blocks.{i}; empty: all (upstream --lora_blocks)
    float dropout = 0.0f;         // lora_dropout
    float effective_alpha() const { return alpha > 0.0f ? alpha : static_cast<float>(rank); }
};

// PEFT target matching plus the block filter.
bool lora_target_matches(const std::string& module, const LoraTrainConfig& cfg);

struct LoraSlot {
    std::string name;  // PEFT parameter name: "transformer_blocks.0.attn.to_q.lora_A.weight"
    int64_t offset = 0;
    Shape shape;
};

struct LoraTrainable {
    LoraTrainConfig config;
    std::vector<std::string> modules;  // adapted module paths, in model order
    std::vector<LoraSlot> slots;       // two per module, lora_A then lora_B
    int64_t numel = 0;
    Tensor params;  // f32 [numel]
    Tensor grads;   // f32 [numel], same layout; backward accumulates into it

    Tensor param(size_t slot) const;  // a view [shape] into params
    Tensor grad(size_t slot) const;   // a view [shape] into grads
    const LoraSlot* find(const std::string& name) const;
    // Copies the parameters into a LoraSet (alpha from the config) for write_lora_file.
    LoraSet to_lora_set() const;
    // Copies A and B of every module from `set` (resume, or start from a LoRA); modules and shapes must match.
    Status load(const LoraSet& set);
};

// Builds the layout for the modules (path, weight shape [out, in]) that match the config, in the given order.
// Fails when a target matches no module.
Result<LoraTrainable> make_lora_layout(const std::vector<std::pair<std::string, Shape>>& linear_modules,
                                       const LoraTrainConfig& cfg);
// A ~ N(0, (1/r)²) drawn slot by slot in layout order from `standard_normal`, B = 0, grads = 0
// (peft init_lora_weights="gaussian", what the reference trainer uses).
void init_lora_gaussian(LoraTrainable& lora, const std::function<float()>& standard_normal);
// The same with a filler that writes n standard normals at once (e.g. a torch-compatible generator, whose tensor
// fills draw in blocks: torch.Tensor.normal_ on each lora_A weight, in layout order).
void init_lora_gaussian_fill(LoraTrainable& lora, const std::function<void(float* dst, int64_t n)>& fill_standard_normal);
// PEFT's default (init_lora_weights=True): A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5)),
// from `uniform01` in [0, 1); B = 0, grads = 0.
void init_lora_kaiming_uniform(LoraTrainable& lora, const std::function<float()>& uniform01);

}  // namespace sd3
