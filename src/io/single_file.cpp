// Layout detection, MappedSource, and open_model: from a folder, a single file or component files to one
// ModelFolder. Name rules: io/name_map. Config derivation: single_file_config.cpp. Writing: single_file_convert.cpp.
#include "io/single_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "core/log.h"
#include "io/json_file.h"
#include "io/model_info.h"

namespace sd3 {

namespace fs = std::filesystem;

std::string_view model_layout_name(ModelLayout layout) {
    switch (layout) {
        case ModelLayout::DIFFUSERS_FOLDER: return "diffusers folder";
        case ModelLayout::SINGLE_FILE: return "Stability single file";
        case ModelLayout::COMPONENT_FILE: return "component file";
        case ModelLayout::NOT_A_MODEL: return "not a model";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------------------------
// Layout detection
// ---------------------------------------------------------------------------------------------------------------

namespace {

// A tensor whose presence identifies a component stored without prefix, and in which naming.
struct Marker {
    std::string_view name;
    ComponentKind kind;
    bool diffusers_names;
    std::string_view prefix;
};
const std::vector<Marker>& markers() {
    static const std::vector<Marker> m = {
        {"joint_blocks.0.x_block.attn.qkv.weight", ComponentKind::MMDIT, false, ""},
        {"diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", ComponentKind::MMDIT, false, "diffusion_model."},
        {"transformer_blocks.0.attn.to_q.weight", ComponentKind::MMDIT, true, ""},
        {"encoder.down.0.block.0.conv1.weight", ComponentKind::VAE, false, ""},
        {"encoder.down_blocks.0.resnets.0.conv1.weight", ComponentKind::VAE, true, ""},
        {"text_model.embeddings.token_embedding.weight", ComponentKind::CLIP, true, ""},
        {"encoder.block.0.layer.0.SelfAttention.q.weight", ComponentKind::T5, true, ""},
    };
    return m;
}

std::string examples(const std::vector<std::string>& names, size_t max = 5) {
    std::string out;
    for (size_t i = 0; i < names.size() && i < max; ++i) out += "\n  " + names[i];
    if (names.size() > max) out += str_cat("\n  ... (", names.size(), " tensors)");
    return out;
}

std::string pretty_component(const std::string& c) {
    if (c == "transformer") return "MMDiT";
    if (c == "vae") return "VAE";
    if (c == "text_encoder") return "CLIP-L";
    if (c == "text_encoder_2") return "CLIP-G";
    if (c == "text_encoder_3") return "T5-XXL";
    return c;
}

}  // namespace

Result<DetectedLayout> detect_layout(const std::vector<std::string>& names) {
    DetectedLayout d;
    std::vector<std::string> present;
    for (const StabilityPrefix& p : stability_prefixes())
        if (std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n.starts_with(p.prefix); }))
            present.emplace_back(p.component);
    if (!present.empty()) {
        d.layout = ModelLayout::SINGLE_FILE;
        d.components = present;
        std::string parts;
        for (const std::string& c : present) parts += (parts.empty() ? "" : ", ") + pretty_component(c);
        d.summary = str_cat("Stability single-file checkpoint with ", parts);
        return d;
    }
    std::vector<const Marker*> hits;
    for (const Marker& m : markers())
        if (std::find(names.begin(), names.end(), m.name) != names.end()) hits.push_back(&m);
    if (hits.empty()) return d;  // NOT_A_MODEL
    if (hits.size() > 1) {
        std::string kinds;
        for (const Marker* m : hits) kinds += str_cat(kinds.empty() ? "" : ", ", component_kind_name(m->kind));
        return make_error(ErrorCode::CORRUPT_FILE, "the tensors mix several components without the prefixes of a "
                          "single-file checkpoint (", kinds, "); store each in its own file or use the single-file "
                          "prefixes:", examples(names));
    }
    d.layout = ModelLayout::COMPONENT_FILE;
    d.kind = hits[0]->kind;
    d.diffusers_names = hits[0]->diffusers_names;
    d.prefix = std::string(hits[0]->prefix);
    d.summary = str_cat(component_kind_name(d.kind), " on its own, in ",
                        d.diffusers_names ? (d.kind == ComponentKind::CLIP || d.kind == ComponentKind::T5
                                                 ? "transformers naming"
                                                 : "diffusers naming")
                                          : (d.kind == ComponentKind::VAE ? "LDM naming" : "Stability naming"));
    return d;
}

// ---------------------------------------------------------------------------------------------------------------
// MappedSource
// ---------------------------------------------------------------------------------------------------------------

Result<std::shared_ptr<MappedSource>> MappedSource::create(std::shared_ptr<const TensorSource> stored,
                                                           ComponentMapping mapping) {
    auto src = std::shared_ptr<MappedSource>(new MappedSource());
    src->stored_ = std::move(stored);
    std::vector<std::string> bad;
    for (const TensorMapping& t : mapping.tensors) {
        auto m = src->stored_->meta(t.stored);
        SD3_ASSERT(m.has_value(), "mapping names ", t.stored, " which the stored source lacks");
        TensorMeta meta = *m;
        const std::string where = str_cat(t.stored, " ", shape_str(meta.shape));
        switch (t.op) {
            case MapOp::COPY:
            case MapOp::IGNORE: break;
            case MapOp::ROW_CHUNK:
                if (meta.shape.empty() || meta.shape[0] % t.parts != 0) {
                    bad.push_back(str_cat(where, ": rows not divisible into ", t.parts, " parts (fused q, k, v)"));
                    continue;
                }
                meta.shape[0] /= t.parts;
                break;
            case MapOp::SWAP_HALVES:
                if (meta.shape.empty() || meta.shape[0] % 2 != 0) {
                    bad.push_back(str_cat(where, ": an odd number of rows cannot hold (shift, scale) halves"));
                    continue;
                }
                break;
            case MapOp::CONV1X1_TO_LINEAR:
                if (meta.shape.size() != 4 || meta.shape[2] != 1 || meta.shape[3] != 1) {
                    bad.push_back(str_cat(where, ": expected a 1x1 convolution [out, in, 1, 1]"));
                    continue;
                }
                meta.shape.resize(2);
                break;
        }
        src->entries_[t.diffusers] = Entry{t, meta, Tensor()};
    }
    if (!bad.empty()) {
        std::string list;
        for (const std::string& b : bad) list += "\n  " + b;
        return make_error(ErrorCode::CORRUPT_FILE, src->stored_->origin(), ": ", bad.size(),
                          " tensor(s) of the wrong shape for their mapping:", list);
    }
    src->mapping_ = std::move(mapping);
    return src;
}

std::vector<std::string> MappedSource::names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
}

