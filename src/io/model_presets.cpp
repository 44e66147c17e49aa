// make-model: weight lists per architecture, preset configs, and the random-weight folder writer.
#include "io/model_presets.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/log.h"
#include "io/json_file.h"

namespace sd3 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Appends name.weight [out, in] and, with a bias, name.bias [out].
void add_linear(std::vector<TensorSpec>& s, const std::string& name, int64_t out, int64_t in, DType dt, bool bias = true) {
    s.push_back({name + ".weight", dt, {out, in}});
    if (bias) s.push_back({name + ".bias", dt, {out}});
}

void add_norm(std::vector<TensorSpec>& s, const std::string& name, int64_t n, DType dt, bool bias = true) {
    s.push_back({name + ".weight", dt, {n}});
    if (bias) s.push_back({name + ".bias", dt, {n}});
}

void add_conv(std::vector<TensorSpec>& s, const std::string& name, int64_t out, int64_t in, int64_t k, DType dt) {
    s.push_back({name + ".weight", dt, {out, in, k, k}});
    s.push_back({name + ".bias", dt, {out}});
}

// SD3Transformer2DModel (research/sd3-architecture.md §3.1, §1.10 for the SD3.5 extras).
std::vector<TensorSpec> mmdit_specs(const json& c, DType dt) {
    const int64_t heads = c["num_attention_heads"], hd = c["attention_head_dim"];
    const int64_t D = heads * hd, p = c["patch_size"], C = c["in_channels"], grid = c["pos_embed_max_size"];
    const int64_t layers = c["num_layers"];
    const int64_t out_ch = c.value("out_channels", C);
    const bool qk = c.contains("qk_norm") && !c["qk_norm"].is_null();
    std::vector<int64_t> dual;
    if (c.contains("dual_attention_layers") && c["dual_attention_layers"].is_array())
        dual = c["dual_attention_layers"].get<std::vector<int64_t>>();
    std::vector<TensorSpec> s;
    add_conv(s, "pos_embed.proj", D, C, p, dt);
    s.push_back({"pos_embed.pos_embed", dt, {1, grid * grid, D}});
    add_linear(s, "time_text_embed.timestep_embedder.linear_1", D, 256, dt);
    add_linear(s, "time_text_embed.timestep_embedder.linear_2", D, D, dt);
    add_linear(s, "time_text_embed.text_embedder.linear_1", D, c["pooled_projection_dim"], dt);
    add_linear(s, "time_text_embed.text_embedder.linear_2", D, D, dt);
    add_linear(s, "context_embedder", D, c["joint_attention_dim"], dt);
    auto attention = [&](const std::string& pre, bool context, bool pre_only) {
        for (const char* n : {".to_q", ".to_k", ".to_v", ".to_out.0"}) add_linear(s, pre + n, D, D, dt);
        if (qk) {
            add_norm(s, pre + ".norm_q", hd, dt, false);
            add_norm(s, pre + ".norm_k", hd, dt, false);
        }
        if (!context) return;
        for (const char* n : {".add_q_proj", ".add_k_proj", ".add_v_proj"}) add_linear(s, pre + n, D, D, dt);
        if (!pre_only) add_linear(s, pre + ".to_add_out", D, D, dt);
        if (qk) {
            add_norm(s, pre + ".norm_added_q", hd, dt, false);
            add_norm(s, pre + ".norm_added_k", hd, dt, false);
        }
    };
    for (int64_t i = 0; i < layers; ++i) {
        const std::string pre = "transformer_blocks." + std::to_string(i);
        const bool last = i == layers - 1;
        const bool is_dual = std::find(dual.begin(), dual.end(), i) != dual.end();
        add_linear(s, pre + ".norm1.linear", (is_dual ? 9 : 6) * D, D, dt);
        add_linear(s, pre + ".norm1_context.linear", (last ? 2 : 6) * D, D, dt);
        attention(pre + ".attn", true, last);
        if (is_dual) attention(pre + ".attn2", false, false);
        add_linear(s, pre + ".ff.net.0.proj", 4 * D, D, dt);
        add_linear(s, pre + ".ff.net.2", D, 4 * D, dt);
        if (!last) {
            add_linear(s, pre + ".ff_context.net.0.proj", 4 * D, D, dt);
            add_linear(s, pre + ".ff_context.net.2", D, 4 * D, dt);
        }
    }
    add_linear(s, "norm_out.linear", 2 * D, D, dt);
    add_linear(s, "proj_out", p * p * out_ch, D, dt);
    return s;
}

