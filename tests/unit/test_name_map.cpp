// The name map on synthetic key lists: each Stability rule lands on the diffusers name of sd3-architecture.md
// §3.2-3.4 with its transform, the inverse plan gives back exactly the stored names, and unknown, clashing or
// incomplete names are errors that list them.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "io/name_map.h"

using namespace sd3;

namespace {

const TensorMapping* find(const ComponentMapping& m, const std::string& diffusers) {
    for (const TensorMapping& t : m.tensors)
        if (t.diffusers == diffusers) return &t;
    return nullptr;
}

// The stored names of an SD3-style MMDiT with `layers` blocks (the last one context-pre-only).
std::vector<std::string> mmdit_names(int layers, const std::string& prefix) {
    std::vector<std::string> n = {"pos_embed"};
    for (const char* b : {"x_embedder.proj", "t_embedder.mlp.0", "t_embedder.mlp.2", "y_embedder.mlp.0", "y_embedder.mlp.2",
                          "context_embedder", "final_layer.linear", "final_layer.adaLN_modulation.1"})
        for (const char* p : {".weight", ".bias"}) n.push_back(std::string(b) + p);
    for (int i = 0; i < layers; ++i) {
        const bool last = i == layers - 1;
        const std::string j = "joint_blocks." + std::to_string(i) + ".";
        std::vector<std::string> mods = {"x_block.attn.qkv", "x_block.attn.proj", "x_block.adaLN_modulation.1",
                                         "x_block.mlp.fc1", "x_block.mlp.fc2", "context_block.attn.qkv",
                                         "context_block.adaLN_modulation.1"};
        if (!last)
            for (const char* m : {"context_block.attn.proj", "context_block.mlp.fc1", "context_block.mlp.fc2"})
                mods.push_back(m);
        for (const std::string& m : mods)
            for (const char* p : {".weight", ".bias"}) n.push_back(j + m + p);
    }
    for (std::string& s : n) s = prefix + s;
    return n;
}

}  // namespace

TEST(NameMap, MMDiTRulesSplitQkvAndSwapTheRightHalves) {
    const auto names = mmdit_names(3, "model.diffusion_model.");
    auto m = map_component(ComponentKind::MMDIT, "transformer", "model.diffusion_model.", names);
    ASSERT_TRUE(m.ok()) << m.status().message();
    // 3 blocks: qkv pairs become 3 tensors each.
    EXPECT_EQ(m->tensors.size(), names.size() + 2 * 2 * 3 * 2);

    for (int part = 0; part < 3; ++part) {
        const char* qkv[] = {"to_q", "to_k", "to_v"};
        const TensorMapping* t = find(*m, std::string("transformer_blocks.1.attn.") + qkv[part] + ".weight");
        ASSERT_NE(t, nullptr);
        EXPECT_EQ(t->stored, "model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight");
        EXPECT_EQ(t->op, MapOp::ROW_CHUNK);
        EXPECT_EQ(t->part, part);
        EXPECT_EQ(t->parts, 3);
        const char* add[] = {"add_q_proj", "add_k_proj", "add_v_proj"};
        const TensorMapping* c = find(*m, std::string("transformer_blocks.2.attn.") + add[part] + ".bias");
        ASSERT_NE(c, nullptr);
        EXPECT_EQ(c->stored, "model.diffusion_model.joint_blocks.2.context_block.attn.qkv.bias");
        EXPECT_EQ(c->part, part);
    }
    // Only the last block's context adaLN and the final adaLN swap (shift, scale) -> (scale, shift).
    EXPECT_EQ(find(*m, "transformer_blocks.2.norm1_context.linear.weight")->op, MapOp::SWAP_HALVES);
    EXPECT_EQ(find(*m, "transformer_blocks.1.norm1_context.linear.weight")->op, MapOp::COPY);
    EXPECT_EQ(find(*m, "transformer_blocks.2.norm1.linear.bias")->op, MapOp::COPY);
    EXPECT_EQ(find(*m, "norm_out.linear.bias")->op, MapOp::SWAP_HALVES);
    EXPECT_EQ(find(*m, "norm_out.linear.bias")->stored, "model.diffusion_model.final_layer.adaLN_modulation.1.bias");
    EXPECT_EQ(find(*m, "pos_embed.pos_embed")->stored, "model.diffusion_model.pos_embed");
    EXPECT_EQ(find(*m, "pos_embed.proj.weight")->stored, "model.diffusion_model.x_embedder.proj.weight");
    EXPECT_EQ(find(*m, "proj_out.weight")->stored, "model.diffusion_model.final_layer.linear.weight");
    EXPECT_EQ(find(*m, "transformer_blocks.0.ff_context.net.2.weight")->stored,
              "model.diffusion_model.joint_blocks.0.context_block.mlp.fc2.weight");
    EXPECT_EQ(find(*m, "time_text_embed.text_embedder.linear_2.bias")->stored, "model.diffusion_model.y_embedder.mlp.2.bias");
    EXPECT_EQ(find(*m, "transformer_blocks.2.attn.to_add_out.weight"), nullptr);
}

