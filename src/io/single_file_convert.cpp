// convert_model: writes a ModelFolder as a diffusers folder or as one Stability single file. Tensors keep their
// stored dtype and bits (fused qkv rows are concatenated, adaLN halves swapped back, 1x1 convs unsqueezed: the
// exact inverses of the name map's transforms), so folder -> single file -> folder is lossless.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/log.h"
#include "io/safetensors.h"
#include "io/single_file.h"

namespace sd3 {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kConfigMetaPrefix = "sd3tune.config.";

std::optional<ComponentKind> kind_of(const Component& c) {
    if (c.class_name == "SD3Transformer2DModel") return ComponentKind::MMDIT;
    if (c.class_name == "AutoencoderKL") return ComponentKind::VAE;
    if (c.class_name.starts_with("CLIPTextModel")) return ComponentKind::CLIP;
    if (c.class_name == "T5EncoderModel") return ComponentKind::T5;
    return std::nullopt;
}

// Builds the stored tensor of `plan` from the component's diffusers tensors.
Result<Tensor> build_stored(const TensorSource& w, const StoredTensorPlan& plan) {
    std::vector<Tensor> parts;
    for (const std::string& d : plan.diffusers) {
        SD3_ASSIGN_OR_RETURN(Tensor t, w.get(d));
        parts.push_back(t.contiguous());
    }
    switch (plan.op) {
        case MapOp::COPY:
        case MapOp::IGNORE: return parts[0];
        case MapOp::CONV1X1_TO_LINEAR: {
            const Shape s = parts[0].shape();  // [out, in]
            if (s.size() != 2)
                return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": ", plan.diffusers[0], " should be 2-D, is ",
                                  shape_str(s));
            return parts[0].view({s[0], s[1], 1, 1});
        }
        case MapOp::SWAP_HALVES: {
            const Tensor& t = parts[0];
            if (t.shape().empty() || t.shape()[0] % 2 != 0)
                return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": ", plan.diffusers[0], " has an odd row count");
            Tensor out = Tensor::empty(t.shape(), t.dtype());
            const size_t half = t.nbytes() / 2;
            std::memcpy(out.raw(), static_cast<const char*>(t.raw()) + half, half);
            std::memcpy(static_cast<char*>(out.raw()) + half, t.raw(), half);
            return out;
        }
        case MapOp::ROW_CHUNK: {
            Shape s = parts[0].shape();
            for (const Tensor& p : parts) {
                Shape ps = p.shape();
                if (p.dtype() != parts[0].dtype() || ps.size() != s.size() || ps.empty() ||
                    !std::equal(ps.begin() + 1, ps.end(), s.begin() + 1))
                    return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": the parts of ", plan.stored,
                                      " differ in dtype or shape");
            }
            s[0] = 0;
            for (const Tensor& p : parts) s[0] += p.shape()[0];
            Tensor out = Tensor::empty(s, parts[0].dtype());
            size_t offset = 0;
            for (const Tensor& p : parts) {
                std::memcpy(static_cast<char*>(out.raw()) + offset, p.raw(), p.nbytes());
                offset += p.nbytes();
            }
            return out;
        }
    }
    return make_error(ErrorCode::INTERNAL, "unknown map op");
}

Status write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return make_error(ErrorCode::IO_ERROR, path.string(), ": cannot write");
    return {};
}

