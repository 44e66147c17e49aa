// Trainable LoRA layout, init and LoraSet conversion (nn/lora.h).
#include "nn/lora.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/check.h"

namespace sd3 {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The block index of "transformer_blocks.{i}.…", or -1.
int64_t block_of(const std::string& module) {
    const std::string prefix = "transformer_blocks.";
    if (module.rfind(prefix, 0) != 0) return -1;
    const size_t dot = module.find('.', prefix.size());
    try {
        return std::stoll(module.substr(prefix.size(), dot - prefix.size()));
    } catch (...) {
        return -1;
    }
}

Tensor view_at(const Tensor& flat, const LoraSlot& s) {
    return flat.slice(0, s.offset, s.offset + shape_numel(s.shape)).view(s.shape);
}
}  // namespace

bool lora_target_matches(const std::string& module, const LoraTrainConfig& cfg) {
    bool hit = false;
    for (const std::string& t : cfg.target_modules) hit = hit || module == t || ends_with(module, "." + t);
    if (!hit) return false;
    if (cfg.blocks.empty()) return true;
    const int64_t b = block_of(module);
    return std::find(cfg.blocks.begin(), cfg.blocks.end(), b) != cfg.blocks.end();
}

Tensor LoraTrainable::param(size_t slot) const { return view_at(params, slots.at(slot)); }
Tensor LoraTrainable::grad(size_t slot) const { return view_at(grads, slots.at(slot)); }

const LoraSlot* LoraTrainable::find(const std::string& name) const {
    for (const LoraSlot& s : slots)
        if (s.name == name) return &s;
    return nullptr;
}

LoraSet LoraTrainable::to_lora_set() const {
    LoraSet set;
    for (size_t m = 0; m < modules.size(); ++m)
        set.modules[modules[m]] = LoraModule{param(2 * m).clone(), param(2 * m + 1).clone(), config.effective_alpha()};
    return set;
}

Status LoraTrainable::load(const LoraSet& set) {
    std::set<std::string> unused;
    for (const auto& [name, mod] : set.modules) unused.insert(name);
    for (size_t m = 0; m < modules.size(); ++m) {
        auto it = set.modules.find(modules[m]);
        if (it == set.modules.end())
            return make_error(ErrorCode::INVALID_ARGUMENT, "the LoRA has no weights for module \"", modules[m],
                              "\" that this training run adapts (different --lora targets or blocks?)");
        const Tensor a = param(2 * m), b = param(2 * m + 1);
        if (it->second.A.shape() != a.shape() || it->second.B.shape() != b.shape())
            return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA module \"", modules[m], "\" has A ",
                              shape_str(it->second.A.shape()), ", B ", shape_str(it->second.B.shape()),
                              " but this run expects A ", shape_str(a.shape()), ", B ", shape_str(b.shape()),
                              " (different rank?)");
        const float alpha = it->second.alpha;
        if (std::abs(alpha - config.effective_alpha()) > 1e-6f * std::max(1.0f, alpha))
            return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA module \"", modules[m], "\" has alpha ", alpha,
                              " but this run uses alpha ", config.effective_alpha());
        Tensor av = a, bv = b;
        av.copy_from(it->second.A);
        bv.copy_from(it->second.B);
        unused.erase(modules[m]);
    }
    if (!unused.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "the LoRA has ", unused.size(),
                          " module(s) this run does not adapt, first \"", *unused.begin(), "\"");
    return {};
}

Result<LoraTrainable> make_lora_layout(const std::vector<std::pair<std::string, Shape>>& linear_modules,
                                       const LoraTrainConfig& cfg) {
    if (cfg.rank <= 0) return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA rank must be positive, got ", cfg.rank);
    if (cfg.dropout < 0.0f || cfg.dropout >= 1.0f)
        return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA dropout must be in [0, 1), got ", cfg.dropout);
    LoraTrainable t;
    t.config = cfg;
    std::set<std::string> used_targets;
    for (const auto& [name, shape] : linear_modules) {
        if (!lora_target_matches(name, cfg)) continue;
        for (const std::string& tg : cfg.target_modules)
            if (name == tg || ends_with(name, "." + tg)) used_targets.insert(tg);
        SD3_ASSERT(shape.size() == 2, "linear weight ", name, " ", shape_str(shape));
        t.modules.push_back(name);
        t.slots.push_back({name + ".lora_A.weight", t.numel, {cfg.rank, shape[1]}});
        t.numel += cfg.rank * shape[1];
        t.slots.push_back({name + ".lora_B.weight", t.numel, {shape[0], cfg.rank}});
        t.numel += shape[0] * cfg.rank;
    }
    for (const std::string& tg : cfg.target_modules)
        if (!used_targets.count(tg))
            return make_error(ErrorCode::INVALID_ARGUMENT, "LoRA target \"", tg,
                              "\" matches no Linear module of the model",
                              cfg.blocks.empty() ? "" : " in the selected blocks",
                              " (diffusers names, e.g. to_q, add_k_proj, to_out.0, ff.net.0.proj, norm1.linear)");
    t.params = Tensor::zeros({t.numel});
    t.grads = Tensor::zeros({t.numel});
    return t;
}

void init_lora_gaussian_fill(LoraTrainable& lora, const std::function<void(float*, int64_t)>& fill_standard_normal) {
    const float std_a = 1.0f / static_cast<float>(lora.config.rank);  // peft init_lora_weights="gaussian"
    for (size_t m = 0; m < lora.modules.size(); ++m) {
        Tensor a = lora.param(2 * m);
        float* pa = a.data<float>();
        fill_standard_normal(pa, a.numel());
        for (int64_t i = 0; i < a.numel(); ++i) pa[i] *= std_a;
        lora.param(2 * m + 1).fill(0.0);
    }
    lora.grads.fill(0.0);
}

void init_lora_gaussian(LoraTrainable& lora, const std::function<float()>& standard_normal) {
    init_lora_gaussian_fill(lora, [&](float* dst, int64_t n) {
        for (int64_t i = 0; i < n; ++i) dst[i] = standard_normal();
    });
}

void init_lora_kaiming_uniform(LoraTrainable& lora, const std::function<float()>& uniform01) {
    for (size_t m = 0; m < lora.modules.size(); ++m) {
        Tensor a = lora.param(2 * m);  // [r, in]
        // kaiming_uniform_(a = sqrt(5)): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in) = 1/sqrt(fan_in).
        const float bound = 1.0f / std::sqrt(static_cast<float>(a.size(1)));
        float* pa = a.data<float>();
        for (int64_t i = 0; i < a.numel(); ++i) pa[i] = (2.0f * uniform01() - 1.0f) * bound;
        lora.param(2 * m + 1).fill(0.0);
    }
    lora.grads.fill(0.0);
}

}  // namespace sd3