TEST(NameMap, SD35QkNormAndDualAttention) {
    auto names = mmdit_names(2, "");
    for (const char* n : {"joint_blocks.0.x_block.attn.ln_q.weight", "joint_blocks.0.context_block.attn.ln_k.weight",
                          "joint_blocks.0.x_block.attn2.qkv.weight", "joint_blocks.0.x_block.attn2.proj.bias",
                          "joint_blocks.0.x_block.attn2.ln_k.weight"})
        names.push_back(n);
    auto m = map_component(ComponentKind::MMDIT, "transformer", "", names);
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_EQ(find(*m, "transformer_blocks.0.attn.norm_q.weight")->stored, "joint_blocks.0.x_block.attn.ln_q.weight");
    EXPECT_EQ(find(*m, "transformer_blocks.0.attn.norm_added_k.weight")->stored,
              "joint_blocks.0.context_block.attn.ln_k.weight");
    EXPECT_EQ(find(*m, "transformer_blocks.0.attn2.to_v.weight")->part, 2);
    EXPECT_EQ(find(*m, "transformer_blocks.0.attn2.to_out.0.bias")->stored, "joint_blocks.0.x_block.attn2.proj.bias");
    EXPECT_EQ(find(*m, "transformer_blocks.0.attn2.norm_k.weight")->stored, "joint_blocks.0.x_block.attn2.ln_k.weight");
}

TEST(NameMap, VaeReversesDecoderBlocksAndSqueezesAttention) {
    const std::vector<std::string> names = {
        "first_stage_model.decoder.up.3.block.0.conv1.weight", "first_stage_model.decoder.up.0.block.2.norm2.bias",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight", "first_stage_model.decoder.up.3.upsample.conv.bias",
        "first_stage_model.encoder.down.2.block.1.conv2.weight", "first_stage_model.encoder.down.1.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.bias", "first_stage_model.encoder.mid.attn_1.norm.bias",
        "first_stage_model.decoder.mid.block_2.norm1.weight", "first_stage_model.encoder.norm_out.weight"};
    auto m = map_component(ComponentKind::VAE, "vae", "first_stage_model.", names);
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_EQ(find(*m, "decoder.up_blocks.0.resnets.0.conv1.weight")->stored, names[0]);  // up.3 -> up_blocks.0 (4 blocks)
    EXPECT_EQ(find(*m, "decoder.up_blocks.3.resnets.2.norm2.bias")->stored, names[1]);
    EXPECT_EQ(find(*m, "decoder.up_blocks.2.resnets.0.conv_shortcut.weight")->stored, names[2]);
    EXPECT_EQ(find(*m, "decoder.up_blocks.0.upsamplers.0.conv.bias")->stored, names[3]);
    EXPECT_EQ(find(*m, "encoder.down_blocks.2.resnets.1.conv2.weight")->stored, names[4]);
    EXPECT_EQ(find(*m, "encoder.down_blocks.1.downsamplers.0.conv.weight")->stored, names[5]);
    EXPECT_EQ(find(*m, "encoder.mid_block.attentions.0.to_q.weight")->op, MapOp::CONV1X1_TO_LINEAR);
    EXPECT_EQ(find(*m, "decoder.mid_block.attentions.0.to_out.0.weight")->op, MapOp::CONV1X1_TO_LINEAR);
    EXPECT_EQ(find(*m, "decoder.mid_block.attentions.0.to_out.0.bias")->op, MapOp::COPY);
    EXPECT_EQ(find(*m, "encoder.mid_block.attentions.0.group_norm.bias")->stored, names[9]);
    EXPECT_EQ(find(*m, "decoder.mid_block.resnets.1.norm1.weight")->stored, names[10]);
    EXPECT_EQ(find(*m, "encoder.conv_norm_out.weight")->stored, names[11]);
}

