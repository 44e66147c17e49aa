// LoRA files and checkpoint folders; see checkpoint.h.
#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/check.h"
#include "io/json_file.h"
#include "io/lora_file.h"

#include "core/log.h"
#include "io/safetensors.h"

#include <unistd.h>

namespace sd3::train {

namespace fs = std::filesystem;

std::string diffusers_lora_key(const std::string& slot_name) {
    std::string n = slot_name;
    const std::string adapter = ".default.";
    const size_t p = n.find(adapter);
    if (p != std::string::npos) n.replace(p, adapter.size(), ".");
    return "transformer." + n;
}

namespace {

// "transformer_blocks.0.attn.to_q.lora_A.weight" -> module "transformer_blocks.0.attn.to_q", is_a
bool split_slot(const std::string& name, std::string* module, bool* is_a) {
    std::string n = name;
    const size_t d = n.find(".default.");
    if (d != std::string::npos) n.replace(d, 9, ".");
    for (const char* tail : {".lora_A.weight", ".lora_B.weight"}) {
        const std::string t = tail;
        if (n.size() > t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0) {
            *module = n.substr(0, n.size() - t.size());
            *is_a = t[6] == 'A';
            return true;
        }
    }
    return false;
}

}  // namespace

LoraSet lora_set_from_params(const std::vector<LoraSlot>& slots, const float* params, const LoraSettings& lora) {
    LoraSet set;
    for (const LoraSlot& s : slots) {
        std::string module;
        bool is_a = false;
        SD3_ASSERT(split_slot(s.name, &module, &is_a), "not a LoRA slot name: ", s.name);
        LoraModule& m = set.modules[module];
        Tensor v = Tensor::empty(s.shape, DType::F32);
        std::copy(params + s.offset, params + s.offset + shape_numel(s.shape), v.data<float>());
        (is_a ? m.A : m.B) = v;
        m.alpha = lora.effective_alpha();
    }
    return set;
}

Status save_lora_params(const std::string& path, const std::vector<LoraSlot>& slots, const float* params,
                        const LoraSettings& lora) {
    return sd3::write_lora_file(path, lora_set_from_params(slots, params, lora));
}

Status load_lora_params(const std::string& path, const std::vector<LoraSlot>& slots, float* params) {
    SD3_ASSIGN_OR_RETURN(LoraSet set, sd3::read_lora_file(path));
    size_t used = 0;
    for (const LoraSlot& s : slots) {
        std::string module;
        bool is_a = false;
        SD3_ASSERT(split_slot(s.name, &module, &is_a), "not a LoRA slot name: ", s.name);
        auto it = set.modules.find(module);
        if (it == set.modules.end())
            return make_error(ErrorCode::CORRUPT_FILE, path, " has no LoRA for ", module,
                              " (was it trained with other --lora_layers or --lora_blocks?)");
        const Tensor& t = is_a ? it->second.A : it->second.B;
        if (t.shape() != s.shape)
            return make_error(ErrorCode::CORRUPT_FILE, path, ": ", module, is_a ? " lora_A" : " lora_B", " is ",
                              shape_str(t.shape()), ", expected ", shape_str(s.shape), " (other --rank?)");
        Tensor dst = Tensor::borrow(params + s.offset, s.shape, DType::F32, kCPU);
        dst.copy_from(t);
        if (is_a) ++used;
    }
    if (used != set.modules.size())
        return make_error(ErrorCode::CORRUPT_FILE, path, " has LoRA modules that this model's adapters do not have (",
                          set.modules.size(), " in the file, ", used, " here; other --lora_layers or --lora_blocks?)");
    return {};
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& output_dir) {
    std::vector<std::pair<int64_t, std::string>> out;
    std::error_code ec;
    if (!fs::is_directory(output_dir, ec)) return out;
    for (const auto& e : fs::directory_iterator(output_dir, ec)) {
        const std::string name = e.path().filename().string();
        if (!e.is_directory() || name.rfind("checkpoint-", 0) != 0) continue;
        const std::string num = name.substr(11);
        if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
        out.emplace_back(std::stoll(num), e.path().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

namespace {


void sync_dir(const fs::path& dir) {
    FILE* f = std::fopen(dir.c_str(), "r");
    if (f) {
        fsync(fileno(f));
        std::fclose(f);
    }
}

}  // namespace

Result<std::string> save_checkpoint(const std::string& output_dir, const TrainerState& state,
                                    const std::vector<LoraSlot>& slots, const float* params,
                                    const LoraSettings& lora, const Optimizer& optimizer, int total_limit) {
    const fs::path final_dir = fs::path(output_dir) / str_cat("checkpoint-", state.global_step);
    const fs::path tmp_dir = fs::path(output_dir) / str_cat(".checkpoint-", state.global_step, ".tmp");
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    fs::create_directories(tmp_dir, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, "cannot create ", tmp_dir.string(), ": ", ec.message());
    // reference: remove the oldest so that, with the new one, at most total_limit remain
    if (total_limit > 0) {
        auto existing = list_checkpoints(output_dir);
        existing.erase(std::remove_if(existing.begin(), existing.end(),
                                      [&](const auto& c) { return c.first == state.global_step; }),
                       existing.end());
        const int64_t excess = static_cast<int64_t>(existing.size()) - total_limit + 1;
        for (int64_t i = 0; i < excess; ++i) {
            log_info("removing old checkpoint ", existing[i].second);
            fs::remove_all(existing[i].second, ec);
        }
    }
    SD3_TRY(save_lora_params((tmp_dir / kLoraWeightName).string(), slots, params, lora));
    SD3_TRY(write_safetensors((tmp_dir / "optimizer.safetensors").string(), optimizer.state()));
    nlohmann::ordered_json j;
    j["global_step"] = state.global_step;
    j["micro_steps"] = state.micro_steps;
    j["epoch"] = state.epoch;
    j["batch_in_epoch"] = state.batch_in_epoch;
    j["settings_hash"] = state.settings_hash;
    j["last_loss"] = state.last_loss;
    j["rng"] = "streams keyed by (seed, micro step): nothing else to restore";
    SD3_TRY(write_text_atomic((tmp_dir / "trainer_state.json").string(), j.dump(2)));  // the completion marker, written last
    sync_dir(tmp_dir);
    if (fs::exists(final_dir)) {  // re-saving the same step (a resumed run): replace
        const fs::path old = fs::path(output_dir) / str_cat(".checkpoint-", state.global_step, ".old");
        fs::remove_all(old, ec);
        fs::rename(final_dir, old, ec);
        fs::remove_all(old, ec);
    }
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, "cannot rename ", tmp_dir.string(), " to ", final_dir.string(), ": ",
                              ec.message());
    sync_dir(output_dir);
    return final_dir.string();
}

Result<std::string> resolve_checkpoint(const std::string& output_dir, const std::string& spec) {
    if (spec == "latest") {
        auto all = list_checkpoints(output_dir);
        for (auto it = all.rbegin(); it != all.rend(); ++it)
            if (fs::exists(fs::path(it->second) / "trainer_state.json")) return it->second;
        return std::string();
    }
    fs::path p(spec);
    if (!fs::is_directory(p)) p = fs::path(output_dir) / p.filename();  // the reference's basename-under-output_dir
    if (!fs::is_directory(p))
        return make_error(ErrorCode::NOT_FOUND, "checkpoint ", spec, " not found (give a checkpoint-N folder or 'latest')");
    if (!fs::exists(p / "trainer_state.json"))
        return make_error(ErrorCode::CORRUPT_FILE, "checkpoint ", p.string(), " is incomplete (no trainer_state.json)");
    return p.string();
}

Status load_checkpoint(const std::string& dir, const std::vector<LoraSlot>& slots, float* params,
                       Optimizer& optimizer, TrainerState* state, const std::string& expected_settings_hash) {
    const fs::path d(dir);
    std::ifstream f(d / "trainer_state.json");
    if (!f) return make_error(ErrorCode::NOT_FOUND, "checkpoint ", dir, " has no trainer_state.json");
    nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
    if (j.is_discarded() || !j.contains("global_step"))
        return make_error(ErrorCode::CORRUPT_FILE, (d / "trainer_state.json").string(), " is not valid");
    state->global_step = j.value("global_step", int64_t{0});
    state->micro_steps = j.value("micro_steps", int64_t{0});
    state->epoch = j.value("epoch", int64_t{0});
    state->batch_in_epoch = j.value("batch_in_epoch", int64_t{0});
    state->settings_hash = j.value("settings_hash", std::string());
    state->last_loss = j.value("last_loss", 0.0);
    if (!expected_settings_hash.empty() && state->settings_hash != expected_settings_hash)
        return make_error(ErrorCode::INVALID_ARGUMENT, "checkpoint ", dir,
                          " was written with other training settings (data, LoRA, batch, optimizer, schedule or seed); "
                          "resume with the same settings or start a new --output_dir");
    SD3_TRY(load_lora_params((d / kLoraWeightName).string(), slots, params).with_context("restoring the LoRA"));
    SD3_ASSIGN_OR_RETURN(NamedTensors opt, read_all_safetensors((d / "optimizer.safetensors").string()));
    SD3_TRY(optimizer.load_state(opt).with_context(str_cat("restoring the optimizer from ", dir)));
    return {};
}

}  // namespace sd3::train
