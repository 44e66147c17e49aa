// Name rules for Stability's single-file dialect and the matcher that applies them in both directions.
// Rule tables follow diffusers' single_file_utils.py converters (sd3-architecture.md §3.2 MMDiT, §3.3 VAE, §3.4
// text encoders); ../shared/golden/make_single_file.py is their exact inverse.
#include "io/name_map.h"

#include "core/check.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>

namespace sd3 {

std::string_view map_op_name(MapOp op) {
    switch (op) {
        case MapOp::COPY: return "copy";
        case MapOp::ROW_CHUNK: return "row chunk";
        case MapOp::SWAP_HALVES: return "swap halves";
        case MapOp::CONV1X1_TO_LINEAR: return "1x1 conv to linear";
        case MapOp::IGNORE: return "ignored";
    }
    return "?";
}

std::string_view component_kind_name(ComponentKind kind) {
    switch (kind) {
        case ComponentKind::MMDIT: return "MMDiT";
        case ComponentKind::VAE: return "VAE";
        case ComponentKind::CLIP: return "CLIP text encoder";
        case ComponentKind::T5: return "T5 encoder";
    }
    return "?";
}

namespace {

constexpr std::string_view kWB = "{p:weight|bias}";

// MMDiT: Stability's mmditx.py names -> SD3Transformer2DModel (§3.2, diffusers single_file_utils.py
// convert_sd3_transformer_checkpoint_to_diffusers). The last block's context adaLN and the final adaLN store
// (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift).
const std::vector<NameRule>& mmdit_rules() {
    static const std::vector<NameRule> rules = {
        {"pos_embed", {"pos_embed.pos_embed"}},
        {"x_embedder.proj.{p:weight|bias}", {"pos_embed.proj.{p}"}},
        {"t_embedder.mlp.0.{p:weight|bias}", {"time_text_embed.timestep_embedder.linear_1.{p}"}},
        {"t_embedder.mlp.2.{p:weight|bias}", {"time_text_embed.timestep_embedder.linear_2.{p}"}},
        {"y_embedder.mlp.0.{p:weight|bias}", {"time_text_embed.text_embedder.linear_1.{p}"}},
        {"y_embedder.mlp.2.{p:weight|bias}", {"time_text_embed.text_embedder.linear_2.{p}"}},
        {"context_embedder.{p:weight|bias}", {"context_embedder.{p}"}},
        {"final_layer.linear.{p:weight|bias}", {"proj_out.{p}"}},
        {"final_layer.adaLN_modulation.1.{p:weight|bias}", {"norm_out.linear.{p}"}, MapOp::SWAP_HALVES},
        {"joint_blocks.{i}.x_block.attn.qkv.{p:weight|bias}",
         {"transformer_blocks.{i}.attn.to_q.{p}", "transformer_blocks.{i}.attn.to_k.{p}",
          "transformer_blocks.{i}.attn.to_v.{p}"},
         MapOp::ROW_CHUNK},
        {"joint_blocks.{i}.context_block.attn.qkv.{p:weight|bias}",
         {"transformer_blocks.{i}.attn.add_q_proj.{p}", "transformer_blocks.{i}.attn.add_k_proj.{p}",
          "transformer_blocks.{i}.attn.add_v_proj.{p}"},
         MapOp::ROW_CHUNK},
        {"joint_blocks.{i}.x_block.attn.proj.{p:weight|bias}", {"transformer_blocks.{i}.attn.to_out.0.{p}"}},
        {"joint_blocks.{i}.context_block.attn.proj.{p:weight|bias}", {"transformer_blocks.{i}.attn.to_add_out.{p}"}},
        {"joint_blocks.{i}.x_block.adaLN_modulation.1.{p:weight|bias}", {"transformer_blocks.{i}.norm1.linear.{p}"}},
        {"joint_blocks.{i}.context_block.adaLN_modulation.1.{p:weight|bias}",
         {"transformer_blocks.{i}.norm1_context.linear.{p}"},
         MapOp::SWAP_HALVES,
         RuleWhen::LAST_BLOCK},
        {"joint_blocks.{i}.context_block.adaLN_modulation.1.{p:weight|bias}",
         {"transformer_blocks.{i}.norm1_context.linear.{p}"}},
        {"joint_blocks.{i}.x_block.mlp.fc1.{p:weight|bias}", {"transformer_blocks.{i}.ff.net.0.proj.{p}"}},
        {"joint_blocks.{i}.x_block.mlp.fc2.{p:weight|bias}", {"transformer_blocks.{i}.ff.net.2.{p}"}},
        {"joint_blocks.{i}.context_block.mlp.fc1.{p:weight|bias}", {"transformer_blocks.{i}.ff_context.net.0.proj.{p}"}},
        {"joint_blocks.{i}.context_block.mlp.fc2.{p:weight|bias}", {"transformer_blocks.{i}.ff_context.net.2.{p}"}},
        // SD3.5: qk RMSNorm and the second (image-only) attention of dual-attention blocks (§1.10).
        {"joint_blocks.{i}.x_block.attn.ln_q.weight", {"transformer_blocks.{i}.attn.norm_q.weight"}},
        {"joint_blocks.{i}.x_block.attn.ln_k.weight", {"transformer_blocks.{i}.attn.norm_k.weight"}},
        {"joint_blocks.{i}.context_block.attn.ln_q.weight", {"transformer_blocks.{i}.attn.norm_added_q.weight"}},
        {"joint_blocks.{i}.context_block.attn.ln_k.weight", {"transformer_blocks.{i}.attn.norm_added_k.weight"}},
        {"joint_blocks.{i}.x_block.attn2.qkv.{p:weight|bias}",
         {"transformer_blocks.{i}.attn2.to_q.{p}", "transformer_blocks.{i}.attn2.to_k.{p}",
          "transformer_blocks.{i}.attn2.to_v.{p}"},
         MapOp::ROW_CHUNK},
        {"joint_blocks.{i}.x_block.attn2.proj.{p:weight|bias}", {"transformer_blocks.{i}.attn2.to_out.0.{p}"}},
        {"joint_blocks.{i}.x_block.attn2.ln_q.weight", {"transformer_blocks.{i}.attn2.norm_q.weight"}},
        {"joint_blocks.{i}.x_block.attn2.ln_k.weight", {"transformer_blocks.{i}.attn2.norm_k.weight"}},
    };
    return rules;
}

// VAE: LDM (first_stage_model.*) names -> AutoencoderKL (§3.3). Decoder up blocks are numbered from the other
// end; the mid attention's q/k/v/proj_out are 1x1 convs in LDM and Linears in diffusers.
const std::vector<NameRule>& vae_rules() {
    static const std::vector<NameRule> rules = {
        {"{c:encoder|decoder}.conv_in.{p:weight|bias}", {"{c}.conv_in.{p}"}},
        {"{c:encoder|decoder}.conv_out.{p:weight|bias}", {"{c}.conv_out.{p}"}},
        {"{c:encoder|decoder}.norm_out.{p:weight|bias}", {"{c}.conv_norm_out.{p}"}},
        {"encoder.down.{i}.block.{j}.nin_shortcut.{p:weight|bias}",
         {"encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}"}},
        {"encoder.down.{i}.block.{j}.{l:norm1|conv1|norm2|conv2}.{p:weight|bias}",
         {"encoder.down_blocks.{i}.resnets.{j}.{l}.{p}"}},
        {"encoder.down.{i}.downsample.conv.{p:weight|bias}", {"encoder.down_blocks.{i}.downsamplers.0.conv.{p}"}},
        {"decoder.up.{~i}.block.{j}.nin_shortcut.{p:weight|bias}",
         {"decoder.up_blocks.{i}.resnets.{j}.conv_shortcut.{p}"}},
        {"decoder.up.{~i}.block.{j}.{l:norm1|conv1|norm2|conv2}.{p:weight|bias}",
         {"decoder.up_blocks.{i}.resnets.{j}.{l}.{p}"}},
        {"decoder.up.{~i}.upsample.conv.{p:weight|bias}", {"decoder.up_blocks.{i}.upsamplers.0.conv.{p}"}},
        {"{c:encoder|decoder}.mid.block_1.{l:norm1|conv1|norm2|conv2}.{p:weight|bias}",
         {"{c}.mid_block.resnets.0.{l}.{p}"}},
        {"{c:encoder|decoder}.mid.block_2.{l:norm1|conv1|norm2|conv2}.{p:weight|bias}",
         {"{c}.mid_block.resnets.1.{l}.{p}"}},
        {"{c:encoder|decoder}.mid.attn_1.norm.{p:weight|bias}", {"{c}.mid_block.attentions.0.group_norm.{p}"}},
        {"{c:encoder|decoder}.mid.attn_1.q.weight", {"{c}.mid_block.attentions.0.to_q.weight"},
         MapOp::CONV1X1_TO_LINEAR},
        {"{c:encoder|decoder}.mid.attn_1.k.weight", {"{c}.mid_block.attentions.0.to_k.weight"},
         MapOp::CONV1X1_TO_LINEAR},
        {"{c:encoder|decoder}.mid.attn_1.v.weight", {"{c}.mid_block.attentions.0.to_v.weight"},
         MapOp::CONV1X1_TO_LINEAR},
        {"{c:encoder|decoder}.mid.attn_1.proj_out.weight", {"{c}.mid_block.attentions.0.to_out.0.weight"},
         MapOp::CONV1X1_TO_LINEAR},
        {"{c:encoder|decoder}.mid.attn_1.q.bias", {"{c}.mid_block.attentions.0.to_q.bias"}},
        {"{c:encoder|decoder}.mid.attn_1.k.bias", {"{c}.mid_block.attentions.0.to_k.bias"}},
        {"{c:encoder|decoder}.mid.attn_1.v.bias", {"{c}.mid_block.attentions.0.to_v.bias"}},
        {"{c:encoder|decoder}.mid.attn_1.proj_out.bias", {"{c}.mid_block.attentions.0.to_out.0.bias"}},
        // SD1/SDXL-style VAEs have these; SD3's has none (use_quant_conv false), but map them if present.
        {"quant_conv.{p:weight|bias}", {"quant_conv.{p}"}},
        {"post_quant_conv.{p:weight|bias}", {"post_quant_conv.{p}"}},
    };
    return rules;
}

// CLIP: HF transformers names are used inside the single file (§3.4); position_ids is a buffer some exports carry.
const std::vector<NameRule>& clip_rules() {
    static const std::vector<NameRule> rules = {
        {"text_model.embeddings.position_ids", {}, MapOp::IGNORE},
        {"logit_scale", {}, MapOp::IGNORE},  // CLIP's contrastive temperature: no part of text encoding
        {"text_model.{r:**}", {"text_model.{r}"}},
        {"text_projection.weight", {"text_projection.weight"}},
    };
    return rules;
}

// T5: HF names (§3.4). encoder.embed_tokens is tied to shared; files carry one or both (handled in map_component).
const std::vector<NameRule>& t5_rules() {
    static const std::vector<NameRule> rules = {
        {"shared.weight", {"shared.weight"}},
        {"encoder.embed_tokens.weight", {"shared.weight"}},
        {"encoder.{r:**}", {"encoder.{r}"}},
    };
    return rules;
}

// --- pattern matching ---

std::vector<std::string_view> split_dots(std::string_view s) {
    std::vector<std::string_view> out;
    size_t start = 0;
    while (true) {
        const size_t dot = s.find('.', start);
        out.push_back(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    return out;
}

struct Placeholder {
    std::string_view name;
    bool reversed = false;                 // {~i}
    bool rest = false;                     // {r:**}
    std::vector<std::string_view> choices;  // {p:a|b}; empty = integer
};

std::optional<Placeholder> parse_placeholder(std::string_view seg) {
    if (seg.size() < 3 || seg.front() != '{' || seg.back() != '}') return std::nullopt;
    std::string_view body = seg.substr(1, seg.size() - 2);
    Placeholder ph;
    if (body.front() == '~') {
        ph.reversed = true;
        body.remove_prefix(1);
    }
    const size_t colon = body.find(':');
    ph.name = body.substr(0, colon);
    if (colon != std::string_view::npos) {
        std::string_view alts = body.substr(colon + 1);
        if (alts == "**") {
            ph.rest = true;
        } else {
            size_t start = 0;
            while (true) {
                const size_t bar = alts.find('|', start);
                ph.choices.push_back(alts.substr(start, bar == std::string_view::npos ? std::string_view::npos : bar - start));
                if (bar == std::string_view::npos) break;
                start = bar + 1;
            }
        }
    }
    return ph;
}

using Captures = std::map<std::string, std::string, std::less<>>;

std::optional<int> parse_index(std::string_view s) {
    if (s.empty() || (s.size() > 1 && s[0] == '0')) return std::nullopt;  // canonical decimal only
    int v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
    return v;
}

// Placeholder kinds are declared once per rule (on its stored side, e.g. {p:weight|bias}); the other side
// refers to them by name ({p}).
using Decls = std::map<std::string, Placeholder, std::less<>>;
Decls declarations(const NameRule& r) {
    Decls d;
    for (std::string_view seg : split_dots(r.stored))
        if (auto ph = parse_placeholder(seg)) {
            ph->reversed = false;
            d[std::string(ph->name)] = *ph;
        }
    return d;
}

// `count` is the number of indexed blocks that {~i} counts back from.
bool match_pattern(std::string_view pattern, std::string_view name, int count, const Decls& decls, Captures& caps) {
    const auto ps = split_dots(pattern);
    const auto ns = split_dots(name);
    size_t n = 0;
    for (size_t k = 0; k < ps.size(); ++k) {
        auto ph = parse_placeholder(ps[k]);
        if (ph && ph->choices.empty() && !ph->rest) {
            auto it = decls.find(ph->name);
            if (it != decls.end()) {
                const bool reversed = ph->reversed;
                ph = it->second;
                ph->reversed = reversed;
            }
        }
        if (ph && ph->rest) {
            if (n >= ns.size()) return false;
            // The remaining segments are the tail of `name`, dots included.
            const size_t offset = static_cast<size_t>(ns[n].data() - name.data());
            caps[std::string(ph->name)] = std::string(name.substr(offset));
            n = ns.size();
            return true;
        }
        if (n >= ns.size()) return false;
        const std::string_view seg = ns[n++];
        if (!ph) {
            if (seg != ps[k]) return false;
            continue;
        }
        std::string value;
        if (!ph->choices.empty()) {
            if (std::find(ph->choices.begin(), ph->choices.end(), seg) == ph->choices.end()) return false;
            value = std::string(seg);
        } else {
            const auto idx = parse_index(seg);
            if (!idx) return false;
            int v = *idx;
            if (ph->reversed) {
                if (v >= count) return false;
                v = count - 1 - v;
            }
            value = std::to_string(v);
        }
        auto it = caps.find(ph->name);
        if (it != caps.end() && it->second != value) return false;
        caps[std::string(ph->name)] = value;
    }
    return n == ns.size();
}

std::string expand_pattern(std::string_view pattern, const Captures& caps, int count) {
    std::string out;
    for (std::string_view seg : split_dots(pattern)) {
        if (!out.empty()) out += '.';
        const auto ph = parse_placeholder(seg);
        if (!ph) {
            out += seg;
            continue;
        }
        const auto it = caps.find(ph->name);
        SD3_ASSERT(it != caps.end(), "name rule uses {", ph->name, "} that its other side does not capture");
        if (ph->reversed)
            out += std::to_string(count - 1 - std::stoi(it->second));
        else
            out += it->second;
    }
    return out;
}

bool rule_applies(const NameRule& r, const Captures& caps, int count) {
    if (r.when == RuleWhen::ALWAYS) return true;
    const auto it = caps.find("i");
    return it != caps.end() && std::stoi(it->second) == count - 1;
}

// The block count that {~i} and LAST_BLOCK refer to, from stored or diffusers names.
int context_count(ComponentKind kind, const std::vector<std::string>& names, bool stored) {
    if (kind == ComponentKind::MMDIT) return count_indexed(names, stored ? "joint_blocks." : "transformer_blocks.");
    if (kind == ComponentKind::VAE) return count_indexed(names, stored ? "decoder.up." : "decoder.up_blocks.");
    return 0;
}

std::string list_names(const std::vector<std::string>& names, size_t max = 20) {
    std::string list;
    for (size_t i = 0; i < names.size() && i < max; ++i) list += "\n  " + names[i];
    if (names.size() > max) list += str_cat("\n  ... and ", names.size() - max, " more");
    return list;
}

}  // namespace

const std::vector<NameRule>& stability_rules(ComponentKind kind) {
    switch (kind) {
        case ComponentKind::MMDIT: return mmdit_rules();
        case ComponentKind::VAE: return vae_rules();
        case ComponentKind::CLIP: return clip_rules();
        case ComponentKind::T5: return t5_rules();
    }
    return mmdit_rules();
}

const std::vector<StabilityPrefix>& stability_prefixes() {
    static const std::vector<StabilityPrefix> prefixes = {
        {"model.diffusion_model.", "transformer", ComponentKind::MMDIT},
        {"first_stage_model.", "vae", ComponentKind::VAE},
        {"text_encoders.clip_l.transformer.", "text_encoder", ComponentKind::CLIP},
        {"text_encoders.clip_g.transformer.", "text_encoder_2", ComponentKind::CLIP},
        {"text_encoders.t5xxl.transformer.", "text_encoder_3", ComponentKind::T5},
    };
    return prefixes;
}

int count_indexed(const std::vector<std::string>& names, std::string_view before) {
    int count = 0;
    for (const std::string& n : names) {
        if (!n.starts_with(before)) continue;
        const size_t dot = n.find('.', before.size());
        if (dot == std::string::npos) continue;
        const auto idx = parse_index(std::string_view(n).substr(before.size(), dot - before.size()));
        if (idx) count = std::max(count, *idx + 1);
    }
    return count;
}

std::vector<RuleMatch> stored_to_diffusers(ComponentKind kind, std::string_view stored, int count) {
    for (const NameRule& r : stability_rules(kind)) {
        Captures caps;
        if (!match_pattern(r.stored, stored, count, declarations(r), caps) || !rule_applies(r, caps, count)) continue;
        if (r.op == MapOp::IGNORE) return {RuleMatch{"", MapOp::IGNORE, 0, 0}};
        std::vector<RuleMatch> out;
        const int parts = static_cast<int>(r.diffusers.size());
        for (int part = 0; part < parts; ++part)
            out.push_back(RuleMatch{expand_pattern(r.diffusers[part], caps, count), r.op, part, parts});
        return out;
    }
    return {};
}

std::optional<RuleMatch> diffusers_to_stored(ComponentKind kind, std::string_view diffusers, int count) {
    for (const NameRule& r : stability_rules(kind)) {
        if (r.op == MapOp::IGNORE) continue;
        // Writing never produces the tied duplicate encoder.embed_tokens; shared.weight maps back to itself.
        if (kind == ComponentKind::T5 && r.stored == "encoder.embed_tokens.weight") continue;
        for (size_t part = 0; part < r.diffusers.size(); ++part) {
            Captures caps;
            if (!match_pattern(r.diffusers[part], diffusers, count, declarations(r), caps) || !rule_applies(r, caps, count))
                continue;
            return RuleMatch{expand_pattern(r.stored, caps, count), r.op, static_cast<int>(part),
                             static_cast<int>(r.diffusers.size())};
        }
    }
    return std::nullopt;
}

Result<ComponentMapping> map_component(ComponentKind kind, const std::string& component, const std::string& prefix,
                                       const std::vector<std::string>& stored_names) {
    ComponentMapping m;
    m.component = component;
    m.kind = kind;
    m.prefix = prefix;
    std::vector<std::string> relative;  // "" for a name outside the prefix: no rule matches it
    for (const std::string& n : stored_names) relative.push_back(n.starts_with(prefix) ? n.substr(prefix.size()) : "");
    const int count = context_count(kind, relative, /*stored=*/true);
    std::vector<std::string> unmatched;
    std::map<std::string, std::string> claimed;  // diffusers -> stored
    std::vector<std::string> clashes;
    // T5 files may carry both shared.weight and the tied encoder.embed_tokens.weight; diffusers keeps shared.
    const bool has_shared = std::find(relative.begin(), relative.end(), "shared.weight") != relative.end();
    for (size_t k = 0; k < relative.size(); ++k) {
        const std::string& rel = relative[k];
        if (kind == ComponentKind::T5 && has_shared && rel == "encoder.embed_tokens.weight") {
            m.ignored.push_back(stored_names[k]);
            continue;
        }
        const std::vector<RuleMatch> hits = stored_to_diffusers(kind, rel, count);
        const bool matched = !hits.empty();
        if (matched && hits[0].op == MapOp::IGNORE) {
            m.ignored.push_back(stored_names[k]);
            continue;
        }
        for (const RuleMatch& h : hits) {
            TensorMapping t;
            t.diffusers = h.name;
            t.stored = stored_names[k];
            t.op = h.op;
            t.part = h.part;
            t.parts = h.parts;
            if (!claimed.emplace(t.diffusers, t.stored).second)
                clashes.push_back(str_cat(t.diffusers, " (from ", claimed[t.diffusers], " and ", t.stored, ")"));
            m.tensors.push_back(std::move(t));
        }
        if (!matched) unmatched.push_back(stored_names[k]);
    }
    if (!unmatched.empty())
        return make_error(ErrorCode::CORRUPT_FILE, unmatched.size(), " tensor(s) that no ",
                          component_kind_name(kind), " name rule knows (not an SD3 ", component_kind_name(kind),
                          ", or a damaged file):", list_names(unmatched));
    if (!clashes.empty())
        return make_error(ErrorCode::CORRUPT_FILE, "two stored tensors give the same ", component, " tensor:",
                          list_names(clashes));
    std::sort(m.tensors.begin(), m.tensors.end(),
              [](const TensorMapping& a, const TensorMapping& b) { return a.diffusers < b.diffusers; });
    return m;
}

Result<std::vector<ComponentMapping>> map_stability_file(const std::vector<std::string>& stored_names) {
    std::vector<std::vector<std::string>> by_prefix(stability_prefixes().size());
    std::vector<std::string> unknown;
    for (const std::string& n : stored_names) {
        bool found = false;
        for (size_t k = 0; k < stability_prefixes().size(); ++k) {
            if (n.starts_with(stability_prefixes()[k].prefix)) {
                by_prefix[k].push_back(n);
                found = true;
                break;
            }
        }
        if (!found) unknown.push_back(n);
    }
    if (!unknown.empty()) {
        std::string known;
        for (const auto& p : stability_prefixes()) known += str_cat(known.empty() ? "" : ", ", p.prefix);
        return make_error(ErrorCode::CORRUPT_FILE, unknown.size(),
                          " tensor(s) outside the prefixes of Stability's single-file layout (", known, "):",
                          list_names(unknown));
    }
    std::vector<ComponentMapping> out;
    for (size_t k = 0; k < by_prefix.size(); ++k) {
        if (by_prefix[k].empty()) continue;
        const StabilityPrefix& p = stability_prefixes()[k];
        auto m = map_component(p.kind, std::string(p.component), std::string(p.prefix), by_prefix[k]);
        if (!m.ok()) return m.status().with_context(str_cat("tensors under ", p.prefix));
        out.push_back(std::move(m).value());
    }
    return out;
}

Result<std::vector<StoredTensorPlan>> plan_stability_component(ComponentKind kind, const std::string& prefix,
                                                               const std::vector<std::string>& diffusers_names) {
    const int count = context_count(kind, diffusers_names, /*stored=*/false);
    std::map<std::string, StoredTensorPlan> plans;  // by stored name
    std::vector<std::string> unmatched;
    for (const std::string& d : diffusers_names) {
        const std::optional<RuleMatch> hit = diffusers_to_stored(kind, d, count);
        const bool matched = hit.has_value();
        if (matched) {
            const std::string stored = prefix + hit->name;
            StoredTensorPlan& plan = plans[stored];
            plan.stored = stored;
            plan.op = hit->op;
            plan.diffusers.resize(hit->parts);
            plan.diffusers[hit->part] = d;
        }
        if (!matched) unmatched.push_back(d);
    }
    if (!unmatched.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, unmatched.size(), " ", component_kind_name(kind),
                          " tensor(s) that the single-file layout has no name for:", list_names(unmatched));
    std::vector<std::string> incomplete;
    std::vector<StoredTensorPlan> out;
    for (auto& [stored, plan] : plans) {
        for (const std::string& part : plan.diffusers)
            if (part.empty()) {
                std::string have;
                for (const std::string& p : plan.diffusers) if (!p.empty()) have += " " + p;
                incomplete.push_back(str_cat(stored, " (has only", have, ")"));
                break;
            }
        out.push_back(std::move(plan));
    }
    if (!incomplete.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "fused tensors need all their parts (q, k and v):",
                          list_names(incomplete));
    return out;
}

}  // namespace sd3