std::optional<TensorMeta> MappedSource::meta(std::string_view name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) return std::nullopt;
    return it->second.meta;
}

Result<Tensor> MappedSource::get(std::string_view name) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
        return make_error(ErrorCode::NOT_FOUND, origin(), ": no tensor \"", name, "\"");
    const Entry& e = it->second;
    if (e.synthesized.defined()) return e.synthesized;
    SD3_ASSIGN_OR_RETURN(Tensor t, stored_->get(e.map.stored));
    switch (e.map.op) {
        case MapOp::COPY:
        case MapOp::IGNORE: return t;
        case MapOp::ROW_CHUNK: {
            const int64_t rows = e.meta.shape[0];
            return t.slice(0, e.map.part * rows, (e.map.part + 1) * rows);  // a view: no copy of the fused tensor
        }
        case MapOp::CONV1X1_TO_LINEAR: return t.contiguous().view(e.meta.shape);
        case MapOp::SWAP_HALVES: {
            // Byte copies keep every value bit-exact whatever the dtype (fp8, fp16, ...).
            const Tensor c = t.contiguous();
            Tensor out = Tensor::empty(e.meta.shape, c.dtype());
            const size_t half = c.nbytes() / 2;
            std::memcpy(out.raw(), static_cast<const char*>(c.raw()) + half, half);
            std::memcpy(static_cast<char*>(out.raw()) + half, c.raw(), half);
            return out;
        }
    }
    return make_error(ErrorCode::INTERNAL, "unknown map op");
}

