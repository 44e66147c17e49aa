// TrainCache: hashed safetensors entries for prompt encodings and latent distributions.
#include "train/cache.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/log.h"
#include "io/safetensors.h"

namespace sd3::train {

namespace fs = std::filesystem;

Hasher& Hasher::add(const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) {
        a_ = (a_ ^ p[i]) * 1099511628211ull;
        b_ = (b_ ^ p[i]) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
    }
    return *this;
}

Hasher& Hasher::add(const Tensor& t) {
    add(std::string(dtype_name(t.dtype())));
    for (int64_t d : t.shape()) add(&d, sizeof d);
    const Tensor c = t.contiguous();
    return add(c.raw(), c.nbytes());
}

std::string Hasher::hex() const {
    auto mix = [](uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    };
    char buf[33];
    std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(mix(a_)),
                  static_cast<unsigned long long>(mix(b_ ^ a_)));
    return buf;
}

Result<TrainCache> TrainCache::open(const std::string& dir, const std::string& settings_key) {
    std::error_code ec;
    fs::create_directories(fs::path(dir) / "prompts", ec);
    if (!ec) fs::create_directories(fs::path(dir) / "latents", ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, "cannot create the cache folder ", dir, ": ", ec.message());
    TrainCache c;
    c.dir_ = dir;
    c.settings_key_ = settings_key;
    return c;
}

std::string TrainCache::prompt_path(const std::string& prompt) const {
    return (fs::path(dir_) / "prompts" / (Hasher().add(settings_key_).add(prompt).hex() + ".safetensors")).string();
}

std::string TrainCache::latent_path(const Tensor& pixels) const {
    return (fs::path(dir_) / "latents" / (Hasher().add(settings_key_).add(pixels).hex() + ".safetensors")).string();
}

bool TrainCache::has_latent(const Tensor& pixels) const { return fs::exists(latent_path(pixels)); }

namespace {

Result<Tensor> take(const NamedTensors& t, const std::string& name, const std::string& path) {
    for (const auto& [n, v] : t)
        if (n == name) return v;
    return make_error(ErrorCode::CORRUPT_FILE, "cache entry ", path, " has no '", name,
                      "' (delete the cache folder to rebuild it)");
}

}  // namespace

Result<std::vector<EncodedPrompt>> TrainCache::prompts(
    const std::vector<std::string>& prompts,
    const std::function<Result<std::vector<EncodedPrompt>>(const std::vector<std::string>&)>& encode) {
    std::map<std::string, EncodedPrompt> found;
    std::vector<std::string> missing;
    for (const std::string& p : prompts) {
        if (found.count(p) || std::find(missing.begin(), missing.end(), p) != missing.end()) continue;
        const std::string path = prompt_path(p);
        if (fs::exists(path)) {
            SD3_ASSIGN_OR_RETURN(NamedTensors t, read_all_safetensors(path));
            EncodedPrompt e;
            SD3_ASSIGN_OR_RETURN(e.prompt_embeds, take(t, "prompt_embeds", path));
            SD3_ASSIGN_OR_RETURN(e.pooled, take(t, "pooled", path));
            found[p] = e;
            ++stats_.prompts_hit;
        } else {
            missing.push_back(p);
        }
    }
    if (!missing.empty()) {
        if (!encode) return make_error(ErrorCode::INTERNAL, "prompt encodings are missing and no encoder is available");
        SD3_ASSIGN_OR_RETURN(std::vector<EncodedPrompt> enc, encode(missing));
        if (enc.size() != missing.size())
            return make_error(ErrorCode::INTERNAL, "prompt encoder returned ", enc.size(), " results for ",
                              missing.size(), " prompts");
        for (size_t i = 0; i < missing.size(); ++i) {
            SD3_TRY(write_safetensors(prompt_path(missing[i]),
                                      {{"prompt_embeds", enc[i].prompt_embeds}, {"pooled", enc[i].pooled}},
                                      {{"prompt", missing[i]}}));
            found[missing[i]] = enc[i];
            ++stats_.prompts_encoded;
        }
    }
    std::vector<EncodedPrompt> out;
    for (const std::string& p : prompts) out.push_back(found[p]);
    return out;
}

Result<LatentDist> TrainCache::latent(const Tensor& pixels,
                                      const std::function<Result<LatentDist>(const Tensor&)>& encode) {
    const std::string path = latent_path(pixels);
    if (fs::exists(path)) {
        SD3_ASSIGN_OR_RETURN(NamedTensors t, read_all_safetensors(path));
        LatentDist d;
        SD3_ASSIGN_OR_RETURN(d.mean, take(t, "mean", path));
        SD3_ASSIGN_OR_RETURN(d.logvar, take(t, "logvar", path));
        ++stats_.latents_hit;
        return d;
    }
    if (!encode) return make_error(ErrorCode::INTERNAL, "a latent is missing from the cache and no VAE is loaded");
    SD3_ASSIGN_OR_RETURN(LatentDist d, encode(pixels));
    SD3_TRY(write_safetensors(path, {{"mean", d.mean}, {"logvar", d.logvar}}));
    ++stats_.latents_encoded;
    return d;
}

}  // namespace sd3::train
