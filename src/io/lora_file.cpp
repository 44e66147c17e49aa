// Reading and writing LoRA files in the diffusers/PEFT layout (io/lora_file.h).
#include "io/lora_file.h"

#include <nlohmann/json.hpp>
#include <set>

namespace sd3 {

namespace {

constexpr const char* kMetadataKey = "lora_adapter_metadata";  // diffusers loaders/lora_base.py

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// PEFT pattern keys (rank_pattern / alpha_pattern) match a module when equal to it or a dotted suffix of it.
bool pattern_matches(const std::string& module, const std::string& key) {
    return module == key || ends_with(module, "." + key);
}

// The LoraConfig fields of lora_adapter_metadata, with or without the "transformer." prefix.
struct AdapterMetadata {
    bool present = false;
    std::optional<float> lora_alpha;
    std::map<std::string, float> alpha_pattern;
};

Result<AdapterMetadata> parse_metadata(const std::map<std::string, std::string>& metadata, const std::string& origin) {
    AdapterMetadata out;
    auto it = metadata.find(kMetadataKey);
    if (it == metadata.end()) return out;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
        return make_error(ErrorCode::CORRUPT_FILE, origin, ": metadata \"", kMetadataKey, "\" is not JSON (", e.what(),
                          ")");
    }
    if (!j.is_object())
        return make_error(ErrorCode::CORRUPT_FILE, origin, ": metadata \"", kMetadataKey, "\" is not a JSON object");
    out.present = true;
    auto field = [&](const std::string& key) -> const nlohmann::json* {
        for (const std::string& k : {"transformer." + key, key})
            if (j.contains(k) && !j.at(k).is_null()) return &j.at(k);
        return nullptr;
    };
    try {
        if (const auto* a = field("lora_alpha")) out.lora_alpha = a->get<float>();
        if (const auto* p = field("alpha_pattern"))
            for (const auto& [k, v] : p->items()) out.alpha_pattern[k] = v.get<float>();
    } catch (const nlohmann::json::exception& e) {
        return make_error(ErrorCode::CORRUPT_FILE, origin, ": metadata \"", kMetadataKey, "\" has a mistyped field (",
                          e.what(), ")");
    }
    return out;
}

}  // namespace

Result<LoraSet> parse_diffusers_lora(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                                     const std::string& origin) {
    SD3_ASSIGN_OR_RETURN(AdapterMetadata meta, parse_metadata(metadata, origin));
    struct Parts {
        Tensor A, B;
        std::optional<float> alpha;
    };
    std::map<std::string, Parts> parts;
    std::vector<std::string> bad;
    for (const auto& [key, t] : tensors) {
        std::string k = key;
        if (starts_with(k, "transformer.")) k = k.substr(12);
        else if (starts_with(k, "base_model.model.")) k = k.substr(17);  // peft save_pretrained
        std::string module, kind;
        for (const char* suffix : {".lora_A.weight", ".lora_A.default.weight", ".lora_B.weight",
                                   ".lora_B.default.weight", ".alpha"}) {
            if (ends_with(k, suffix)) {
                module = k.substr(0, k.size() - std::string(suffix).size());
                kind = std::string(suffix).substr(1, 6);
                break;
            }
        }
        if (module.empty() || starts_with(key, "text_encoder")) {
            bad.push_back(key);
            continue;
        }
        Parts& p = parts[module];
        if (kind == "alpha") {
            if (t.numel() != 1) return make_error(ErrorCode::CORRUPT_FILE, origin, ": \"", key, "\" is not a scalar");
            p.alpha = static_cast<float>(t.to_float_vector()[0]);
            continue;
        }
        // Own f32 copies, so the LoraSet outlives the file mapping and can be modified.
        Tensor f = t.dtype() == DType::F32 ? t.clone() : t.to(DType::F32);
        if (f.dim() != 2)
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": \"", key, "\" has shape ", shape_str(f.shape()),
                              ", a LoRA matrix must be 2-D");
        Tensor& slot = kind == "lora_A" ? p.A : p.B;
        if (slot.defined())
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": two tensors for ", kind, " of \"", module, "\"");
        slot = f;
    }
    if (!bad.empty()) {
        std::string list;
        for (size_t i = 0; i < bad.size() && i < 10; ++i) list += "\n  " + bad[i];
        if (bad.size() > 10) list += str_cat("\n  ... and ", bad.size() - 10, " more");
        return make_error(ErrorCode::UNSUPPORTED, origin, ": ", bad.size(),
                          " key(s) are not diffusers/PEFT transformer LoRA weights "
                          "(expected transformer.<module>.lora_A.weight / lora_B.weight):",
                          list);
    }
    LoraSet set;
    for (auto& [module, p] : parts) {
        if (!p.A.defined() || !p.B.defined())
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": module \"", module, "\" has ",
                              p.A.defined() ? "lora_A but no lora_B" : "no lora_A", " weight");
        if (p.B.size(1) != p.A.size(0))
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": module \"", module, "\" has lora_A ",
                              shape_str(p.A.shape()), " and lora_B ", shape_str(p.B.shape()), " of different ranks");
        // Alpha, most specific first: a per-module .alpha tensor, the metadata's alpha_pattern, its lora_alpha,
        // else the rank (diffusers' get_peft_kwargs without metadata sets lora_alpha = r).
        float alpha = static_cast<float>(p.A.size(0));
        if (p.alpha) {
            alpha = *p.alpha;
        } else {
            bool found = false;
            for (const auto& [pat, a] : meta.alpha_pattern)
                if (pattern_matches(module, pat)) {
                    alpha = a;
                    found = true;
                    break;
                }
            if (!found && meta.lora_alpha) alpha = *meta.lora_alpha;
        }
        set.modules[module] = LoraModule{p.A, p.B, alpha};
    }
    if (set.modules.empty()) return make_error(ErrorCode::CORRUPT_FILE, origin, ": holds no LoRA weights");
    return set;
}