void add_resnet(std::vector<TensorSpec>& s, const std::string& pre, int64_t in, int64_t out, DType dt) {
    add_norm(s, pre + ".norm1", in, dt);
    add_conv(s, pre + ".conv1", out, in, 3, dt);
    add_norm(s, pre + ".norm2", out, dt);
    add_conv(s, pre + ".conv2", out, out, 3, dt);
    if (in != out) add_conv(s, pre + ".conv_shortcut", out, in, 1, dt);
}

void add_vae_mid(std::vector<TensorSpec>& s, const std::string& pre, int64_t C, DType dt) {
    add_resnet(s, pre + ".resnets.0", C, C, dt);
    add_norm(s, pre + ".attentions.0.group_norm", C, dt);
    for (const char* n : {".to_q", ".to_k", ".to_v", ".to_out.0"}) add_linear(s, pre + ".attentions.0" + n, C, C, dt);
    add_resnet(s, pre + ".resnets.1", C, C, dt);
}

// AutoencoderKL (§3.3, §4): encoder down blocks, mid block with attention, decoder up blocks in reverse widths.
std::vector<TensorSpec> vae_specs(const json& c, DType dt) {
    const std::vector<int64_t> widths = c["block_out_channels"].get<std::vector<int64_t>>();
    const int64_t lpb = c["layers_per_block"], latent = c["latent_channels"];
    const int64_t in_ch = c.value("in_channels", 3), out_ch = c.value("out_channels", 3);
    const size_t n = widths.size();
    std::vector<TensorSpec> s;
    add_conv(s, "encoder.conv_in", widths[0], in_ch, 3, dt);
    int64_t prev = widths[0];
    for (size_t i = 0; i < n; ++i) {
        const std::string pre = "encoder.down_blocks." + std::to_string(i);
        for (int64_t j = 0; j < lpb; ++j) add_resnet(s, pre + ".resnets." + std::to_string(j), j == 0 ? prev : widths[i], widths[i], dt);
        if (i + 1 < n) add_conv(s, pre + ".downsamplers.0.conv", widths[i], widths[i], 3, dt);
        prev = widths[i];
    }
    add_vae_mid(s, "encoder.mid_block", widths.back(), dt);
    add_norm(s, "encoder.conv_norm_out", widths.back(), dt);
    add_conv(s, "encoder.conv_out", 2 * latent, widths.back(), 3, dt);
    if (c.value("use_quant_conv", true)) add_conv(s, "quant_conv", 2 * latent, 2 * latent, 1, dt);
    if (c.value("use_post_quant_conv", true)) add_conv(s, "post_quant_conv", latent, latent, 1, dt);

    add_conv(s, "decoder.conv_in", widths.back(), latent, 3, dt);
    add_vae_mid(s, "decoder.mid_block", widths.back(), dt);
    prev = widths.back();
    for (size_t i = 0; i < n; ++i) {
        const int64_t w = widths[n - 1 - i];
        const std::string pre = "decoder.up_blocks." + std::to_string(i);
        for (int64_t j = 0; j <= lpb; ++j) add_resnet(s, pre + ".resnets." + std::to_string(j), j == 0 ? prev : w, w, dt);
        if (i + 1 < n) add_conv(s, pre + ".upsamplers.0.conv", w, w, 3, dt);
        prev = w;
    }
    add_norm(s, "decoder.conv_norm_out", widths[0], dt);
    add_conv(s, "decoder.conv_out", out_ch, widths[0], 3, dt);
    return s;
}