std::string MappedSource::origin() const {
    return mapping_.prefix.empty() ? stored_->origin() : str_cat(stored_->origin(), " [", mapping_.prefix, "*]");
}

void MappedSource::add_synthesized(const std::string& name, Tensor value, const std::string& why) {
    TensorMapping m;
    m.diffusers = name;
    m.stored = "";  // none: see why
    entries_[name] = Entry{m, TensorMeta{value.dtype(), value.shape()}, value};
    log_info(origin(), ": ", name, " ", why);
}

// ---------------------------------------------------------------------------------------------------------------
// open_model
// ---------------------------------------------------------------------------------------------------------------

std::string part_supply_hint(const std::string& component) {
    if (component == "transformer")
        return "give --model a diffusers SD3 folder or a single-file checkpoint (sd3_medium*.safetensors)";
    if (component == "vae") return "use --vae FILE, or a checkpoint that includes the VAE (first_stage_model.*)";
    if (component == "text_encoder")
        return "use --clip-l FILE (clip_l.safetensors), or a checkpoint that includes the CLIPs "
               "(sd3_medium_incl_clips*.safetensors)";
    if (component == "text_encoder_2")
        return "use --clip-g FILE (clip_g.safetensors), or a checkpoint that includes the CLIPs "
               "(sd3_medium_incl_clips*.safetensors)";
    if (component == "text_encoder_3")
        return "use --t5 FILE (t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors), or a checkpoint that "
               "includes T5 (sd3_medium_incl_clips_t5xxl*.safetensors)";
    if (component.starts_with("tokenizer"))
        return "use --tokenizers DIR: a diffusers SD3 folder (e.g. a download of "
               "stabilityai/stable-diffusion-3-medium-diffusers; only its tokenizer folders are read) or any folder "
               "holding tokenizer/ and tokenizer_2/ (vocab.json, merges.txt, tokenizer_config.json) and tokenizer_3/ "
               "(spiece.model, tokenizer_config.json); single-file checkpoints carry no tokenizers";
    return "use a complete SD3 diffusers folder";
}

