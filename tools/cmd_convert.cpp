// `sd3tune convert --to diffusers|single-file INPUT --output OUT`: writes a model in the other layout (a
// diffusers folder, or one Stability single file), bit-identically; the parts options add or replace components.
#include <filesystem>

#include "io/single_file.h"
#include "tools/commands.h"
#include "tools/model_options.h"

namespace sd3::tools {

namespace {

struct ConvertOptions {
    ModelSpec spec;
    std::string to;
    std::string output;
};

std::pair<CLI::App*, CommandRunner> setup_convert(CLI::App& app) {
    auto opt = std::make_shared<ConvertOptions>();
    CLI::App* sub = app.add_subcommand("convert", "Write a model as a diffusers folder or a single-file checkpoint");
    sub->add_option("input", opt->spec.model, "diffusers SD3 folder or single-file checkpoint")->required();
    sub->add_option("--to", opt->to, "layout to write")->required()->check(CLI::IsMember({"diffusers", "single-file"}));
    sub->add_option("--output,-o", opt->output, "output folder (diffusers) or .safetensors file (single-file)")->required();
    add_model_options(sub, opt->spec, /*model_required=*/false);
    return {sub, [opt]() -> Status {
                if (std::filesystem::exists(opt->output) && opt->to == "single-file")
                    return make_error(ErrorCode::INVALID_ARGUMENT, opt->output, ": exists; choose a new file name");
                SD3_ASSIGN_OR_RETURN(ModelFolder model, open_model(opt->spec));
                return convert_model(model, opt->to == "diffusers" ? ConvertTarget::DIFFUSERS : ConvertTarget::SINGLE_FILE,
                                     opt->output);
            }};
}

SD3_COMMAND(85, setup_convert);

}  // namespace

}  // namespace sd3::tools
