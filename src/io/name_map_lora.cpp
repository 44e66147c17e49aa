// LoRA key dialects (name_map.h): kohya's lora_unet_* and ComfyUI's diffusion_model.* keys over Stability module
// paths, mapped onto the diffusers-keyed LoraSet of io/lora_file through the same MMDiT rules as the weights.
#include <algorithm>
#include <cstring>
#include <set>

#include "core/check.h"
#include "io/name_map.h"

namespace sd3 {

std::string_view lora_dialect_name(LoraDialect d) {
    switch (d) {
        case LoraDialect::DIFFUSERS: return "diffusers";
        case LoraDialect::KOHYA: return "kohya";
        case LoraDialect::COMFYUI: return "comfyui";
    }
    return "?";
}

std::optional<LoraDialect> lora_dialect_from_name(std::string_view name) {
    for (LoraDialect d : {LoraDialect::DIFFUSERS, LoraDialect::KOHYA, LoraDialect::COMFYUI})
        if (lora_dialect_name(d) == name) return d;
    return std::nullopt;
}

namespace {

constexpr std::string_view kKohyaPrefix = "lora_unet_";
constexpr std::string_view kComfyPrefix = "diffusion_model.";

std::string underscored(std::string s) {
    std::replace(s.begin(), s.end(), '.', '_');
    return s;
}

std::string list_keys(const std::vector<std::string>& keys, size_t max = 10) {
    std::string out;
    for (size_t i = 0; i < keys.size() && i < max; ++i) out += "\n  " + keys[i];
    if (keys.size() > max) out += str_cat("\n  ... and ", keys.size() - max, " more");
    return out;
}

// Every Stability MMDiT module path a LoRA can adapt (the rules' stored patterns without their parameter
// segment), for blocks 0..blocks-1, keyed by kohya's underscored form: underscores cannot be turned back into
// dots (x_block, adaLN_modulation), so kohya names are looked up, not parsed.
std::map<std::string, std::string> kohya_modules(int blocks) {
    std::map<std::string, std::string> out;
    for (const NameRule& r : stability_rules(ComponentKind::MMDIT)) {
        const std::string pattern(r.stored);
        const size_t dot = pattern.rfind('.');
        if (dot == std::string::npos) continue;  // pos_embed: a buffer, not a layer
        const std::string module = pattern.substr(0, dot);
        if (module.find("{i}") == std::string::npos) {
            out[underscored(module)] = module;
            continue;
        }
        for (int i = 0; i < blocks; ++i) {
            std::string m = module;
            m.replace(m.find("{i}"), 3, std::to_string(i));
            out[underscored(m)] = m;
        }
    }
    return out;
}

struct RawLora {
    Tensor down, up;  // [r, in], [out, r] f32
    std::optional<float> alpha;
};

Tensor f32_copy(const Tensor& t) { return t.dtype() == DType::F32 ? t.clone() : t.to(DType::F32); }

bool all_zero(const Tensor& t) {  // t: f32, any strides
    const std::vector<float> v = t.to_float_vector();
    return std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; });
}

Tensor swap_row_halves(const Tensor& t) {  // [2h, r] f32 contiguous
    const Tensor c = t.contiguous();
    Tensor out = Tensor::empty(c.shape(), c.dtype());
    const size_t half = c.nbytes() / 2;
    std::memcpy(out.raw(), static_cast<const char*>(c.raw()) + half, half);
    std::memcpy(static_cast<char*>(out.raw()) + half, c.raw(), half);
    return out;
}

