// `sd3tune info PATH [--json]`: what a model folder or a .safetensors file holds.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "tools/commands.h"

namespace sd3::tools {

namespace {

struct InfoOptions {
    std::string path;
    bool json = false;
};

Status info_safetensors(const InfoOptions& opt) {
    SD3_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(opt.path));
    if (opt.json) {
        nlohmann::ordered_json out;
        out["file"] = opt.path;
        out["metadata"] = f.metadata();
        out["tensors"] = nlohmann::ordered_json::array();
        for (const TensorInfo& t : f.tensors())
            out["tensors"].push_back({{"name", t.name}, {"dtype", std::string(dtype_safetensors_name(t.dtype))}, {"shape", t.shape}});
        std::printf("%s\n", out.dump(2).c_str());
        return {};
    }
    std::printf("%s: %zu tensors, %zu bytes\n", opt.path.c_str(), f.tensors().size(), f.file_bytes());
    for (const auto& [k, v] : f.metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
    for (const TensorInfo& t : f.tensors())
        std::printf("  %-60s %-8s %s\n", t.name.c_str(), std::string(dtype_safetensors_name(t.dtype)).c_str(),
                    shape_str(t.shape).c_str());
    return {};
}

std::pair<CLI::App*, CommandRunner> setup_info(CLI::App& app) {
    auto opt = std::make_shared<InfoOptions>();
    CLI::App* sub = app.add_subcommand("info", "Describe a model folder or a .safetensors file");
    sub->add_option("path", opt->path, "diffusers pipeline folder or .safetensors file")->required();
    sub->add_flag("--json", opt->json, "print JSON instead of a table");
    return {sub, [opt]() -> Status {
                if (!std::filesystem::exists(opt->path))
                    return make_error(ErrorCode::NOT_FOUND, opt->path, ": no such file or folder");
                return info_safetensors(*opt);
            }};
}

SD3_COMMAND(90, setup_info);

}  // namespace

}  // namespace sd3::tools