namespace {

constexpr std::string_view kConfigMetaPrefix = "sd3tune.config.";

const std::vector<std::string>& tokenizer_names() {
    static const std::vector<std::string> n = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    return n;
}

// Derives (or, when the file's metadata holds one written by `sd3tune convert`, reads) a component's config, and
// checks the weights against it.
Result<Component> make_component(const std::string& name, ComponentKind kind, std::shared_ptr<const TensorSource> src,
                                 const std::map<std::string, std::string>& metadata, const std::string& file,
                                 std::vector<std::string>& notes) {
    Component c;
    c.name = name;
    std::tie(c.class_name, c.library) = component_class(kind);
    auto derived = derive_config(kind, name, *src);
    if (!derived.ok()) return derived.status().with_context(str_cat("the ", pretty_component(name), " in ", file));
    auto stored = metadata.find(std::string(kConfigMetaPrefix) + name);
    if (stored != metadata.end()) {
        nlohmann::json cfg = nlohmann::json::parse(stored->second, nullptr, false);
        if (cfg.is_discarded() || !cfg.is_object())
            return make_error(ErrorCode::CORRUPT_FILE, file, ": metadata ", stored->first, " is not a JSON object");
        // Shape-determined values must agree with the weights.
        for (auto it = derived->config.begin(); it != derived->config.end(); ++it) {
            static const std::set<std::string> conventions = {"sample_size", "norm_num_groups", "scaling_factor",
                                                              "shift_factor", "bos_token_id", "eos_token_id",
                                                              "pad_token_id", "attention_head_dim", "num_attention_heads",
                                                              "hidden_act", "force_upcast", "dropout_rate",
                                                              "attention_dropout", "layer_norm_eps", "layer_norm_epsilon",
                                                              "relative_attention_max_distance", "architectures",
                                                              "model_type", "is_encoder_decoder", "latents_mean",
                                                              "latents_std", "act_fn"};
            if (conventions.count(it.key()) || !cfg.contains(it.key())) continue;
            if (cfg[it.key()] != it.value())
                return make_error(ErrorCode::CORRUPT_FILE, file, ": the stored ", name, " config says ", it.key(), "=",
                                  cfg[it.key()].dump(), " but the weights imply ", it.value().dump());
        }
        c.config = std::move(cfg);
        c.config_path = str_cat(file, " (__metadata__ ", stored->first, ")");
        notes.push_back(str_cat(name, ": config from the file's metadata"));
    } else {
        c.config = std::move(derived->config);
        c.config_path = str_cat("derived from weight shapes in ", file);
        for (const std::string& n : derived->notes) notes.push_back(str_cat(name, ": ", n));
    }
    c.weights = std::move(src);
    return c;
}

// Stability files carry no CLIP-L projection; diffusers then uses eye(hidden) (sd3-architecture.md §3.4).
void add_clip_l_projection(MappedSource& src, std::vector<std::string>& notes) {
    if (src.meta("text_projection.weight")) return;
    auto tok = src.meta("text_model.embeddings.token_embedding.weight");
    if (!tok || tok->shape.size() != 2) return;  // derive_config reports what is wrong
    const int64_t h = tok->shape[1];
    Tensor eye = Tensor::zeros({h, h}, DType::F32);  // [H, H]
    for (int64_t i = 0; i < h; ++i) eye.data<float>()[i * h + i] = 1.0f;
    src.add_synthesized("text_projection.weight", eye.to(tok->dtype),
                        "is not stored; using the identity as diffusers does for CLIP-L in single files");
    notes.push_back("text_encoder: text_projection.weight = identity (not stored in the file)");
}

// The components in `path` (a single file, shards index, or component file). `slot` (may be "") is the pipeline
// component the caller wants from it (--clip-l gives "text_encoder"); for a single file only that one is taken.
Result<std::vector<Component>> open_file_components(const std::string& path, const std::string& slot,
                                                    const std::string& option, ModelOrigin& origin) {
    if (!fs::exists(path))
        return make_error(ErrorCode::NOT_FOUND, path, ": no such file", option.empty() ? "" : str_cat(" (", option, ")"));
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<TensorSource> file, SafetensorsSource::open(path));
    const auto* sts = dynamic_cast<const SafetensorsSource*>(file.get());
    const std::map<std::string, std::string> metadata = sts ? sts->weight_set().metadata() : std::map<std::string, std::string>{};
    const std::vector<std::string> names = file->names();
    auto detected = detect_layout(names);
    if (!detected.ok()) return detected.status().with_context(path);
    const DetectedLayout& d = *detected;
    std::vector<Component> out;
    if (d.layout == ModelLayout::NOT_A_MODEL)
        return make_error(ErrorCode::INVALID_ARGUMENT, path, ": holds no SD3 model weights (tensors like",
                          examples(names, 3), ")");
    for (const std::string& n : names)
        if (n.ends_with(".scale_weight") || n.ends_with("scaled_fp8"))
            return make_error(ErrorCode::UNSUPPORTED, path, ": a \"scaled fp8\" file (", n, ") with per-tensor scales; "
                              "sd3tune reads plain-cast fp8 files (t5xxl_fp8_e4m3fn.safetensors) and fp16/bf16/fp32");
    if (origin.layout == ModelLayout::NOT_A_MODEL) {
        origin.layout = d.layout;
        origin.summary = d.summary;
    } else {
        origin.notes.push_back(str_cat(option, " ", path, ": ", d.summary));
    }
    if (d.layout == ModelLayout::SINGLE_FILE) {
        auto mapped = map_stability_file(names);
        if (!mapped.ok()) return mapped.status().with_context(path);
        std::vector<ComponentMapping> maps = std::move(mapped).value();
        for (ComponentMapping& m : maps) {
            if (!slot.empty() && m.component != slot) continue;
            for (const std::string& ig : m.ignored) origin.notes.push_back(str_cat(m.component, ": ignored ", ig));
            const std::string cname = m.component;
            const ComponentKind kind = m.kind;
            SD3_ASSIGN_OR_RETURN(std::shared_ptr<MappedSource> src, MappedSource::create(file, std::move(m)));
            if (cname == "text_encoder") add_clip_l_projection(*src, origin.notes);
            SD3_ASSIGN_OR_RETURN(Component c, make_component(cname, kind, src, metadata, path, origin.notes));
            out.push_back(std::move(c));
        }
        if (!slot.empty() && out.empty())
            return make_error(ErrorCode::NOT_FOUND, path, " (", option, "): this single file has no ", pretty_component(slot));
        return out;
    }
    // A component file: which pipeline part it fills.
    std::string target = slot;
    if (target.empty()) {
        switch (d.kind) {
            case ComponentKind::MMDIT: target = "transformer"; break;
            case ComponentKind::VAE: target = "vae"; break;
            case ComponentKind::T5: target = "text_encoder_3"; break;
            case ComponentKind::CLIP:
                return make_error(ErrorCode::INVALID_ARGUMENT, path, ": a CLIP text encoder on its own; pass it with "
                                  "--clip-l or --clip-g, and give --model the MMDiT");
        }
    }
    const ComponentKind want = target == "transformer" ? ComponentKind::MMDIT
                               : target == "vae"       ? ComponentKind::VAE
                               : target == "text_encoder_3" ? ComponentKind::T5
                                                            : ComponentKind::CLIP;
    if (d.kind != want)
        return make_error(ErrorCode::INVALID_ARGUMENT, path, " (", option, "): holds a ", component_kind_name(d.kind),
                          ", not a ", component_kind_name(want));
    // MMDiT/VAE files in diffusers naming are used as they are; encoder files always go through their (mostly
    // identity) rules, which drop buffers, resolve T5's tied embedding and let CLIP-L get its missing projection.
    std::shared_ptr<const TensorSource> src;
    const bool encoder = d.kind == ComponentKind::CLIP || d.kind == ComponentKind::T5;
    if (d.diffusers_names && !encoder) {
        src = file;
    } else {
        auto m = map_component(d.kind, target, d.prefix, names);
        if (!m.ok()) return m.status().with_context(path);
        for (const std::string& ig : m->ignored) origin.notes.push_back(str_cat(target, ": ignored ", ig));
        SD3_ASSIGN_OR_RETURN(std::shared_ptr<MappedSource> ms, MappedSource::create(file, std::move(m).value()));
        if (target == "text_encoder") add_clip_l_projection(*ms, origin.notes);
        src = ms;
    }
    SD3_ASSIGN_OR_RETURN(Component c, make_component(target, d.kind, src, metadata, path, origin.notes));
    out.push_back(std::move(c));
    return out;
}