// Splits a LoRA on a fused tensor into its `parts` row blocks. A block-diagonal lora_up (as written below)
// gives each part its own rank-R/parts LoRA back; otherwise every part shares lora_down as A.
std::vector<LoraModule> split_fused(const RawLora& raw, int parts) {
    const int64_t R = raw.down.size(0), rows = raw.up.size(0) / parts;
    const float alpha = raw.alpha.value_or(static_cast<float>(R));
    std::vector<LoraModule> out;
    bool block_diagonal = R % parts == 0;
    const int64_t r = R / parts;
    for (int p = 0; p < parts && block_diagonal; ++p) {
        const Tensor rows_p = raw.up.slice(0, p * rows, (p + 1) * rows);  // [rows, R]
        if (p > 0 && !all_zero(rows_p.slice(1, 0, p * r))) block_diagonal = false;
        if (p < parts - 1 && !all_zero(rows_p.slice(1, (p + 1) * r, R))) block_diagonal = false;
    }
    for (int p = 0; p < parts; ++p) {
        const Tensor rows_p = raw.up.slice(0, p * rows, (p + 1) * rows);
        if (block_diagonal)
            out.push_back(LoraModule{raw.down.slice(0, p * r, (p + 1) * r).clone(),
                                     rows_p.slice(1, p * r, (p + 1) * r).clone(), alpha / static_cast<float>(parts)});
        else
            out.push_back(LoraModule{raw.down.clone(), rows_p.clone(), alpha});
    }
    return out;
}

Result<LoraSet> parse_stability_lora(const NamedTensors& tensors, LoraDialect dialect, const std::string& origin,
                                     int mmdit_layers) {
    // Group the keys by module.
    std::map<std::string, RawLora> raw;
    std::vector<std::string> bad;
    int blocks = 0;
    for (const auto& [key, t] : tensors) {
        const std::string_view prefix = dialect == LoraDialect::KOHYA ? kKohyaPrefix : kComfyPrefix;
        std::string module, kind;
        if (key.starts_with(prefix)) {
            for (const char* suffix : {".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha"}) {
                if (key.ends_with(suffix)) {
                    module = key.substr(prefix.size(), key.size() - prefix.size() - std::strlen(suffix));
                    kind = suffix;
                    break;
                }
            }
        }
        if (module.empty()) {
            bad.push_back(key);
            continue;
        }
        RawLora& r = raw[module];
        if (kind == ".alpha") {
            if (t.numel() != 1) return make_error(ErrorCode::CORRUPT_FILE, origin, ": \"", key, "\" is not a scalar");
            r.alpha = static_cast<float>(t.to_float_vector()[0]);
        } else {
            Tensor& slot = (kind == ".lora_down.weight" || kind == ".lora_A.weight") ? r.down : r.up;
            if (slot.defined()) return make_error(ErrorCode::CORRUPT_FILE, origin, ": two tensors for \"", key, "\"");
            if (t.dim() != 2)
                return make_error(ErrorCode::UNSUPPORTED, origin, ": \"", key, "\" has shape ", shape_str(t.shape()),
                                  "; only LoRAs on Linear layers (2-D) are supported");
            slot = f32_copy(t);
        }
    }
    // kohya names are resolved through the table of module paths.
    if (dialect == LoraDialect::KOHYA) {
        for (const auto& [module, r] : raw) {
            if (!module.starts_with("joint_blocks_")) continue;
            const size_t end = module.find('_', 13);
            blocks = std::max(blocks, std::atoi(module.substr(13, end - 13).c_str()) + 1);
        }
        const auto table = kohya_modules(blocks);
        std::map<std::string, RawLora> resolved;
        for (auto& [module, r] : raw) {
            auto it = table.find(module);
            if (it == table.end()) {
                bad.push_back(std::string(kKohyaPrefix) + module);
                continue;
            }
            resolved[it->second] = std::move(r);
        }
        raw = std::move(resolved);
    }
    if (!bad.empty())
        return make_error(ErrorCode::UNSUPPORTED, origin, ": ", bad.size(), " key(s) that are not ", lora_dialect_name(dialect),
                          " MMDiT LoRA weights (", dialect == LoraDialect::KOHYA ? "lora_unet_<module>" : "diffusion_model.<module>",
                          ".lora_down.weight / .lora_up.weight / .alpha):", list_keys(bad));
    LoraSet set;
    for (const auto& [module, r] : raw) {
        if (!r.down.defined() || !r.up.defined())
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": module \"", module, "\" has ",
                              r.down.defined() ? "lora_down but no lora_up" : "no lora_down", " weight");
        if (r.up.size(1) != r.down.size(0))
            return make_error(ErrorCode::CORRUPT_FILE, origin, ": module \"", module, "\" has lora_down ",
                              shape_str(r.down.shape()), " and lora_up ", shape_str(r.up.shape()), " of different ranks");
        if (module.find("context_block.adaLN_modulation") != std::string::npos && mmdit_layers <= 0)
            return make_error(ErrorCode::INVALID_ARGUMENT, origin, ": \"", module, "\" adapts a context adaLN, whose "
                              "halves are swapped in the last block only; the model's layer count is needed to map it");
        const std::vector<RuleMatch> hits = stored_to_diffusers(ComponentKind::MMDIT, module + ".weight", mmdit_layers);
        if (hits.empty() || !hits[0].name.ends_with(".weight"))
            return make_error(ErrorCode::UNSUPPORTED, origin, ": no MMDiT layer \"", module, "\" to adapt");
        auto strip = [](const std::string& n) { return n.substr(0, n.size() - 7); };  // drop ".weight"
        switch (hits[0].op) {
            case MapOp::ROW_CHUNK: {
                if (r.up.size(0) % hits[0].parts != 0)
                    return make_error(ErrorCode::CORRUPT_FILE, origin, ": \"", module, "\" lora_up has ", r.up.size(0),
                                      " rows, not divisible into q, k, v");
                const std::vector<LoraModule> parts = split_fused(r, hits[0].parts);
                for (const RuleMatch& h : hits) set.modules[strip(h.name)] = parts[h.part];
                break;
            }
            case MapOp::SWAP_HALVES:
                set.modules[strip(hits[0].name)] =
                    LoraModule{r.down, swap_row_halves(r.up), r.alpha.value_or(static_cast<float>(r.down.size(0)))};
                break;
            default:
                set.modules[strip(hits[0].name)] =
                    LoraModule{r.down, r.up, r.alpha.value_or(static_cast<float>(r.down.size(0)))};
        }
    }
    if (set.modules.empty()) return make_error(ErrorCode::CORRUPT_FILE, origin, ": holds no LoRA weights");
    return set;
}

}  // namespace

