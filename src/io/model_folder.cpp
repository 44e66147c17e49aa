// ModelFolder::open for diffusers pipeline folders (model_index.json + one folder per component).
#include "io/model_folder.h"

#include <algorithm>
#include <filesystem>

#include "io/json_file.h"
#include "io/single_file.h"  // part_supply_hint

namespace sd3 {

namespace fs = std::filesystem;

namespace {

bool is_tokenizer(const std::string& class_name) { return class_name.find("Tokenizer") != std::string::npos; }
bool is_scheduler(const std::string& class_name) { return class_name.find("Scheduler") != std::string::npos; }

// The class a component's own config names: diffusers writes "_class_name", transformers "architectures".
std::string config_class(const nlohmann::json& config) {
    if (config.contains("_class_name") && config["_class_name"].is_string()) return config["_class_name"];
    if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
        config["architectures"][0].is_string())
        return config["architectures"][0];
    return "";
}

Status check_tokenizer_files(const Component& c) {
    const fs::path dir(c.dir);
    const bool has_json = fs::exists(dir / "tokenizer.json");
    if (c.class_name.rfind("CLIPTokenizer", 0) == 0) {
        if (has_json || (fs::exists(dir / "vocab.json") && fs::exists(dir / "merges.txt"))) return {};
        return make_error(ErrorCode::NOT_FOUND, c.dir, ": the CLIP tokenizer needs vocab.json and merges.txt (or tokenizer.json)");
    }
    if (c.class_name.rfind("T5Tokenizer", 0) == 0) {
        if (fs::exists(dir / "spiece.model")) return {};
        return make_error(ErrorCode::NOT_FOUND, c.dir, ": the T5 tokenizer needs spiece.model");
    }
    return make_error(ErrorCode::UNSUPPORTED, c.dir, ": tokenizer class ", c.class_name, " is not supported");
}

Result<Component> open_component(const fs::path& root, const std::string& name, const std::string& library,
                                 const std::string& class_name) {
    Component c;
    c.name = name;
    c.library = library;
    c.class_name = class_name;
    c.dir = (root / name).string();
    if (!fs::is_directory(c.dir))
        return make_error(ErrorCode::NOT_FOUND, (root / "model_index.json").string(), " lists \"", name,
                          "\" but the folder ", c.dir, " does not exist (an incomplete download?)");
    if (is_tokenizer(class_name)) {
        c.config_path = (fs::path(c.dir) / "tokenizer_config.json").string();
        if (fs::exists(c.config_path)) {
            SD3_ASSIGN_OR_RETURN(c.config, read_json_file(c.config_path));
        } else {
            c.config = nlohmann::json::object();
        }
        SD3_TRY(check_tokenizer_files(c));
        return c;
    }
    c.config_path = (fs::path(c.dir) / (is_scheduler(class_name) ? "scheduler_config.json" : "config.json")).string();
    SD3_ASSIGN_OR_RETURN(c.config, read_json_file(c.config_path));
    const std::string declared = config_class(c.config);
    if (!declared.empty() && declared != class_name)
        return make_error(ErrorCode::CORRUPT_FILE, c.config_path, " describes a ", declared, " but model_index.json says \"",
                          name, "\" is a ", class_name, "; the folder mixes parts of different models");
    if (is_scheduler(class_name)) return c;

    const std::vector<std::string> stems = library == "diffusers" ? std::vector<std::string>{"diffusion_pytorch_model"}
                                                                  : std::vector<std::string>{"model"};
    auto weights = SafetensorsSource::open(c.dir, stems);
    if (!weights.ok()) {
        if (fs::exists(fs::path(c.dir) / (stems[0] + ".bin")) || fs::exists(fs::path(c.dir) / "pytorch_model.bin"))
            return make_error(ErrorCode::UNSUPPORTED, c.dir,
                              ": holds PyTorch .bin weights; sd3tune reads safetensors only (convert them with "
                              "diffusers' save_pretrained(safe_serialization=True))");
        return weights.status();
    }
    c.weights = std::move(weights).value();
    return c;
}

}  // namespace

Result<ModelFolder> ModelFolder::open(const std::string& path) {
    if (!fs::exists(path)) return make_error(ErrorCode::NOT_FOUND, path, ": no such file or folder");
    if (!fs::is_directory(path))
        return make_error(ErrorCode::INVALID_ARGUMENT, path, ": not a folder (a diffusers pipeline folder has model_index.json)");
    const fs::path index_path = fs::path(path) / "model_index.json";
    if (!fs::exists(index_path))
        return make_error(ErrorCode::NOT_FOUND, path, ": no model_index.json; this is not a diffusers pipeline folder");
    SD3_ASSIGN_OR_RETURN(nlohmann::json index, read_json_file(index_path.string()));
    if (!index.is_object()) return make_error(ErrorCode::CORRUPT_FILE, index_path.string(), ": not a JSON object");

    ModelFolder folder;
    folder.path_ = path;
    for (auto it = index.begin(); it != index.end(); ++it) {
        if (it.key().empty() || it.key()[0] == '_') continue;
        const nlohmann::json& v = it.value();
        if (!v.is_array() || v.size() != 2)
            return make_error(ErrorCode::CORRUPT_FILE, index_path.string(), ": entry \"", it.key(),
                              "\" must be [library, class]");
        if (v[0].is_null() || v[1].is_null()) continue;  // an optional part this pipeline does not have
        if (!v[0].is_string() || !v[1].is_string())
            return make_error(ErrorCode::CORRUPT_FILE, index_path.string(), ": entry \"", it.key(),
                              "\" must hold two strings");
        SD3_ASSIGN_OR_RETURN(Component c, open_component(path, it.key(), v[0].get<std::string>(), v[1].get<std::string>()));
        folder.components_.push_back(std::move(c));
    }
    // List components in the pipeline's own order (model_index.json is alphabetical).
    auto rank = [](const Component& c) {
        auto it = std::find(kSD3Components.begin(), kSD3Components.end(), c.name);
        return it - kSD3Components.begin();
    };
    std::stable_sort(folder.components_.begin(), folder.components_.end(),
                     [&](const Component& a, const Component& b) { return rank(a) < rank(b); });
    return folder;
}

const Component* ModelFolder::find(const std::string& name) const {
    for (const Component& c : components_)
        if (c.name == name) return &c;
    return nullptr;
}

Result<const Component*> ModelFolder::require(const std::string& name) const {
    if (const Component* c = find(name)) return c;
    return make_error(ErrorCode::NOT_FOUND, path_, ": the model has no ", name, ", which this job needs; ",
                      part_supply_hint(name));
}

}  // namespace sd3
