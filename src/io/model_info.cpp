// describe_model: the key config values worth showing per component class, and weight statistics.
#include "io/model_info.h"

#include <filesystem>
#include <map>

namespace sd3 {

namespace {

// The config keys that say what a component is, per class (everything else stays in config.json).
const std::map<std::string, std::vector<std::string>>& key_fields() {
    static const std::map<std::string, std::vector<std::string>> fields = {
        {"SD3Transformer2DModel",
         {"num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "patch_size", "joint_attention_dim",
          "pooled_projection_dim", "caption_projection_dim", "pos_embed_max_size", "qk_norm", "dual_attention_layers"}},
        {"AutoencoderKL",
         {"block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor",
          "shift_factor"}},
        {"CLIPTextModelWithProjection",
         {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "projection_dim", "hidden_act",
          "vocab_size"}},
        {"T5EncoderModel",
         {"d_model", "num_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj", "relative_attention_num_buckets",
          "vocab_size"}},
        {"FlowMatchEulerDiscreteScheduler", {"num_train_timesteps", "shift", "use_dynamic_shifting"}},
        {"CLIPTokenizer", {"model_max_length", "bos_token", "eos_token", "pad_token"}},
        {"T5Tokenizer", {"model_max_length", "eos_token", "pad_token", "extra_ids"}},
        {"T5TokenizerFast", {"model_max_length", "eos_token", "pad_token", "extra_ids"}},
    };
    return fields;
}

}  // namespace

nlohmann::ordered_json describe_model(const ModelFolder& model) {
    nlohmann::ordered_json out;
    out["path"] = model.path();
    out["components"] = nlohmann::ordered_json::array();
    for (const Component& c : model.components()) {
        nlohmann::ordered_json j;
        j["name"] = c.name;
        j["class"] = c.class_name;
        j["config_source"] = c.config_path;
        nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
        auto fields = key_fields().find(c.class_name);
        if (fields != key_fields().end())
            for (const std::string& k : fields->second)
                if (c.config.contains(k)) cfg[k] = c.config[k];
        j["config"] = cfg;
        if (c.weights) {
            int64_t params = 0;
            size_t bytes = 0;
            std::map<std::string, int64_t> dtype_counts;
            const std::vector<std::string> names = c.weights->names();
            for (const std::string& n : names) {
                const TensorMeta m = *c.weights->meta(n);
                const int64_t numel = shape_numel(m.shape);
                params += numel;
                bytes += static_cast<size_t>(numel) * dtype_size(m.dtype);
                dtype_counts[std::string(dtype_name(m.dtype))] += numel;
            }
            j["tensors"] = names.size();
            j["parameters"] = params;
            j["bytes"] = bytes;
            j["dtypes"] = dtype_counts;
            j["weights"] = c.weights->origin();
        } else if (!c.dir.empty()) {
            std::vector<std::string> files;
            for (const auto& e : std::filesystem::directory_iterator(c.dir)) files.push_back(e.path().filename().string());
            std::sort(files.begin(), files.end());
            j["files"] = files;
        }
        out["components"].push_back(std::move(j));
    }
    return out;
}

}  // namespace sd3