// transformers' CLIPTextModelWithProjection (§5).
std::vector<TensorSpec> clip_specs(const json& c, DType dt) {
    const int64_t D = c["hidden_size"], I = c["intermediate_size"], layers = c["num_hidden_layers"];
    std::vector<TensorSpec> s;
    s.push_back({"text_model.embeddings.token_embedding.weight", dt, {c["vocab_size"], D}});
    s.push_back({"text_model.embeddings.position_embedding.weight", dt, {c.value("max_position_embeddings", 77), D}});
    for (int64_t i = 0; i < layers; ++i) {
        const std::string pre = "text_model.encoder.layers." + std::to_string(i);
        add_norm(s, pre + ".layer_norm1", D, dt);
        for (const char* n : {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj"})
            add_linear(s, pre + n, D, D, dt);
        add_norm(s, pre + ".layer_norm2", D, dt);
        add_linear(s, pre + ".mlp.fc1", I, D, dt);
        add_linear(s, pre + ".mlp.fc2", D, I, dt);
    }
    add_norm(s, "text_model.final_layer_norm", D, dt);
    s.push_back({"text_projection.weight", dt, {c["projection_dim"], D}});
    return s;
}

// transformers' T5EncoderModel, v1.1 gated-GELU (§6); the relative attention bias lives in block 0 only.
std::vector<TensorSpec> t5_specs(const json& c, DType dt) {
    const int64_t D = c["d_model"], inner = c["num_heads"].get<int64_t>() * c["d_kv"].get<int64_t>();
    const int64_t F = c["d_ff"], layers = c["num_layers"];
    std::vector<TensorSpec> s;
    s.push_back({"shared.weight", dt, {c["vocab_size"], D}});
    for (int64_t i = 0; i < layers; ++i) {
        const std::string pre = "encoder.block." + std::to_string(i) + ".layer.";
        for (const char* n : {"0.SelfAttention.q", "0.SelfAttention.k", "0.SelfAttention.v"})
            add_linear(s, pre + n, inner, D, dt, false);
        add_linear(s, pre + "0.SelfAttention.o", D, inner, dt, false);
        if (i == 0)
            s.push_back({pre + "0.SelfAttention.relative_attention_bias.weight", dt,
                         {c.value("relative_attention_num_buckets", 32), c["num_heads"]}});
        add_norm(s, pre + "0.layer_norm", D, dt, false);
        add_linear(s, pre + "1.DenseReluDense.wi_0", F, D, dt, false);
        add_linear(s, pre + "1.DenseReluDense.wi_1", F, D, dt, false);
        add_linear(s, pre + "1.DenseReluDense.wo", D, F, dt, false);
        add_norm(s, pre + "1.layer_norm", D, dt, false);
    }
    add_norm(s, "encoder.final_layer_norm", D, dt, false);
    return s;
}

json clip_config(int64_t hidden, int64_t layers, int64_t heads, int64_t inter, int64_t proj, const char* act) {
    return {{"architectures", {"CLIPTextModelWithProjection"}},
            {"hidden_act", act},
            {"hidden_size", hidden},
            {"intermediate_size", inter},
            {"num_attention_heads", heads},
            {"num_hidden_layers", layers},
            {"max_position_embeddings", 77},
            {"layer_norm_eps", 1e-5},
            {"projection_dim", proj},
            {"vocab_size", 49408},
            {"bos_token_id", 0},
            {"eos_token_id", 2},
            {"pad_token_id", 1},
            {"model_type", "clip_text_model"}};
}

json t5_config(int64_t d_model, int64_t d_kv, int64_t heads, int64_t d_ff, int64_t layers, int64_t vocab) {
    return {{"architectures", {"T5EncoderModel"}},
            {"d_model", d_model},
            {"d_kv", d_kv},
            {"num_heads", heads},
            {"d_ff", d_ff},
            {"num_layers", layers},
            {"feed_forward_proj", "gated-gelu"},
            {"dense_act_fn", "gelu_new"},
            {"is_gated_act", true},
            {"layer_norm_epsilon", 1e-6},
            {"relative_attention_num_buckets", 32},
            {"relative_attention_max_distance", 128},
            {"vocab_size", vocab},
            {"pad_token_id", 0},
            {"eos_token_id", 1},
            {"model_type", "t5"}};
}

json vae_config(const std::vector<int64_t>& widths, int64_t groups) {
    return {{"_class_name", "AutoencoderKL"},
            {"act_fn", "silu"},
            {"block_out_channels", widths},
            {"down_block_types", std::vector<std::string>(widths.size(), "DownEncoderBlock2D")},
            {"up_block_types", std::vector<std::string>(widths.size(), "UpDecoderBlock2D")},
            {"in_channels", 3},
            {"out_channels", 3},
            {"latent_channels", 16},
            {"layers_per_block", 2},
            {"mid_block_add_attention", true},
            {"norm_num_groups", groups},
            {"force_upcast", true},
            {"scaling_factor", 1.5305},
            {"shift_factor", 0.0609},
            {"latents_mean", nullptr},
            {"latents_std", nullptr},
            {"use_quant_conv", false},
            {"use_post_quant_conv", false}};
}

json mmdit_config(int64_t layers, int64_t heads, int64_t head_dim, int64_t joint, int64_t pooled, int64_t pos_max,
                  int64_t sample, const json& qk_norm, const std::vector<int64_t>& dual) {
    return {{"_class_name", "SD3Transformer2DModel"},
            {"attention_head_dim", head_dim},
            {"caption_projection_dim", heads * head_dim},
            {"in_channels", 16},
            {"out_channels", 16},
            {"joint_attention_dim", joint},
            {"num_attention_heads", heads},
            {"num_layers", layers},
            {"patch_size", 2},
            {"pooled_projection_dim", pooled},
            {"pos_embed_max_size", pos_max},
            {"sample_size", sample},
            {"qk_norm", qk_norm},
            {"dual_attention_layers", dual}};
}

const json kScheduler = {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"num_train_timesteps", 1000}, {"shift", 3.0}};

// model_index.json's [library, class] per component.
const std::vector<std::tuple<std::string, std::string, std::string>> kIndex = {
    {"transformer", "diffusers", "SD3Transformer2DModel"},       {"vae", "diffusers", "AutoencoderKL"},
    {"text_encoder", "transformers", "CLIPTextModelWithProjection"}, {"text_encoder_2", "transformers", "CLIPTextModelWithProjection"},
    {"text_encoder_3", "transformers", "T5EncoderModel"},        {"tokenizer", "transformers", "CLIPTokenizer"},
    {"tokenizer_2", "transformers", "CLIPTokenizer"},            {"tokenizer_3", "transformers", "T5Tokenizer"},
    {"scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler"}};

// Deterministic standard normals from (seed, tensor, element) so tensors can be filled in parallel and in any order.
uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

Tensor random_tensor(const TensorSpec& spec, uint64_t seed, uint64_t tensor_index) {
    Tensor f = Tensor::empty(spec.shape, DType::F32);
    float* p = f.data<float>();
    const int64_t n = f.numel();
    const bool is_bias = spec.name.ends_with(".bias");
    const bool is_norm = spec.shape.size() == 1 && !is_bias;
    const bool is_table = spec.name.find("embedding") != std::string::npos || spec.name.find("pos_embed.pos_embed") != std::string::npos ||
                          spec.name == "shared.weight" || spec.name.find("relative_attention_bias") != std::string::npos;
    if (is_bias || is_norm) {
        for (int64_t i = 0; i < n; ++i) p[i] = is_norm ? 1.0f : 0.0f;
    } else {
        const double fan_in = static_cast<double>(n / spec.shape[0]);
        const float std = is_table ? 0.02f : static_cast<float>(1.0 / std::sqrt(fan_in));
        const uint64_t base = splitmix64(seed ^ splitmix64(tensor_index));
#pragma omp parallel for
        for (int64_t i = 0; i < n; i += 2) {
            const uint64_t r = splitmix64(base + static_cast<uint64_t>(i));
            const double u1 = (static_cast<double>(r >> 11) + 1.0) / 9007199254740993.0;  // (0, 1]
            const double u2 = static_cast<double>(splitmix64(r) >> 11) / 9007199254740992.0;
            const double rad = std::sqrt(-2.0 * std::log(u1));
            p[i] = std * static_cast<float>(rad * std::cos(6.283185307179586 * u2));
            if (i + 1 < n) p[i + 1] = std * static_cast<float>(rad * std::sin(6.283185307179586 * u2));
        }
    }
    return spec.dtype == DType::F32 ? f : f.to(spec.dtype);
}

Status write_json(const fs::path& path, const json& j) {
    std::ofstream out(path);
    out << j.dump(2) << "\n";
    if (!out) return make_error(ErrorCode::IO_ERROR, path.string(), ": cannot write (is the disk full?)");
    return {};
}

// One component's weights, sharded with an index when larger than max_shard_bytes.
Status write_component_weights(const fs::path& dir, const std::string& stem, const std::vector<TensorSpec>& specs,
                               uint64_t seed, size_t max_shard_bytes) {
    std::vector<std::vector<size_t>> shards(1);
    size_t shard_bytes = 0, total = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
        const size_t b = static_cast<size_t>(shape_numel(specs[i].shape)) * dtype_size(specs[i].dtype);
        if (shard_bytes > 0 && shard_bytes + b > max_shard_bytes) {
            shards.emplace_back();
            shard_bytes = 0;
        }
        shards.back().push_back(i);
        shard_bytes += b;
        total += b;
    }
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
        char name[128];
        if (shards.size() == 1) std::snprintf(name, sizeof name, "%s.safetensors", stem.c_str());
        else std::snprintf(name, sizeof name, "%s-%05zu-of-%05zu.safetensors", stem.c_str(), s + 1, shards.size());
        std::vector<TensorSpec> part;
        for (size_t i : shards[s]) {
            part.push_back(specs[i]);
            weight_map[specs[i].name] = name;
        }
        SD3_TRY(write_safetensors_streamed((dir / name).string(), part, {{"format", "pt"}},
                                           [&](size_t k) -> Result<Tensor> { return random_tensor(part[k], seed, shards[s][k]); }));
    }
    if (shards.size() > 1)
        SD3_TRY(write_json(dir / (stem + ".safetensors.index.json"),
                           {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}));
    return {};
}

}  // namespace