TEST(NameMap, EncodersKeepTransformersNamesAndDropBuffers) {
    auto clip = map_component(ComponentKind::CLIP, "text_encoder", "text_encoders.clip_l.transformer.",
                              {"text_encoders.clip_l.transformer.text_model.embeddings.position_ids",
                               "text_encoders.clip_l.transformer.text_model.encoder.layers.11.mlp.fc1.weight",
                               "text_encoders.clip_l.transformer.text_projection.weight",
                               "text_encoders.clip_l.transformer.logit_scale"});
    ASSERT_TRUE(clip.ok()) << clip.status().message();
    ASSERT_EQ(clip->tensors.size(), 2u);
    EXPECT_EQ(clip->tensors[0].diffusers, "text_model.encoder.layers.11.mlp.fc1.weight");
    EXPECT_EQ(clip->ignored, (std::vector<std::string>{"text_encoders.clip_l.transformer.text_model.embeddings.position_ids",
                                                       "text_encoders.clip_l.transformer.logit_scale"}));

    // T5 exports carry shared.weight, the tied encoder.embed_tokens.weight, or both.
    auto only_embed = map_component(ComponentKind::T5, "text_encoder_3", "", {"encoder.embed_tokens.weight", "encoder.final_layer_norm.weight"});
    ASSERT_TRUE(only_embed.ok()) << only_embed.status().message();
    EXPECT_EQ(only_embed->tensors[1].diffusers, "shared.weight");
    EXPECT_EQ(only_embed->tensors[1].stored, "encoder.embed_tokens.weight");
    auto both = map_component(ComponentKind::T5, "text_encoder_3", "", {"shared.weight", "encoder.embed_tokens.weight"});
    ASSERT_TRUE(both.ok()) << both.status().message();
    ASSERT_EQ(both->tensors.size(), 1u);
    EXPECT_EQ(both->ignored, std::vector<std::string>{"encoder.embed_tokens.weight"});
}

TEST(NameMap, UnknownNamesAreErrorsListingThem) {
    auto names = mmdit_names(2, "model.diffusion_model.");
    names.push_back("model.diffusion_model.joint_blocks.0.x_block.attn.bogus.weight");
    names.push_back("model.diffusion_model.joint_blocks.01.x_block.attn.proj.weight");  // not a canonical index
    auto m = map_stability_file(names);
    ASSERT_FALSE(m.ok());
    EXPECT_NE(m.status().message().find("2 tensor(s) that no MMDiT name rule knows"), std::string::npos) << m.status().message();
    EXPECT_NE(m.status().message().find("joint_blocks.0.x_block.attn.bogus.weight"), std::string::npos);
    EXPECT_NE(m.status().message().find("joint_blocks.01.x_block"), std::string::npos);

    auto outside = map_stability_file({"model.diffusion_model.pos_embed", "cond_stage_model.foo.weight"});
    ASSERT_FALSE(outside.ok());
    EXPECT_NE(outside.status().message().find("outside the prefixes"), std::string::npos) << outside.status().message();
    EXPECT_NE(outside.status().message().find("cond_stage_model.foo.weight"), std::string::npos);
}

