// Model folders of real shapes with random weights (`sd3tune make-model`), so speed and memory can be measured
// without the gated checkpoints: per architecture the list of diffusers/transformers tensor names and shapes a
// config implies, the presets' configs (SD3 Medium, SD3.5 Medium, and the tiny test model's shapes), and a
// writer that streams each component to disk tensor by tensor. The model loaders verify these lists: a test
// loads a generated folder through every model, whose WeightLoader rejects a missing, misshapen or extra tensor.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/safetensors.h"

namespace sd3 {

// Tensor names and shapes of one component, from its config (the class decides the architecture).
Result<std::vector<TensorSpec>> component_weight_specs(const std::string& class_name, const nlohmann::json& config,
                                                       DType dtype);

// "sd3-medium", "sd3.5-medium", "tiny": {component: config JSON}, including the scheduler.
Result<nlohmann::json> preset_configs(const std::string& preset);
std::vector<std::string> preset_names();

struct MakeModelOptions {
    std::string preset;
    std::string output_dir;
    std::string tokenizers_dir;  // a diffusers folder whose tokenizer/, tokenizer_2/, tokenizer_3/ are copied
    DType dtype = DType::BF16;
    uint64_t seed = 0;
    size_t max_shard_bytes = size_t{5} << 30;  // larger components are sharded with an index, as diffusers does
};

// Writes a complete pipeline folder: model_index.json, each component's config and random weights
// (N(0, 1/fan_in) matrices, unit norm weights, zero biases), and the tokenizers copied from tokenizers_dir.
// An existing non-empty output folder is refused rather than overwritten.
Status make_model(const MakeModelOptions& options);

}  // namespace sd3