Result<std::vector<TensorSpec>> component_weight_specs(const std::string& class_name, const json& config, DType dtype) {
    try {
        if (class_name == "SD3Transformer2DModel") return mmdit_specs(config, dtype);
        if (class_name == "AutoencoderKL") return vae_specs(config, dtype);
        if (class_name == "CLIPTextModelWithProjection") return clip_specs(config, dtype);
        if (class_name == "T5EncoderModel") return t5_specs(config, dtype);
    } catch (const json::exception& e) {
        return make_error(ErrorCode::INVALID_ARGUMENT, class_name, " config is incomplete: ", e.what());
    }
    return make_error(ErrorCode::UNSUPPORTED, "no weight layout known for ", class_name);
}

std::vector<std::string> preset_names() { return {"sd3-medium", "sd3.5-medium", "tiny"}; }

Result<json> preset_configs(const std::string& preset) {
    json c;
    c["scheduler"] = kScheduler;
    if (preset == "sd3-medium" || preset == "sd3.5-medium") {
        // research/sd3-architecture.md §1.2-1.6 and §1.10.
        const bool v35 = preset == "sd3.5-medium";
        std::vector<int64_t> dual;
        if (v35)
            for (int64_t i = 0; i <= 12; ++i) dual.push_back(i);
        c["transformer"] = mmdit_config(24, 24, 64, 4096, 2048, v35 ? 384 : 192, 128, v35 ? json("rms_norm") : json(nullptr), dual);
        c["vae"] = vae_config({128, 256, 512, 512}, 32);
        c["text_encoder"] = clip_config(768, 12, 12, 3072, 768, "quick_gelu");
        c["text_encoder_2"] = clip_config(1280, 32, 20, 5120, 1280, "gelu");
        c["text_encoder_3"] = t5_config(4096, 64, 64, 10240, 24, 32128);
        return c;
    }
    if (preset == "tiny") {  // the shapes of tests/data/tiny-a (golden/README.md)
        c["transformer"] = mmdit_config(2, 4, 8, 64, 64, 16, 16, nullptr, {});
        c["vae"] = vae_config({8, 8, 16, 16}, 4);
        c["text_encoder"] = clip_config(32, 3, 4, 37, 32, "quick_gelu");
        c["text_encoder_2"] = clip_config(32, 3, 4, 37, 32, "gelu");
        c["text_encoder_3"] = t5_config(64, 16, 4, 96, 2, 500);
        return c;
    }
    std::string known;
    for (const std::string& p : preset_names()) known += (known.empty() ? "" : ", ") + p;
    return make_error(ErrorCode::INVALID_ARGUMENT, "unknown preset \"", preset, "\" (known: ", known, ")");
}

