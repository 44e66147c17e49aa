// Models as users have them: Stability's single-file checkpoints (MMDiT + VAE, optionally CLIP-L/G and T5, T5
// possibly float8), standalone encoder/VAE files, and diffusers folders, all opened into the same ModelFolder.
// Owns layout detection from tensor names alone, MappedSource (a file seen through the name map, lazily),
// config derivation from weight shapes, open_model (--model plus --tokenizers/--clip-l/--clip-g/--t5/--vae) and
// convert_model (folder <-> single file). Name rules live in io/name_map; formats in docs/model-formats.md.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/model_folder.h"
#include "io/name_map.h"
#include "io/tensor_source.h"

namespace sd3 {

// --- layout detection ---

enum class ModelLayout : uint8_t {
    DIFFUSERS_FOLDER,  // model_index.json + one folder per component
    SINGLE_FILE,       // Stability's single file: model.diffusion_model.*, first_stage_model.*, text_encoders.*
    COMPONENT_FILE,    // one component without a prefix (clip_l.safetensors, t5xxl_fp8_e4m3fn.safetensors, a VAE)
    NOT_A_MODEL,       // tensors of something else (golden data, a LoRA)
};
std::string_view model_layout_name(ModelLayout layout);

struct DetectedLayout {
    ModelLayout layout = ModelLayout::NOT_A_MODEL;
    // COMPONENT_FILE: what it holds and in which naming.
    ComponentKind kind = ComponentKind::MMDIT;
    bool diffusers_names = false;  // names already diffusers/transformers ones (a component file of a folder)
    std::string prefix;            // stripped before mapping ("" or e.g. "diffusion_model.")
    std::vector<std::string> components;  // SINGLE_FILE: the pipeline components present
    std::string summary;                  // one line for people
};
// Decides from the names alone (never from the file name). Names that look like SD3 weights but fit no single
// layout are an error listing examples; names of something else give NOT_A_MODEL.
Result<DetectedLayout> detect_layout(const std::vector<std::string>& names);

// --- MappedSource ---

// A TensorSource in diffusers naming over stored tensors in another dialect. Nothing is read at construction;
// get() returns views into the mapping where it can (COPY, ROW_CHUNK, CONV1X1_TO_LINEAR) and builds a small
// tensor only for SWAP_HALVES. Tensors keep their stored dtype (fp8 stays fp8).
class MappedSource : public TensorSource {
  public:
    // Checks every mapped tensor's stored shape against its transform (rows divisible by the parts, even rows to
    // swap, [o, i, 1, 1] to squeeze). `stored` must hold every name the mapping refers to.
    static Result<std::shared_ptr<MappedSource>> create(std::shared_ptr<const TensorSource> stored,
                                                        ComponentMapping mapping);

    std::vector<std::string> names() const override;
    std::optional<TensorMeta> meta(std::string_view name) const override;
    Result<Tensor> get(std::string_view name) const override;
    std::string origin() const override;

    const ComponentMapping& mapping() const { return mapping_; }
    // Adds a tensor with no stored counterpart (Stability files omit CLIP-L's text_projection: diffusers'
    // loader uses eye(hidden), single_file_utils.py create_diffusers_clip_model_from_ldm).
    void add_synthesized(const std::string& name, Tensor value, const std::string& why);

  private:
    struct Entry {
        TensorMapping map;
        TensorMeta meta;
        Tensor synthesized;  // defined only for added tensors
    };
    std::shared_ptr<const TensorSource> stored_;
    ComponentMapping mapping_;
    std::map<std::string, Entry, std::less<>> entries_;
};

// --- configs from weight shapes ---

struct DerivedConfig {
    nlohmann::json config;           // the same JSON shape as the diffusers/transformers config.json
    std::vector<std::string> notes;  // what was derived from which tensor, and what is a convention
};
// `component` picks conventions the weights cannot show: "text_encoder" is CLIP-L (quick_gelu), "text_encoder_2"
// CLIP-G (gelu). Checks the weights are complete and consistent for the derived config (a missing block, a
// tensor of the wrong shape or an extra tensor is an error naming it).
Result<DerivedConfig> derive_config(ComponentKind kind, const std::string& component, const TensorSource& weights);

// The diffusers class and library of a component kind ("SD3Transformer2DModel", "diffusers").
std::pair<std::string, std::string> component_class(ComponentKind kind);

// --- opening a model from whatever the user has ---

struct ModelSpec {
    std::string model;       // diffusers folder, single file, or (with the options below) any component file
    std::string tokenizers;  // --tokenizers DIR: a diffusers folder, or a folder with tokenizer/, tokenizer_2/, tokenizer_3/
    std::string clip_l;      // --clip-l FILE
    std::string clip_g;      // --clip-g FILE
    std::string t5;          // --t5 FILE
    std::string vae;         // --vae FILE
};

// What open_model found, for `sd3tune info` and logs.
struct ModelOrigin {
    ModelLayout layout = ModelLayout::NOT_A_MODEL;
    std::string summary;
    std::vector<std::string> notes;  // derived configs, replaced parts, synthesized tensors
};

// Builds the ModelFolder from the spec: the --model base, then each option adding or replacing its part.
// A part that the job needs but none supplies is reported later by ModelFolder::require, naming the option.
Result<ModelFolder> open_model(const ModelSpec& spec, ModelOrigin* origin = nullptr);

// The option that supplies a pipeline part, for error messages ("--clip-l FILE (clip_l.safetensors)").
std::string part_supply_hint(const std::string& component);

// `sd3tune info` for a .safetensors file: the layout, components and derived configs (describe_model's shape plus
// "layout", "summary" and "notes"); a null JSON when the file holds no model (the caller lists tensors instead).
Result<nlohmann::ordered_json> describe_model_file(const std::string& path);

// --- converting ---

enum class ConvertTarget : uint8_t { DIFFUSERS, SINGLE_FILE };
// Writes `model` in the other layout: a diffusers folder (model_index.json, configs, weights, tokenizers and
// scheduler when present) or one Stability single file (with the configs in its __metadata__ so that converting
// back restores them exactly). Tensors are written bit-identically in their stored dtype.
Status convert_model(const ModelFolder& model, ConvertTarget target, const std::string& output);

}  // namespace sd3