TEST(NameMap, SingleFileSplitsByPrefix) {
    auto names = mmdit_names(2, "model.diffusion_model.");
    names.push_back("first_stage_model.encoder.conv_in.weight");
    names.push_back("text_encoders.clip_g.transformer.text_projection.weight");
    names.push_back("text_encoders.t5xxl.transformer.shared.weight");
    auto m = map_stability_file(names);
    ASSERT_TRUE(m.ok()) << m.status().message();
    std::vector<std::string> comps;
    for (const auto& c : *m) comps.push_back(c.component);
    EXPECT_EQ(comps, (std::vector<std::string>{"transformer", "vae", "text_encoder_2", "text_encoder_3"}));
    EXPECT_EQ(m->at(3).tensors[0].diffusers, "shared.weight");
}

// Mapping forward and planning back gives exactly the stored names, each with the op it was read with.
TEST(NameMap, InversePlanRestoresStoredNames) {
    struct Case {
        ComponentKind kind;
        std::string prefix;
        std::vector<std::string> stored;
    };
    std::vector<Case> cases = {
        {ComponentKind::MMDIT, "model.diffusion_model.", mmdit_names(4, "model.diffusion_model.")},
        {ComponentKind::VAE, "first_stage_model.",
         {"first_stage_model.decoder.up.3.block.0.conv1.weight", "first_stage_model.decoder.up.0.block.2.norm2.bias",
          "first_stage_model.decoder.up.2.upsample.conv.weight", "first_stage_model.encoder.mid.attn_1.v.weight",
          "first_stage_model.encoder.down.0.block.0.nin_shortcut.bias", "first_stage_model.decoder.mid.block_1.conv2.weight"}},
        {ComponentKind::T5, "text_encoders.t5xxl.transformer.",
         {"text_encoders.t5xxl.transformer.shared.weight",
          "text_encoders.t5xxl.transformer.encoder.block.3.layer.1.DenseReluDense.wo.weight"}},
    };
    for (const Case& c : cases) {
        auto m = map_component(c.kind, "x", c.prefix, c.stored);
        ASSERT_TRUE(m.ok()) << m.status().message();
        std::vector<std::string> diffusers;
        std::map<std::string, MapOp> ops;
        for (const TensorMapping& t : m->tensors) {
            diffusers.push_back(t.diffusers);
            ops[t.stored] = t.op;
        }
        auto plans = plan_stability_component(c.kind, c.prefix, diffusers);
        ASSERT_TRUE(plans.ok()) << plans.status().message();
        std::set<std::string> back;
        for (const StoredTensorPlan& p : *plans) {
            back.insert(p.stored);
            EXPECT_EQ(p.op, ops[p.stored]) << p.stored;
            if (p.op == MapOp::ROW_CHUNK) EXPECT_EQ(p.diffusers.size(), 3u);
        }
        EXPECT_EQ(back, std::set<std::string>(c.stored.begin(), c.stored.end()));
    }
}

TEST(NameMap, InversePlanNeedsEveryPartOfAFusedTensor) {
    auto plans = plan_stability_component(ComponentKind::MMDIT, "model.diffusion_model.",
                                          {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_k.weight"});
    ASSERT_FALSE(plans.ok());
    EXPECT_NE(plans.status().message().find("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"),
              std::string::npos)
        << plans.status().message();
    auto unknown = plan_stability_component(ComponentKind::VAE, "first_stage_model.", {"decoder.bogus.weight"});
    ASSERT_FALSE(unknown.ok());
    EXPECT_NE(unknown.status().message().find("decoder.bogus.weight"), std::string::npos);
}

TEST(NameMap, CountIndexed) {
    EXPECT_EQ(count_indexed({"joint_blocks.0.a", "joint_blocks.23.b", "joint_blocks.x.c", "other.5.d"}, "joint_blocks."), 24);
    EXPECT_EQ(count_indexed({"a.b"}, "joint_blocks."), 0);
}