Result<std::vector<Component>> open_tokenizers(const std::string& dir) {
    if (!fs::is_directory(dir))
        return make_error(ErrorCode::NOT_FOUND, dir, " (--tokenizers): not a folder; ", part_supply_hint("tokenizer"));
    // Classes from model_index.json when it is a pipeline folder, else the SD3 defaults (§1.7).
    std::map<std::string, std::string> classes = {
        {"tokenizer", "CLIPTokenizer"}, {"tokenizer_2", "CLIPTokenizer"}, {"tokenizer_3", "T5TokenizerFast"}};
    const fs::path index = fs::path(dir) / "model_index.json";
    if (fs::exists(index)) {
        SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(index.string()));
        for (const std::string& t : tokenizer_names())
            if (j.contains(t) && j[t].is_array() && j[t].size() == 2 && j[t][1].is_string()) classes[t] = j[t][1];
    }
    std::vector<Component> out;
    std::vector<std::string> missing;
    for (const std::string& t : tokenizer_names()) {
        const fs::path sub = fs::path(dir) / t;
        const bool t5 = t == "tokenizer_3";
        const std::vector<std::string> needed =
            t5 ? std::vector<std::string>{"spiece.model"} : std::vector<std::string>{"vocab.json", "merges.txt"};
        bool ok = fs::is_directory(sub);
        for (const std::string& f : needed) {
            if (fs::exists(sub / f)) continue;
            if (!t5 && fs::exists(sub / "tokenizer.json")) continue;
            missing.push_back((sub / f).string());
            ok = false;
        }
        if (!ok) continue;
        Component c;
        c.name = t;
        c.library = "transformers";
        c.class_name = classes[t];
        c.dir = sub.string();
        c.config_path = (sub / "tokenizer_config.json").string();
        if (fs::exists(c.config_path)) {
            SD3_ASSIGN_OR_RETURN(c.config, read_json_file(c.config_path));
        } else {
            c.config = nlohmann::json::object();
        }
        out.push_back(std::move(c));
    }
    if (!missing.empty()) {
        std::string list;
        for (const std::string& m : missing) list += "\n  " + m;
        return make_error(ErrorCode::NOT_FOUND, dir, " (--tokenizers): tokenizer files missing:", list, "\n",
                          part_supply_hint("tokenizer"));
    }
    return out;
}

