// The one name-mapping module (DESIGN.md "Conventions"): every key dialect that model weights come in, mapped onto
// diffusers names, as data (pattern rules) plus a few small tensor transforms. Dialects: Stability's single-file
// checkpoint (model.diffusion_model.* MMDiT, first_stage_model.* LDM VAE, text_encoders.{clip_l,clip_g,t5xxl}.*),
// and the same per-component names stored without a prefix (standalone clip_l / clip_g / t5xxl / VAE files);
// and the LoRA key dialects (kohya, ComfyUI) over the same MMDiT rules (name_map_lora.cpp).
// Facts: ../shared/research/sd3-architecture.md §3.2-3.4 (diffusers single_file_utils.py). docs/model-formats.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "io/lora_file.h"
#include "io/safetensors.h"

namespace sd3 {

// How one diffusers tensor is made from stored tensor(s). Each op has an exact inverse used when writing.
enum class MapOp : uint8_t {
    COPY,               // the stored tensor as is
    ROW_CHUNK,          // rows [part*R/parts, (part+1)*R/parts) of the stored tensor (fused qkv -> q, k, v);
                        // inverse: concatenate the parts along dim 0
    SWAP_HALVES,        // the two halves along dim 0 exchanged: Stability's (shift, scale) <-> diffusers' (scale,
                        // shift) of norm_out and the last block's context adaLN (§3.2); its own inverse
    CONV1X1_TO_LINEAR,  // [out, in, 1, 1] -> [out, in] (VAE mid attention q/k/v/proj_out, §3.3); inverse unsqueezes
    IGNORE,             // a stored buffer the reference recomputes (CLIP position_ids); no diffusers tensor
};
std::string_view map_op_name(MapOp op);

// The component kinds of an SD3 pipeline whose weights can be stored in another dialect.
enum class ComponentKind : uint8_t { MMDIT, VAE, CLIP, T5 };
std::string_view component_kind_name(ComponentKind kind);  // "MMDiT", "VAE", "CLIP text encoder", "T5 encoder"

// A pattern rule. Patterns are dot-separated segments; a segment is a literal or a placeholder:
//   {i}            a decimal block index, captured as i
//   {~i}           the same index counted from the other end: stored value = count - 1 - i (VAE decoder up blocks)
//   {p:a|b|c}      one of the listed literal segments, captured as p
//   {p:**}         one or more segments (only last), captured as p
// `stored` is relative to the component's prefix; `diffusers` holds one name per part (three for a fused qkv).
enum class RuleWhen : uint8_t { ALWAYS, LAST_BLOCK };  // LAST_BLOCK: only when {i} is the last MMDiT block
struct NameRule {
    std::string_view stored;
    std::vector<std::string_view> diffusers;
    MapOp op = MapOp::COPY;
    RuleWhen when = RuleWhen::ALWAYS;
};
// The rules that map `kind`'s stored (Stability / LDM / HF) names onto diffusers names, first match wins.
const std::vector<NameRule>& stability_rules(ComponentKind kind);

// One name matched by a rule: the name on the other side and how the tensor transforms (part of parts for
// ROW_CHUNK). `count` is the component's block count that {~i} and LAST_BLOCK refer to (MMDiT blocks, VAE
// decoder up blocks; see count_indexed); names are component-relative.
struct RuleMatch {
    std::string name;
    MapOp op = MapOp::COPY;
    int part = 0;
    int parts = 1;
};
// Every diffusers name of one stored name (three for a fused qkv; one IGNORE entry for a dropped buffer);
// empty when no rule knows it.
std::vector<RuleMatch> stored_to_diffusers(ComponentKind kind, std::string_view stored, int count);
// The stored name a diffusers name comes from (writing direction).
std::optional<RuleMatch> diffusers_to_stored(ComponentKind kind, std::string_view diffusers, int count);

// One diffusers tensor of a component and how to make it from stored tensors.
struct TensorMapping {
    std::string diffusers;  // component-relative diffusers name ("transformer_blocks.0.attn.to_q.weight")
    std::string stored;     // full stored name ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight")
    MapOp op = MapOp::COPY;
    int part = 0;   // ROW_CHUNK: which part
    int parts = 1;  // ROW_CHUNK: how many parts
};

struct ComponentMapping {
    std::string component;  // diffusers pipeline component: "transformer", "vae", "text_encoder", ...
    ComponentKind kind = ComponentKind::MMDIT;
    std::string prefix;     // stored prefix ("model.diffusion_model."), "" for standalone files
    std::vector<TensorMapping> tensors;  // sorted by diffusers name
    std::vector<std::string> ignored;    // stored names deliberately dropped (IGNORE rules)
};

// The prefixes of Stability's single-file layout and the component each holds (§3.4).
struct StabilityPrefix {
    std::string_view prefix;
    std::string_view component;
    ComponentKind kind;
};
const std::vector<StabilityPrefix>& stability_prefixes();

// Maps the stored names of one component (all starting with `prefix`) onto diffusers names. A name no rule matches,
// or two stored names claiming one diffusers name, is an error listing every such name.
Result<ComponentMapping> map_component(ComponentKind kind, const std::string& component, const std::string& prefix,
                                       const std::vector<std::string>& stored_names);

// Splits a Stability single file's names by prefix and maps each component present. A name under no known prefix
// is an error listing it.
Result<std::vector<ComponentMapping>> map_stability_file(const std::vector<std::string>& stored_names);

// The inverse, for writing the Stability layout: which stored tensor is built from which diffusers tensors.
struct StoredTensorPlan {
    std::string stored;                  // full stored name
    std::vector<std::string> diffusers;  // component-relative diffusers names, in part order
    MapOp op = MapOp::COPY;              // the forward op; writing applies its inverse
};
// Every diffusers name must be matched and every part of a fused tensor present; else an error listing them.
Result<std::vector<StoredTensorPlan>> plan_stability_component(ComponentKind kind, const std::string& prefix,
                                                               const std::vector<std::string>& diffusers_names);

// 1 + the largest N of names "<before>N." (0 when there is none): MMDiT blocks, VAE up blocks, encoder layers.
int count_indexed(const std::vector<std::string>& names, std::string_view before);

// --- LoRA key dialects ---
// diffusers/PEFT (io/lora_file): `transformer.transformer_blocks.0.attn.to_q.lora_A.weight` / `lora_B`.
// kohya sd-scripts: `lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`,
//   the Stability module path with dots as underscores.
// ComfyUI: `diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight` / `.lora_up.weight` / `.alpha`
//   (lora_A / lora_B suffixes are read too), the Stability module path as ComfyUI's model keys have it.
// Stability modules map onto diffusers modules with the MMDiT rules above: a LoRA on a fused qkv becomes three
// LoRAs that share lora_down as A and take their rows of lora_up as B (exact: [B_q; B_k; B_v]·A is the fused
// update); written back, q/k/v become one LoRA of rank r_q+r_k+r_v with A stacked and B block-diagonal, and
// reading such a block-diagonal LoRA recovers the three exactly. adaLN halves swap in B's rows.
enum class LoraDialect : uint8_t { DIFFUSERS, KOHYA, COMFYUI };
std::string_view lora_dialect_name(LoraDialect d);  // "diffusers", "kohya", "comfyui"
std::optional<LoraDialect> lora_dialect_from_name(std::string_view name);
// From the keys: lora_unet_* is kohya, diffusion_model.* ComfyUI, anything else diffusers/PEFT.
LoraDialect detect_lora_dialect(const NamedTensors& tensors);

// Any dialect into the diffusers-keyed LoraSet. `mmdit_layers` is the target MMDiT's block count; it is needed
// (else an error says so) only for a LoRA on the last block's context adaLN, whose halves are swapped.
Result<LoraSet> parse_lora(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                           const std::string& origin, int mmdit_layers = 0);
Result<LoraSet> read_lora_any(const std::string& path, int mmdit_layers = 0);
// The tensors of `set` in a Stability dialect (kohya or ComfyUI), each alpha an f32 scalar.
Result<NamedTensors> lora_to_stability(const LoraSet& set, LoraDialect dialect, DType dtype = DType::F32,
                                       int mmdit_layers = 0);
// Writes `set` in any dialect (diffusers through write_lora_file).
Status write_lora(const std::string& path, const LoraSet& set, LoraDialect dialect, DType dtype = DType::F32,
                  int mmdit_layers = 0);

}  // namespace sd3
