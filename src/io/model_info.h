// A description of a model for `sd3tune info`: per component its class, key config values, parameter count,
// dtypes and bytes. Kept in the library so every layout (folder, single file) is described the same way.
#pragma once

#include <nlohmann/json.hpp>

#include "io/model_folder.h"

namespace sd3 {

// {"path", "components": [{"name", "class", "config": {key values}, "parameters", "bytes", "dtypes": {...}}]}
nlohmann::ordered_json describe_model(const ModelFolder& model);

}  // namespace sd3
