// Reading JSON files (and writing small text files atomically) (configs, indexes, tokenizer files) with errors that name the file.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"

namespace sd3 {

Result<nlohmann::json> read_json_file(const std::string& path);
// Writes `text` to path.tmp and renames it over `path`, so a reader never sees a half-written file (a full disk
// leaves the old file intact).
Status write_text_atomic(const std::string& path, const std::string& text);

// Typed field access for configs: a missing or mistyped field is an error naming the file and the key.
template <typename T>
Result<T> json_field(const nlohmann::json& j, const std::string& key, const std::string& file) {
    if (!j.contains(key))
        return make_error(ErrorCode::CORRUPT_FILE, file, ": missing \"", key, "\"");
    try {
        return j.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
        return make_error(ErrorCode::CORRUPT_FILE, file, ": \"", key, "\" has the wrong type (", j.at(key).dump(), ")");
    }
}

// Like json_field, but `fallback` when the key is absent or null (the reference's constructor default).
template <typename T>
Result<T> json_field_or(const nlohmann::json& j, const std::string& key, const T& fallback, const std::string& file) {
    if (!j.contains(key) || j.at(key).is_null()) return fallback;
    return json_field<T>(j, key, file);
}

}  // namespace sd3
