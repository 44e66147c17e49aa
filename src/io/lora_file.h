// LoRA files in the diffusers/PEFT layout (what the reference trainer saves: reference-training.md §4.3/§4.4):
// `transformer.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], safetensors metadata
// {"format": "pt"} and, when present, "lora_adapter_metadata" (diffusers >= 0.34: a JSON LoraConfig whose keys
// carry the component prefix, "transformer.lora_alpha", "transformer.alpha_pattern", ...). Without metadata
// alpha = rank, as diffusers assumes. In memory a LoRA is a LoraSet keyed by diffusers module path; other key
// dialects (ComfyUI/kohya) are parsed by io/name_map into the same LoraSet.
#pragma once

#include <map>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace sd3 {

struct LoraModule {
    Tensor A;            // [r, in], f32
    Tensor B;            // [out, r], f32
    float alpha = 0.0f;  // scale of ΔW = (alpha / r) · B·A
    int64_t rank() const { return A.size(0); }
};

struct LoraSet {
    std::map<std::string, LoraModule> modules;  // "transformer_blocks.0.attn.to_q" -> its A, B, alpha
};

// Reads a LoRA file (diffusers/PEFT layout). Errors name the file and the offending key.
Result<LoraSet> read_lora_file(const std::string& path);

// The diffusers/PEFT dialect: keys `[transformer.]<module>.lora_{A,B}[.default].weight`, optional `<module>.alpha`
// scalars, alpha from "lora_adapter_metadata" else rank. Any other key is an error listing it.
// (Kept separate so that io/name_map can dispatch between dialects.)
Result<LoraSet> parse_diffusers_lora(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                                     const std::string& origin);

struct LoraWriteOptions {
    DType dtype = DType::F32;  // the reference's final save is float32
    std::string prefix = "transformer.";
};
// Writes `set` in the diffusers layout with lora_adapter_metadata (r, lora_alpha, target_modules, and
// rank_pattern / alpha_pattern where modules differ), atomically.
Status write_lora_file(const std::string& path, const LoraSet& set, const LoraWriteOptions& options = {});

}  // namespace sd3
