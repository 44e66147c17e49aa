// `sd3tune make-model --preset sd3-medium --random --output DIR`: a model folder of real shapes with random weights.
#include "io/model_presets.h"
#include "tools/commands.h"

namespace sd3::tools {

namespace {

struct MakeModelArgs {
    MakeModelOptions options;
    std::string dtype = "bf16";
    bool random = false;
};

std::pair<CLI::App*, CommandRunner> setup_make_model(CLI::App& app) {
    auto a = std::make_shared<MakeModelArgs>();
    CLI::App* sub = app.add_subcommand("make-model", "Write a model folder of real SD3 shapes with random weights (for benchmarks)");
    sub->add_option("--preset", a->options.preset, "sd3-medium, sd3.5-medium or tiny")->required();
    sub->add_flag("--random", a->random, "random weights (the only kind this command makes; required to say so)")->required();
    sub->add_option("--output", a->options.output_dir, "new folder to write")->required();
    sub->add_option("--tokenizers", a->options.tokenizers_dir,
                    "diffusers SD3 folder whose tokenizer folders are copied (e.g. tests/data/tiny-a/model)")->required();
    sub->add_option("--dtype", a->dtype, "weight dtype: bf16 (default), f16 or f32");
    sub->add_option("--seed", a->options.seed, "seed of the random weights");
    return {sub, [a]() -> Status {
                auto dt = dtype_from_name(a->dtype);
                if (!dt || (*dt != DType::BF16 && *dt != DType::F16 && *dt != DType::F32))
                    return make_error(ErrorCode::INVALID_ARGUMENT, "--dtype ", a->dtype, ": use bf16, f16 or f32");
                a->options.dtype = *dt;
                return make_model(a->options);
            }};
}

SD3_COMMAND(80, setup_make_model);

}  // namespace

}  // namespace sd3::tools
