// `sd3tune info PATH [--json]`: what a model folder or a .safetensors file holds.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/model_folder.h"
#include "io/model_info.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "tools/commands.h"

namespace sd3::tools {

namespace {

struct InfoOptions {
    std::string path;
    bool json = false;
    bool tensors = false;
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

std::string human_count(double n) {
    char buf[32];
    if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
    else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
    else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1f K", n / 1e3);
    else std::snprintf(buf, sizeof buf, "%.0f", n);
    return buf;
}

void print_model_table(const nlohmann::ordered_json& d) {
    std::printf("%s\n", d["path"].get<std::string>().c_str());
    for (const auto& c : d["components"]) {
        std::string line = c["name"].get<std::string>() + "  " + c["class"].get<std::string>();
        if (c.contains("parameters")) {
            std::string dtypes;
            for (auto it = c["dtypes"].begin(); it != c["dtypes"].end(); ++it) dtypes += (dtypes.empty() ? "" : "+") + it.key();
            line += "  " + human_count(c["parameters"].get<double>()) + " parameters, " + dtypes + ", " +
                    format_bytes(c["bytes"].get<double>());
        }
        std::printf("  %s\n", line.c_str());
        std::string cfg;
        for (auto it = c["config"].begin(); it != c["config"].end(); ++it) cfg += " " + it.key() + "=" + it.value().dump();
        if (!cfg.empty()) std::printf("     %s\n", cfg.c_str());
        if (c.contains("files")) {
            std::string files;
            for (const auto& f : c["files"]) files += " " + f.get<std::string>();
            std::printf("      files:%s\n", files.c_str());
        }
    }
}

Status info_folder(const InfoOptions& opt) {
    SD3_ASSIGN_OR_RETURN(ModelFolder model, ModelFolder::open(opt.path));
    const nlohmann::ordered_json d = describe_model(model);
    if (opt.json) std::printf("%s\n", d.dump(2).c_str());
    else print_model_table(d);
    return {};
}

std::pair<CLI::App*, CommandRunner> setup_info(CLI::App& app) {
    auto opt = std::make_shared<InfoOptions>();
    CLI::App* sub = app.add_subcommand("info", "Describe a model folder or a .safetensors file");
    sub->add_option("path", opt->path, "diffusers pipeline folder or .safetensors file")->required();
    sub->add_flag("--json", opt->json, "print JSON instead of a table");
    sub->add_flag("--tensors", opt->tensors, "for a .safetensors file: list its tensors and metadata even when it holds a model");
    return {sub, [opt]() -> Status {
                if (!std::filesystem::exists(opt->path))
                    return make_error(ErrorCode::NOT_FOUND, opt->path, ": no such file or folder");
                if (std::filesystem::is_directory(opt->path)) return info_folder(*opt);
                if (opt->tensors) return info_safetensors(*opt);
                SD3_ASSIGN_OR_RETURN(nlohmann::ordered_json d, describe_model_file(opt->path));  // null: no model
                if (d.is_null()) return info_safetensors(*opt);
                if (opt->json) std::printf("%s\n", d.dump(2).c_str());
                else print_model_table(d);
                if (!opt->json) std::printf("  layout: %s\n", d["summary"].get<std::string>().c_str());
                if (!opt->json) for (const auto& n : d["notes"]) std::printf("  note: %s\n", n.get<std::string>().c_str());
                return {};
            }};
}

SD3_COMMAND(90, setup_info);

}  // namespace

}  // namespace sd3::tools