Component default_scheduler() {
    // SD3's scheduler_config.json (§1.8); a single file carries none.
    Component c;
    c.name = "scheduler";
    c.library = "diffusers";
    c.class_name = "FlowMatchEulerDiscreteScheduler";
    c.config = {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"num_train_timesteps", 1000}, {"shift", 3.0}};
    c.config_path = "SD3 default (FlowMatchEulerDiscreteScheduler, shift 3.0)";
    return c;
}

// The scheduler config a file written by `sd3tune convert` keeps in its metadata, else SD3's default.
Result<Component> scheduler_from(const std::string& file) {
    Component c = default_scheduler();
    auto f = SafetensorsFile::open(file);
    if (!f.ok()) return c;
    auto it = f->metadata().find(std::string(kConfigMetaPrefix) + "scheduler");
    if (it == f->metadata().end()) return c;
    c.config = nlohmann::json::parse(it->second, nullptr, false);
    if (c.config.is_discarded() || !c.config.is_object() || !c.config.contains("_class_name") ||
        !c.config["_class_name"].is_string())
        return make_error(ErrorCode::CORRUPT_FILE, file, ": metadata ", it->first, " is not a scheduler config");
    c.class_name = c.config["_class_name"];
    c.config_path = str_cat(file, " (__metadata__ ", it->first, ")");
    return c;
}

void put(std::vector<Component>& comps, Component c, ModelOrigin& origin, const std::string& why) {
    for (Component& have : comps)
        if (have.name == c.name) {
            origin.notes.push_back(str_cat(c.name, ": replaced by ", why));
            have = std::move(c);
            return;
        }
    comps.push_back(std::move(c));
}

}  // namespace