Status write_single_file(const ModelFolder& model, const std::string& output) {
    NamedTensors tensors;
    std::map<std::string, std::string> metadata;
    std::vector<std::string> skipped;
    for (const Component& c : model.components()) {
        if (c.name == "scheduler") {  // tiny, and needed to convert back losslessly
            metadata[std::string(kConfigMetaPrefix) + c.name] = c.config.dump();
            continue;
        }
        if (!c.weights) {
            skipped.push_back(c.name);
            continue;
        }
        const auto kind = kind_of(c);
        std::string prefix;
        for (const StabilityPrefix& p : stability_prefixes())
            if (p.component == c.name) prefix = std::string(p.prefix);
        if (!kind || prefix.empty())
            return make_error(ErrorCode::UNSUPPORTED, c.name, " (", c.class_name,
                              ") has no place in Stability's single-file layout");
        auto plans = plan_stability_component(*kind, prefix, c.weights->names());
        if (!plans.ok()) return plans.status().with_context(c.weights->origin());
        for (const StoredTensorPlan& plan : *plans) {
            SD3_ASSIGN_OR_RETURN(Tensor t, build_stored(*c.weights, plan));
            tensors.emplace_back(plan.stored, std::move(t));
        }
        metadata[std::string(kConfigMetaPrefix) + c.name] = c.config.dump();
    }
    if (tensors.empty()) return make_error(ErrorCode::INVALID_ARGUMENT, model.path(), ": no weights to write");
    std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    metadata["format"] = "pt";
    if (!skipped.empty()) {
        std::string list;
        for (const std::string& s : skipped) list += " " + s;
        log_info("not in a single file (it holds weights only; pass --tokenizers when loading it):", list);
    }
    log_info("writing ", tensors.size(), " tensors to ", output);
    return write_safetensors(output, tensors, metadata);
}

Status write_diffusers_folder(const ModelFolder& model, const std::string& output) {
    if (fs::exists(output) && !(fs::is_directory(output) && fs::is_empty(output)))
        return make_error(ErrorCode::INVALID_ARGUMENT, output, ": exists and is not an empty folder; choose a new one");
    std::error_code ec;
    fs::create_directories(output, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, output, ": cannot create: ", ec.message());
    nlohmann::ordered_json index;
    index["_class_name"] = "StableDiffusion3Pipeline";
    index["_diffusers_version"] = "0.30.0";
    std::vector<std::string> absent;
    for (const std::string& name : kSD3Components)
        if (!model.find(name)) absent.push_back(name);
    for (const Component& c : model.components()) {
        const fs::path dir = fs::path(output) / c.name;
        fs::create_directories(dir, ec);
        if (ec) return make_error(ErrorCode::IO_ERROR, dir.string(), ": cannot create: ", ec.message());
        index[c.name] = {c.library, c.class_name};
        if (c.name.starts_with("tokenizer")) {
            if (c.dir.empty()) return make_error(ErrorCode::INTERNAL, c.name, " has no folder to copy");
            fs::copy(c.dir, dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
            if (ec) return make_error(ErrorCode::IO_ERROR, "copying ", c.dir, " to ", dir.string(), ": ", ec.message());
            continue;
        }
        const bool scheduler = c.name == "scheduler";
        SD3_TRY(write_text(dir / (scheduler ? "scheduler_config.json" : "config.json"), c.config.dump(2) + "\n"));
        if (!c.weights) continue;
        NamedTensors tensors;
        for (const std::string& n : c.weights->names()) {
            SD3_ASSIGN_OR_RETURN(Tensor t, c.weights->get(n));
            tensors.emplace_back(n, std::move(t));
        }
        const std::string file = c.library == "diffusers" ? "diffusion_pytorch_model.safetensors" : "model.safetensors";
        log_info("writing ", tensors.size(), " tensors to ", (dir / file).string());
        SD3_TRY(write_safetensors((dir / file).string(), tensors, {{"format", "pt"}}));
    }
    SD3_TRY(write_text(fs::path(output) / "model_index.json", index.dump(2) + "\n"));
    if (!absent.empty()) {
        std::string list;
        for (const std::string& a : absent) list += " " + a;
        log_warn(output, ": written without", list, " (the input had none; ", part_supply_hint(absent[0]), ")");
    }
    return {};
}

}  // namespace

Status convert_model(const ModelFolder& model, ConvertTarget target, const std::string& output) {
    if (target == ConvertTarget::SINGLE_FILE) return write_single_file(model, output);
    return write_diffusers_folder(model, output);
}

}  // namespace sd3