LoraDialect detect_lora_dialect(const NamedTensors& tensors) {
    for (const auto& [key, t] : tensors) {
        if (key.starts_with(kKohyaPrefix)) return LoraDialect::KOHYA;
        if (key.starts_with(kComfyPrefix)) return LoraDialect::COMFYUI;
    }
    return LoraDialect::DIFFUSERS;
}

Result<LoraSet> parse_lora(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                           const std::string& origin, int mmdit_layers) {
    const LoraDialect d = detect_lora_dialect(tensors);
    if (d == LoraDialect::DIFFUSERS) return parse_diffusers_lora(tensors, metadata, origin);
    return parse_stability_lora(tensors, d, origin, mmdit_layers);
}

Result<LoraSet> read_lora_any(const std::string& path, int mmdit_layers) {
    SD3_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
    NamedTensors tensors;
    for (const TensorInfo& info : file.tensors()) tensors.emplace_back(info.name, file.get(info));
    return parse_lora(tensors, file.metadata(), path, mmdit_layers);
}

Result<NamedTensors> lora_to_stability(const LoraSet& set, LoraDialect dialect, DType dtype, int mmdit_layers) {
    SD3_ASSERT(dialect != LoraDialect::DIFFUSERS, "lora_to_stability writes kohya or ComfyUI keys");
    struct Group {
        MapOp op = MapOp::COPY;
        std::vector<const LoraModule*> parts;
    };
    std::map<std::string, Group> groups;  // by Stability module path
    for (const auto& [module, m] : set.modules) {
        if (module.find(".norm1_context.linear") != std::string::npos && mmdit_layers <= 0)
            return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA module \"", module, "\": a context adaLN's halves are "
                              "swapped in the last block only; the model's layer count is needed to write it");
        const auto hit = diffusers_to_stored(ComponentKind::MMDIT, module + ".weight", mmdit_layers);
        if (!hit || !hit->name.ends_with(".weight"))
            return make_error(ErrorCode::UNSUPPORTED, "LoRA module \"", module, "\" has no name in the ",
                              lora_dialect_name(dialect), " dialect");
        Group& g = groups[hit->name.substr(0, hit->name.size() - 7)];
        g.op = hit->op;
        g.parts.resize(hit->parts, nullptr);
        g.parts[hit->part] = &m;
    }
    NamedTensors out;
    for (const auto& [module, g] : groups) {
        Tensor down, up;
        float alpha = 0;
        if (g.op == MapOp::ROW_CHUNK) {
            // Stacked A, block-diagonal B: [B_q 0 0; 0 B_k 0; 0 0 B_v]·[A_q; A_k; A_v] = [ΔW_q; ΔW_k; ΔW_v].
            int64_t rank = 0, rows = -1, in = -1;
            std::set<float> scales;
            for (const LoraModule* p : g.parts) {
                if (!p) continue;
                rank += p->rank();
                if (rows >= 0 && (p->B.size(0) != rows || p->A.size(1) != in))
                    return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA parts of \"", module, "\" differ in shape");
                rows = p->B.size(0);
                in = p->A.size(1);
                scales.insert(p->alpha / static_cast<float>(p->rank()));
            }
            const bool same_scale = scales.size() == 1;
            down = Tensor::zeros({rank, in});                                               // [R, in]
            up = Tensor::zeros({rows * static_cast<int64_t>(g.parts.size()), rank});         // [parts*out, R]
            int64_t col = 0;
            for (size_t k = 0; k < g.parts.size(); ++k) {
                const LoraModule* p = g.parts[k];
                if (!p) continue;
                const int64_t r = p->rank();
                down.slice(0, col, col + r).copy_from(p->A);
                Tensor block = up.slice(0, static_cast<int64_t>(k) * rows, static_cast<int64_t>(k + 1) * rows).slice(1, col, col + r);
                block.copy_from(p->B);
                if (!same_scale) {  // fold each part's own alpha/r into its block; the fused LoRA then has scale 1
                    const float s = p->alpha / static_cast<float>(r);
                    for (int64_t i = 0; i < rows; ++i)
                        for (int64_t j = 0; j < r; ++j)
                            block.data<float>()[i * block.stride(0) + j] *= s;
                }
                col += r;
            }
            // Keep the scale alpha/rank. With every part present at one rank, alpha = parts * alpha_part exactly,
            // which reading divides by the part count again.
            const LoraModule* first = *std::find_if(g.parts.begin(), g.parts.end(), [](auto* p) { return p != nullptr; });
            if (!same_scale)
                alpha = static_cast<float>(rank);
            else if (first->rank() * static_cast<int64_t>(g.parts.size()) == rank)
                alpha = first->alpha * static_cast<float>(g.parts.size());
            else
                alpha = *scales.begin() * static_cast<float>(rank);
        } else {
            const LoraModule& m = *g.parts[0];
            down = m.A;
            up = g.op == MapOp::SWAP_HALVES ? swap_row_halves(m.B.to(DType::F32)) : m.B;
            alpha = m.alpha;
        }
        const std::string key = dialect == LoraDialect::KOHYA ? str_cat(kKohyaPrefix, underscored(module))
                                                              : str_cat(kComfyPrefix, module);
        out.emplace_back(key + ".lora_down.weight", down.to(dtype));
        out.emplace_back(key + ".lora_up.weight", up.to(dtype));
        out.emplace_back(key + ".alpha", Tensor::full({}, alpha, DType::F32));
    }
    return out;
}

Status write_lora(const std::string& path, const LoraSet& set, LoraDialect dialect, DType dtype, int mmdit_layers) {
    if (dialect == LoraDialect::DIFFUSERS) {
        LoraWriteOptions opt;
        opt.dtype = dtype;
        return write_lora_file(path, set, opt);
    }
    SD3_ASSIGN_OR_RETURN(NamedTensors tensors, lora_to_stability(set, dialect, dtype, mmdit_layers));
    return write_safetensors(path, tensors, {{"format", "pt"}}).with_context("writing LoRA " + path);
}

}  // namespace sd3
