// `sd3tune convert --to diffusers|single-file INPUT --output OUT`: writes a model in the other layout (a
// diffusers folder, or one Stability single file), bit-identically; the parts options add or replace components.
// `sd3tune convert --to diffusers|kohya|comfyui LORA --output OUT` rewrites a LoRA file's keys in another dialect.
#include <filesystem>

#include "io/name_map.h"
#include "io/safetensors.h"

#include "io/single_file.h"
#include "tools/commands.h"
#include "tools/model_options.h"

namespace sd3::tools {

namespace {

struct ConvertOptions {
    ModelSpec spec;
    std::string to;
    std::string output;
    int mmdit_layers = 0;
};

// A LoRA file rather than a model: its keys carry LoRA factor names.
bool is_lora_file(const std::string& path) {
    if (!std::filesystem::is_regular_file(path)) return false;
    auto f = SafetensorsFile::open(path);
    if (!f.ok()) return false;
    for (const TensorInfo& t : f->tensors())
        for (const char* part : {".lora_A.", ".lora_B.", ".lora_down.", ".lora_up."})
            if (t.name.find(part) != std::string::npos) return true;
    return false;
}

Status convert_lora(const ConvertOptions& opt) {
    SD3_ASSIGN_OR_RETURN(LoraSet set, read_lora_any(opt.spec.model, opt.mmdit_layers));
    const auto dialect = lora_dialect_from_name(opt.to);
    if (!dialect)
        return make_error(ErrorCode::INVALID_ARGUMENT, opt.spec.model, " is a LoRA: --to takes diffusers, kohya or comfyui");
    return write_lora(opt.output, set, *dialect, DType::F32, opt.mmdit_layers);
}

std::pair<CLI::App*, CommandRunner> setup_convert(CLI::App& app) {
    auto opt = std::make_shared<ConvertOptions>();
    CLI::App* sub = app.add_subcommand("convert", "Write a model as a diffusers folder or a single-file checkpoint");
    sub->add_option("input", opt->spec.model, "diffusers SD3 folder or single-file checkpoint")->required();
    sub->add_option("--to", opt->to, "layout to write: diffusers or single-file for models; diffusers, kohya or comfyui for LoRAs")
        ->required()
        ->check(CLI::IsMember({"diffusers", "single-file", "kohya", "comfyui"}));
    sub->add_option("--mmdit-layers", opt->mmdit_layers,
                    "LoRAs only: the model's block count (24 for SD3 Medium), needed when the LoRA adapts a context adaLN");
    sub->add_option("--output,-o", opt->output, "output folder (diffusers) or .safetensors file (single-file)")->required();
    add_model_options(sub, opt->spec, /*model_required=*/false);
    return {sub, [opt]() -> Status {
                if (std::filesystem::exists(opt->output) && opt->to != "diffusers")
                    return make_error(ErrorCode::INVALID_ARGUMENT, opt->output, ": exists; choose a new file name");
                if (is_lora_file(opt->spec.model)) return convert_lora(*opt);
                if (opt->to == "kohya" || opt->to == "comfyui")
                    return make_error(ErrorCode::INVALID_ARGUMENT, "--to ", opt->to, " converts LoRA files; ",
                                      opt->spec.model, " holds a model (use --to diffusers or single-file)");
                SD3_ASSIGN_OR_RETURN(ModelFolder model, open_model(opt->spec));
                return convert_model(model, opt->to == "diffusers" ? ConvertTarget::DIFFUSERS : ConvertTarget::SINGLE_FILE,
                                     opt->output);
            }};
}

SD3_COMMAND(85, setup_convert);

}  // namespace

}  // namespace sd3::tools