Result<LoraSet> read_lora_file(const std::string& path) {
    SD3_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
    NamedTensors tensors;
    for (const TensorInfo& info : file.tensors()) tensors.emplace_back(info.name, file.get(info));
    return parse_diffusers_lora(tensors, file.metadata(), path);
}

Status write_lora_file(const std::string& path, const LoraSet& set, const LoraWriteOptions& options) {
    if (set.modules.empty()) return make_error(ErrorCode::INVALID_ARGUMENT, "no LoRA modules to write to ", path);
    NamedTensors tensors;
    std::map<int64_t, int> rank_count;
    std::map<float, int> alpha_count;
    for (const auto& [module, m] : set.modules) {
        tensors.emplace_back(options.prefix + module + ".lora_A.weight", m.A.to(options.dtype));
        tensors.emplace_back(options.prefix + module + ".lora_B.weight", m.B.to(options.dtype));
        ++rank_count[m.rank()];
        ++alpha_count[m.alpha];
    }
    // PEFT's convention: the most common rank and alpha are r / lora_alpha; the others go into the patterns.
    auto most_common = [](const auto& counts) {
        auto best = counts.begin();
        for (auto it = counts.begin(); it != counts.end(); ++it)
            if (it->second > best->second) best = it;
        return best->first;
    };
    const int64_t r = most_common(rank_count);
    const float alpha = most_common(alpha_count);
    nlohmann::json rank_pattern = nlohmann::json::object(), alpha_pattern = nlohmann::json::object();
    nlohmann::json targets = nlohmann::json::array();
    std::set<std::string> target_set;
    for (const auto& [module, m] : set.modules) {
        if (m.rank() != r) rank_pattern[module] = m.rank();
        if (m.alpha != alpha) alpha_pattern[module] = m.alpha;
        target_set.insert(module);
    }
    for (const std::string& t : target_set) targets.push_back(t);
    nlohmann::json cfg = {{"transformer.r", r},
                          {"transformer.lora_alpha", alpha},
                          {"transformer.target_modules", targets},
                          {"transformer.rank_pattern", rank_pattern},
                          {"transformer.alpha_pattern", alpha_pattern}};
    std::map<std::string, std::string> metadata = {{"format", "pt"}, {kMetadataKey, cfg.dump()}};
    return write_safetensors(path, tensors, metadata).with_context("writing LoRA " + path);
}

}  // namespace sd3
