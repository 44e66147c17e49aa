// The cache phase's store (DESIGN.md "What it does"): one safetensors file per prompt encoding and per image
// latent distribution, under a cache folder, named by a hash of what determines it (prompt text + encoder
// settings + model identity; preprocessed pixels + model identity). A re-run finds them and skips the encoders;
// files are written atomically, so an interrupted cache phase leaves only whole entries.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "train/components.h"

namespace sd3::train {

// 128-bit content hash (two FNV-1a-64 lanes over the bytes, finalised with splitmix64), as 32 hex digits.
// For cache keys, not security.
class Hasher {
  public:
    Hasher& add(const void* data, size_t bytes);
    Hasher& add(const std::string& s) {
        const uint64_t n = s.size();
        add(&n, sizeof n);
        return add(s.data(), s.size());
    }
    Hasher& add(const Tensor& t);  // dtype, shape and bytes (contiguous copy if needed)
    std::string hex() const;

  private:
    uint64_t a_ = 1469598103934665603ull, b_ = 0x84222325cbf29ce4ull;
};

struct CacheStats {
    int prompts_hit = 0, prompts_encoded = 0, latents_hit = 0, latents_encoded = 0;
};

class TrainCache {
  public:
    // Creates the folder (and prompts/, latents/) if needed.
    static Result<TrainCache> open(const std::string& dir, const std::string& settings_key);

    // Encodings of `prompts` (duplicates allowed), calling `encode` once with only the missing distinct prompts.
    Result<std::vector<EncodedPrompt>> prompts(
        const std::vector<std::string>& prompts,
        const std::function<Result<std::vector<EncodedPrompt>>(const std::vector<std::string>&)>& encode);

    // The latent distribution of preprocessed pixels [3, R, R]; `encode` runs on a miss.
    Result<LatentDist> latent(const Tensor& pixels, const std::function<Result<LatentDist>(const Tensor&)>& encode);
    // Whether the latent of these pixels is already cached (to decide whether the VAE must be loaded at all).
    bool has_latent(const Tensor& pixels) const;

    const CacheStats& stats() const { return stats_; }
    const std::string& dir() const { return dir_; }

  private:
    std::string prompt_path(const std::string& prompt) const;
    std::string latent_path(const Tensor& pixels) const;
    std::string dir_, settings_key_;
    CacheStats stats_;
};

}  // namespace sd3::train
