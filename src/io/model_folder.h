// A Stable Diffusion 3 model as the program sees it: its components (transformer, vae, text encoders,
// tokenizers, scheduler), each with its config (diffusers' config.json, or one derived from weight shapes) and
// its weights as a TensorSource in diffusers naming. Opened from a diffusers pipeline folder here; single-file
// checkpoints and separate encoder files (io/single_file) produce the same description.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/tensor_source.h"

namespace sd3 {

// The nine components of model_index.json for SD3 (diffusers StableDiffusion3Pipeline).
inline const std::vector<std::string> kSD3Components = {"transformer",    "vae",         "text_encoder",
                                                        "text_encoder_2", "text_encoder_3", "tokenizer",
                                                        "tokenizer_2",    "tokenizer_3", "scheduler"};

struct Component {
    std::string name;          // "transformer"
    std::string library;       // "diffusers" / "transformers"
    std::string class_name;    // "SD3Transformer2DModel"
    std::string dir;           // folder holding its files ("" when it comes from a single file)
    std::string config_path;   // file the config came from, or a note like "derived from weight shapes in X"
    nlohmann::json config;     // diffusers/transformers config (for tokenizers: tokenizer_config.json)
    std::shared_ptr<const TensorSource> weights;  // null for tokenizers and the scheduler
};

class ModelFolder {
  public:
    // Reads model_index.json and every component's config; opens (maps) weights without reading them.
    // A missing or inconsistent part is an error naming the file.
    static Result<ModelFolder> open(const std::string& path);

    const std::string& path() const { return path_; }
    const std::vector<Component>& components() const { return components_; }
    const Component* find(const std::string& name) const;
    // The component or an error saying which part of the model is missing and how to supply it.
    Result<const Component*> require(const std::string& name) const;

    // Used by other layouts (single files) to build the same description.
    void add_component(Component c) { components_.push_back(std::move(c)); }
    void set_path(std::string p) { path_ = std::move(p); }

  private:
    std::string path_;
    std::vector<Component> components_;
};

}  // namespace sd3