Status make_model(const MakeModelOptions& opt) {
    SD3_ASSIGN_OR_RETURN(json configs, preset_configs(opt.preset));
    const fs::path out(opt.output_dir);
    if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
        return make_error(ErrorCode::INVALID_ARGUMENT, opt.output_dir, ": exists and is not an empty folder; choose a new one");
    if (opt.tokenizers_dir.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT,
                          "make-model needs --tokenizers DIR: a diffusers SD3 folder whose tokenizer/, tokenizer_2/ and "
                          "tokenizer_3/ are copied (the built-in tests/data/tiny-a/model has small ones)");
    for (const char* t : {"tokenizer", "tokenizer_2", "tokenizer_3"})
        if (!fs::is_directory(fs::path(opt.tokenizers_dir) / t))
            return make_error(ErrorCode::NOT_FOUND, opt.tokenizers_dir, ": has no ", t, "/ folder to copy");
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, opt.output_dir, ": cannot create: ", ec.message());

    json index = {{"_class_name", "StableDiffusion3Pipeline"}, {"_diffusers_version", "0.40.0.dev0"}};
    uint64_t component_seed = opt.seed;
    for (const auto& [name, library, class_name] : kIndex) {
        index[name] = {library, class_name};
        const fs::path dir = out / name;
        if (name.rfind("tokenizer", 0) == 0) {
            fs::copy(fs::path(opt.tokenizers_dir) / name, dir, fs::copy_options::recursive, ec);
            if (ec) return make_error(ErrorCode::IO_ERROR, (dir).string(), ": cannot copy the tokenizer: ", ec.message());
            continue;
        }
        fs::create_directories(dir);
        if (name == "scheduler") {
            SD3_TRY(write_json(dir / "scheduler_config.json", configs[name]));
            continue;
        }
        SD3_TRY(write_json(dir / "config.json", configs[name]));
        SD3_ASSIGN_OR_RETURN(std::vector<TensorSpec> specs, component_weight_specs(class_name, configs[name], opt.dtype));
        log_info("make-model: ", name, " (", specs.size(), " tensors)");
        const std::string stem = library == "diffusers" ? "diffusion_pytorch_model" : "model";
        SD3_TRY(write_component_weights(dir, stem, specs, splitmix64(++component_seed), opt.max_shard_bytes));
    }
    return write_json(out / "model_index.json", index);
}

}  // namespace sd3