Result<ModelFolder> open_model(const ModelSpec& spec, ModelOrigin* origin_out) {
    ModelOrigin origin;
    if (spec.model.empty()) return make_error(ErrorCode::INVALID_ARGUMENT, "no model given (--model)");
    if (!fs::exists(spec.model)) return make_error(ErrorCode::NOT_FOUND, spec.model, ": no such file or folder");
    std::vector<Component> comps;
    if (fs::is_directory(spec.model)) {
        SD3_ASSIGN_OR_RETURN(ModelFolder folder, ModelFolder::open(spec.model));
        comps = folder.components();
        origin.layout = ModelLayout::DIFFUSERS_FOLDER;
        origin.summary = "diffusers pipeline folder";
    } else {
        SD3_ASSIGN_OR_RETURN(comps, open_file_components(spec.model, "", "--model", origin));
    }
    const std::pair<const std::string*, std::pair<const char*, const char*>> parts[] = {
        {&spec.vae, {"vae", "--vae"}},
        {&spec.clip_l, {"text_encoder", "--clip-l"}},
        {&spec.clip_g, {"text_encoder_2", "--clip-g"}},
        {&spec.t5, {"text_encoder_3", "--t5"}},
    };
    for (const auto& [file, what] : parts) {
        if (file->empty()) continue;
        SD3_ASSIGN_OR_RETURN(std::vector<Component> got, open_file_components(*file, what.first, what.second, origin));
        for (Component& c : got) put(comps, std::move(c), origin, str_cat(what.second, " ", *file));
    }
    if (!spec.tokenizers.empty()) {
        SD3_ASSIGN_OR_RETURN(std::vector<Component> toks, open_tokenizers(spec.tokenizers));
        for (Component& c : toks) put(comps, std::move(c), origin, str_cat("--tokenizers ", spec.tokenizers));
    }
    if (std::none_of(comps.begin(), comps.end(), [](const Component& c) { return c.name == "scheduler"; })) {
        SD3_ASSIGN_OR_RETURN(Component sched, scheduler_from(spec.model));
        origin.notes.push_back(str_cat("scheduler: ", sched.config_path));
        comps.push_back(std::move(sched));
    }
    auto rank = [](const Component& c) { return std::find(kSD3Components.begin(), kSD3Components.end(), c.name) - kSD3Components.begin(); };
    std::stable_sort(comps.begin(), comps.end(), [&](const Component& a, const Component& b) { return rank(a) < rank(b); });
    ModelFolder model;
    model.set_path(spec.model);
    for (Component& c : comps) model.add_component(std::move(c));
    std::string derived;
    for (const Component& c : model.components())
        if (c.config_path.starts_with("derived")) derived += (derived.empty() ? "" : ", ") + c.name;
    log_info(spec.model, ": ", origin.summary,
             derived.empty() ? "" : str_cat("; configs derived from weight shapes for ", derived,
                                             " (`sd3tune info` shows what and how)"));
    for (const std::string& n : origin.notes) log_debug(n);
    if (origin_out) *origin_out = std::move(origin);
    return model;
}

namespace {
// describe_model plus, for configs that were derived, the whole derived config (what a config.json would hold).
nlohmann::ordered_json describe(const ModelFolder& m) {
    nlohmann::ordered_json out = describe_model(m);
    for (auto& j : out["components"]) {
        const Component* c = m.find(j["name"].get<std::string>());
        if (c && c->config_path.starts_with("derived")) j["derived_config"] = c->config;
    }
    return out;
}
}  // namespace

Result<nlohmann::ordered_json> describe_model_file(const std::string& path) {
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<TensorSource> file, SafetensorsSource::open(path));
    SD3_ASSIGN_OR_RETURN(DetectedLayout d, detect_layout(file->names()));
    if (d.layout == ModelLayout::NOT_A_MODEL) return nlohmann::ordered_json();
    ModelSpec spec;
    if (d.layout == ModelLayout::COMPONENT_FILE && d.kind == ComponentKind::CLIP) {
        // On its own a CLIP file does not say which one it is; describe it as the one its width suggests.
        auto tok = file->meta("text_model.embeddings.token_embedding.weight");
        const bool g = tok && tok->shape.size() == 2 && tok->shape[1] == 1280;
        spec.model.clear();
        ModelOrigin origin;
        SD3_ASSIGN_OR_RETURN(std::vector<Component> comps,
                             open_file_components(path, g ? "text_encoder_2" : "text_encoder", g ? "--clip-g" : "--clip-l", origin));
        ModelFolder m;
        m.set_path(path);
        for (Component& c : comps) m.add_component(std::move(c));
        nlohmann::ordered_json out = describe(m);
        out["layout"] = std::string(model_layout_name(d.layout));
        out["summary"] = str_cat(d.summary, g ? " (width 1280: CLIP-G, use --clip-g)" : " (CLIP-L unless it is CLIP-G: use --clip-l or --clip-g)");
        out["notes"] = origin.notes;
        return out;
    }
    spec.model = path;
    ModelOrigin origin;
    SD3_ASSIGN_OR_RETURN(ModelFolder m, open_model(spec, &origin));
    nlohmann::ordered_json out = describe(m);
    out["layout"] = std::string(model_layout_name(origin.layout));
    out["summary"] = origin.summary;
    out["notes"] = origin.notes;
    return out;
}

}  // namespace sd3
