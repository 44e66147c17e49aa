// Single-file checkpoints against the tiny-a golden set: the Stability-layout file (made by
// ../shared/golden/make_single_file.py, verified there with diffusers' own converters) seen through the name map
// gives bit-identical weights to the diffusers folder (T5 linear weights: the fp8 cast of the folder's values),
// derived configs equal the folder's, conversions are lossless, encoder files mix in, and every broken variant
// fails with a message that names what is wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "common/testing.h"
#include "core/dtype.h"
#include "io/model_folder.h"
#include "io/safetensors.h"
#include "io/json_file.h"
#include "io/single_file.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"
#include "infer/prompt_encoding.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/vae.h"
#include "models/t5_encoder.h"

using namespace sd3;
namespace fs = std::filesystem;

namespace {

const std::string kSingle = "single_file/sd3_tiny_incl_clips_t5fp8.safetensors";
const std::vector<std::string> kWeighted = {"transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"};

std::string golden_single() { return sd3::testing::tiny_path(kSingle); }
std::string tiny_folder() { return sd3::testing::tiny_path("model"); }

ModelFolder must_open(const ModelSpec& spec) {
    auto m = open_model(spec);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? std::move(m).value() : ModelFolder();
}

ModelFolder must_open_folder(const std::string& path) {
    auto m = ModelFolder::open(path);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? std::move(m).value() : ModelFolder();
}

Tensor value_of(Result<Tensor> r) {
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r).value() : Tensor();
}

bool same_bits(const Tensor& a, const Tensor& b) {
    if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
    const Tensor ca = a.contiguous(), cb = b.contiguous();
    return std::memcmp(ca.raw(), cb.raw(), ca.nbytes()) == 0;
}

// Every tensor of `got` equals `want` bit for bit, and both have the same names.
void expect_identical(const TensorSource& got, const TensorSource& want, const std::string& what) {
    EXPECT_EQ(got.names(), want.names()) << what;
    for (const std::string& n : want.names()) {
        auto a = got.get(n);
        auto b = want.get(n);
        ASSERT_TRUE(a.ok() && b.ok()) << what << " " << n;
        EXPECT_TRUE(same_bits(*a, *b)) << what << ": " << n << " " << a->describe() << " vs " << b->describe();
    }
}

// A scratch folder per test, removed afterwards.
class TempDir {
  public:
    TempDir() {
        path_ = fs::temp_directory_path() / ("sd3_single_file_" + std::to_string(::getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() { fs::remove_all(path_); }
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }

  private:
    fs::path path_;
};

// Writes a modified copy of the golden single file: `edit` may change, drop or add tensors.
std::string write_variant(const TempDir& dir, const std::string& name,
                          const std::function<void(NamedTensors&)>& edit) {
    auto all = read_all_safetensors(golden_single());
    EXPECT_TRUE(all.ok()) << all.status().message();
    NamedTensors t = std::move(all).value();
    edit(t);
    const std::string path = dir / name;
    EXPECT_TRUE(write_safetensors(path, t).ok());
    return path;
}

void drop_prefix(NamedTensors& t, const std::string& prefix) {
    std::erase_if(t, [&](const auto& p) { return p.first.starts_with(prefix); });
}

// Tensors under `prefix` with the prefix removed (a standalone encoder file as ComfyUI users have them).
NamedTensors take_prefix(const NamedTensors& t, const std::string& prefix) {
    NamedTensors out;
    for (const auto& [n, v] : t)
        if (n.starts_with(prefix)) out.emplace_back(n.substr(prefix.size()), v);
    return out;
}

std::string open_error(const ModelSpec& spec) {
    auto m = open_model(spec);
    EXPECT_FALSE(m.ok()) << "opening " << spec.model << " should fail";
    return m.ok() ? "" : m.status().message();
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

}  // namespace

TEST(SingleFile, DetectsLayoutsFromNamesAlone) {
    auto single = SafetensorsSource::open(golden_single());
    ASSERT_TRUE(single.ok());
    auto d = detect_layout((*single)->names());
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->layout, ModelLayout::SINGLE_FILE);
    EXPECT_EQ(d->components, kWeighted);

    auto vae = SafetensorsSource::open(tiny_folder() + "/vae/diffusion_pytorch_model.safetensors");
    ASSERT_TRUE(vae.ok());
    d = detect_layout((*vae)->names());
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->layout, ModelLayout::COMPONENT_FILE);
    EXPECT_EQ(d->kind, ComponentKind::VAE);
    EXPECT_TRUE(d->diffusers_names);

    for (const char* other : {"mmdit.safetensors", "lora/pytorch_lora_weights.safetensors"}) {
        auto f = SafetensorsSource::open(sd3::testing::tiny_path(other));
        ASSERT_TRUE(f.ok());
        d = detect_layout((*f)->names());
        ASSERT_TRUE(d.ok());
        EXPECT_EQ(d->layout, ModelLayout::NOT_A_MODEL) << other;
    }
    auto mixed = detect_layout({"text_model.embeddings.token_embedding.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"});
    ASSERT_FALSE(mixed.ok());
    EXPECT_HAS(mixed.status().message(), "mix several components");
}

// The "done when" of issue 9: with --tokenizers, the single file gives the folder's weights exactly.
TEST(SingleFile, GoldenSingleFileGivesTheFoldersWeights) {
    ModelSpec spec;
    spec.model = golden_single();
    spec.tokenizers = tiny_folder();
    const ModelFolder single = must_open(spec);
    const ModelFolder folder = must_open_folder(tiny_folder());
    for (const std::string& name : kSD3Components) ASSERT_NE(single.find(name), nullptr) << name;
    for (const std::string& name : {"transformer", "vae", "text_encoder", "text_encoder_2"})
        expect_identical(*single.find(name)->weights, *folder.find(name)->weights, name);

    // T5: the folder's fp16 linear weights cast to float8_e4m3fn (a plain cast, research gpu-components.md §6),
    // returned as stored; the embedding, relative bias and norms stay fp16 and identical.
    const TensorSource& t5 = *single.find("text_encoder_3")->weights;
    const TensorSource& t5_ref = *folder.find("text_encoder_3")->weights;
    ASSERT_EQ(t5.names(), t5_ref.names());
    int fp8 = 0;
    for (const std::string& n : t5_ref.names()) {
        const Tensor got = value_of(t5.get(n));
        const Tensor ref = value_of(t5_ref.get(n));
        ASSERT_EQ(got.shape(), ref.shape()) << n;
        const bool linear = ref.dim() == 2 && n != "shared.weight" && n.find("relative_attention_bias") == std::string::npos;
        if (!linear) {
            EXPECT_TRUE(same_bits(got, ref)) << n;
            continue;
        }
        ++fp8;
        ASSERT_EQ(got.dtype(), DType::F8_E4M3) << n;
        const Tensor r = ref.contiguous();
        const Tensor g = got.contiguous();
        for (int64_t i = 0; i < ref.numel(); ++i)
            ASSERT_EQ(g.data<uint8_t>()[i], f32_to_f8e4m3(f16_to_f32(r.data<uint16_t>()[i]))) << n << " element " << i;
    }
    EXPECT_EQ(fp8, 2 * 7);  // q, k, v, o, wi_0, wi_1, wo in each of 2 blocks
    EXPECT_EQ(single.find("tokenizer_3")->dir, tiny_folder() + "/tokenizer_3");
    EXPECT_EQ(single.find("tokenizer_2")->config["pad_token"], "!");
}

// Views, not copies: a q/k/v part shares the mapped file's storage.
TEST(SingleFile, FusedQkvPartsAreViews) {
    ModelSpec spec;
    spec.model = golden_single();
    const ModelFolder m = must_open(spec);
    const TensorSource& w = *m.find("transformer")->weights;
    const Tensor q = value_of(w.get("transformer_blocks.0.attn.to_q.weight"));
    const Tensor k = value_of(w.get("transformer_blocks.0.attn.to_k.weight"));
    // Each is a window on the fused [3D, D] tensor in the file mapping: q its first third, k the second.
    EXPECT_EQ(q.storage()->bytes(), 3 * q.nbytes());
    EXPECT_EQ(q.raw(), q.storage()->data());
    EXPECT_EQ(static_cast<const char*>(k.raw()) - static_cast<const char*>(q.raw()), static_cast<ptrdiff_t>(q.nbytes()));
}

// Every config key the models read equals the folder's config.json; keys the weights cannot show are
// conventions (docs/model-formats.md), and only the VAE's sample_size (a pipeline default, not used by the
// model) differs for this tiny model.
TEST(SingleFile, DerivedConfigsEqualTheFolders) {
    ModelSpec spec;
    spec.model = golden_single();
    const ModelFolder single = must_open(spec);
    const ModelFolder folder = must_open_folder(tiny_folder());
    const std::map<std::string, std::vector<std::string>> used = {
        {"transformer",
         {"attention_head_dim", "caption_projection_dim", "dual_attention_layers", "in_channels", "joint_attention_dim",
          "num_attention_heads", "num_layers", "out_channels", "patch_size", "pooled_projection_dim",
          "pos_embed_max_size", "qk_norm", "sample_size"}},
        {"vae",
         {"act_fn", "block_out_channels", "in_channels", "latent_channels", "layers_per_block", "mid_block_add_attention",
          "norm_num_groups", "out_channels", "scaling_factor", "shift_factor", "use_post_quant_conv", "use_quant_conv",
          "latents_mean", "latents_std", "force_upcast", "down_block_types", "up_block_types"}},
        {"text_encoder",
         {"hidden_act", "hidden_size", "intermediate_size", "layer_norm_eps", "max_position_embeddings",
          "num_attention_heads", "num_hidden_layers", "projection_dim", "vocab_size", "eos_token_id", "bos_token_id",
          "pad_token_id"}},
        {"text_encoder_3",
         {"d_ff", "d_kv", "d_model", "dense_act_fn", "feed_forward_proj", "is_gated_act", "layer_norm_epsilon",
          "num_heads", "num_layers", "relative_attention_max_distance", "relative_attention_num_buckets", "vocab_size",
          "eos_token_id", "pad_token_id"}},
    };
    for (const std::string& name : kWeighted) {
        const Component* c = single.find(name);
        const Component* ref = folder.find(name);
        ASSERT_TRUE(c && ref) << name;
        EXPECT_EQ(c->class_name, ref->class_name);
        EXPECT_EQ(c->library, ref->library);
        EXPECT_TRUE(c->config_path.starts_with("derived from weight shapes")) << c->config_path;
        const auto& keys = used.at(name == "text_encoder_2" ? "text_encoder" : name);
        for (const std::string& k : keys) {
            ASSERT_TRUE(c->config.contains(k)) << name << " derived config lacks " << k;
            EXPECT_EQ(c->config[k], ref->config[k]) << name << "." << k;
        }
        for (auto it = c->config.begin(); it != c->config.end(); ++it) {
            if (name == "vae" && it.key() == "sample_size") continue;
            if (ref->config.contains(it.key())) EXPECT_EQ(it.value(), ref->config[it.key()]) << name << "." << it.key();
        }
    }
}

TEST(SingleFile, ConvertFolderToSingleFileAndBackIsLossless) {
    TempDir dir;
    const ModelFolder folder = must_open_folder(tiny_folder());
    ASSERT_TRUE(convert_model(folder, ConvertTarget::SINGLE_FILE, dir / "one.safetensors").ok());

    ModelSpec spec;
    spec.model = dir / "one.safetensors";
    spec.tokenizers = tiny_folder();
    const ModelFolder single = must_open(spec);
    Status s = convert_model(single, ConvertTarget::DIFFUSERS, dir / "back");
    ASSERT_TRUE(s.ok()) << s.message();

    const ModelFolder back = must_open_folder(dir / "back");
    ASSERT_EQ(back.components().size(), folder.components().size());
    for (const Component& c : folder.components()) {
        const Component* b = back.find(c.name);
        ASSERT_NE(b, nullptr) << c.name;
        EXPECT_EQ(b->class_name, c.class_name);
        EXPECT_EQ(b->config, c.config) << c.name;  // configs travel in the single file's metadata
        if (c.weights) expect_identical(*b->weights, *c.weights, c.name);
    }
    // The tokenizer files are copied byte for byte.
    for (const char* f : {"tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_3/spiece.model"})
        EXPECT_EQ(fs::file_size(dir / (std::string("back/") + f)), fs::file_size(tiny_folder() + "/" + f)) << f;
}

// Golden single file -> folder -> single file gives the golden tensors back, names and bits.
TEST(SingleFile, ConvertSingleFileToFolderAndBackIsLossless) {
    TempDir dir;
    ModelSpec spec;
    spec.model = golden_single();
    ASSERT_TRUE(convert_model(must_open(spec), ConvertTarget::DIFFUSERS, dir / "folder").ok());
    ASSERT_TRUE(convert_model(must_open_folder(dir / "folder"), ConvertTarget::SINGLE_FILE, dir / "again.safetensors").ok());
    auto a = SafetensorsSource::open(dir / "again.safetensors");
    auto g = SafetensorsSource::open(golden_single());
    ASSERT_TRUE(a.ok() && g.ok());
    expect_identical(**a, **g, "single file");
}

// ComfyUI users mix a bare checkpoint with separate encoder files; options add or replace parts.
TEST(SingleFile, SeparateEncoderFilesAddAndReplaceParts) {
    TempDir dir;
    auto all = read_all_safetensors(golden_single());
    ASSERT_TRUE(all.ok());
    ASSERT_TRUE(write_safetensors(dir / "clip_l.safetensors", take_prefix(*all, "text_encoders.clip_l.transformer.")).ok());
    ASSERT_TRUE(write_safetensors(dir / "clip_g.safetensors", take_prefix(*all, "text_encoders.clip_g.transformer.")).ok());
    ASSERT_TRUE(write_safetensors(dir / "t5xxl_fp8_e4m3fn.safetensors", take_prefix(*all, "text_encoders.t5xxl.transformer.")).ok());
    ASSERT_TRUE(write_safetensors(dir / "vae.safetensors", take_prefix(*all, "first_stage_model.")).ok());
    const std::string bare = write_variant(dir, "sd3_tiny.safetensors", [](NamedTensors& t) {
        drop_prefix(t, "text_encoders.");
        drop_prefix(t, "first_stage_model.");
    });

    ModelSpec spec;
    spec.model = bare;
    ModelOrigin origin;
    auto m0 = open_model(spec, &origin);
    ASSERT_TRUE(m0.ok()) << m0.status().message();
    EXPECT_EQ(origin.summary, "Stability single-file checkpoint with MMDiT");
    auto missing = m0->require("text_encoder_3");
    ASSERT_FALSE(missing.ok());
    EXPECT_HAS(missing.status().message(), "--t5 FILE");
    auto no_tok = m0->require("tokenizer");
    ASSERT_FALSE(no_tok.ok());
    EXPECT_HAS(no_tok.status().message(), "--tokenizers DIR");
    EXPECT_HAS(no_tok.status().message(), "spiece.model");
    EXPECT_HAS(no_tok.status().message(), "merges.txt");

    spec.clip_l = dir / "clip_l.safetensors";
    spec.clip_g = dir / "clip_g.safetensors";
    spec.t5 = dir / "t5xxl_fp8_e4m3fn.safetensors";
    spec.vae = dir / "vae.safetensors";
    spec.tokenizers = tiny_folder();
    const ModelFolder mixed = must_open(spec);
    ModelSpec whole;
    whole.model = golden_single();
    const ModelFolder ref = must_open(whole);
    for (const std::string& name : kWeighted) expect_identical(*mixed.find(name)->weights, *ref.find(name)->weights, name);
    EXPECT_EQ(mixed.find("text_encoder_2")->config["hidden_act"], "gelu");

    // --vae replaces the single file's VAE, here with the folder's diffusers-named file.
    ModelSpec replace;
    replace.model = golden_single();
    replace.vae = tiny_folder() + "/vae/diffusion_pytorch_model.safetensors";
    ModelOrigin rorigin;
    auto r = open_model(replace, &rorigin);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->find("vae")->weights->origin(), replace.vae);
    EXPECT_TRUE(std::any_of(rorigin.notes.begin(), rorigin.notes.end(),
                            [](const std::string& n) { return n.starts_with("vae: replaced by --vae"); }));

    // A part in the wrong slot, and a CLIP file given as the model.
    ModelSpec wrong = spec;
    wrong.clip_l = dir / "t5xxl_fp8_e4m3fn.safetensors";
    EXPECT_HAS(open_error(wrong), "holds a T5 encoder, not a CLIP text encoder");
    ModelSpec clip_as_model;
    clip_as_model.model = dir / "clip_g.safetensors";
    EXPECT_HAS(open_error(clip_as_model), "pass it with --clip-l or --clip-g");
}

// Encoder files as other tools export them: T5 with only the tied encoder.embed_tokens (no shared.weight) plus a
// position_ids buffer in CLIP-L, which has no projection.
TEST(SingleFile, EncoderFileVariants) {
    TempDir dir;
    auto all = read_all_safetensors(golden_single());
    ASSERT_TRUE(all.ok());
    NamedTensors t5 = take_prefix(*all, "text_encoders.t5xxl.transformer.");
    for (auto& [n, v] : t5)
        if (n == "shared.weight") n = "encoder.embed_tokens.weight";
    ASSERT_TRUE(write_safetensors(dir / "t5.safetensors", t5).ok());
    NamedTensors clip = take_prefix(*all, "text_encoders.clip_l.transformer.");
    std::erase_if(clip, [](const auto& p) { return p.first == "text_projection.weight"; });
    clip.emplace_back("text_model.embeddings.position_ids", Tensor::zeros({1, 77}, DType::I64));
    ASSERT_TRUE(write_safetensors(dir / "clip_l.safetensors", clip).ok());

    ModelSpec spec;
    spec.model = golden_single();
    spec.t5 = dir / "t5.safetensors";
    spec.clip_l = dir / "clip_l.safetensors";
    ModelOrigin origin;
    auto m = open_model(spec, &origin);
    ASSERT_TRUE(m.ok()) << m.status().message();
    ModelSpec plain;
    plain.model = golden_single();
    const ModelFolder ref = must_open(plain);
    expect_identical(*m->find("text_encoder_3")->weights, *ref.find("text_encoder_3")->weights, "t5");
    EXPECT_EQ(m->find("text_encoder")->weights->meta("text_projection.weight")->shape, (Shape{32, 32}));
    EXPECT_FALSE(m->find("text_encoder")->weights->meta("text_model.embeddings.position_ids").has_value());
    EXPECT_TRUE(std::any_of(origin.notes.begin(), origin.notes.end(), [](const std::string& n) {
        return n == "text_encoder: ignored text_model.embeddings.position_ids";
    }));
}

// Stability's CLIP-L carries no text_projection; diffusers uses the identity (sd3-architecture.md §3.4).
TEST(SingleFile, MissingClipLProjectionIsTheIdentity) {
    TempDir dir;
    const std::string path = write_variant(dir, "no_proj.safetensors", [](NamedTensors& t) {
        drop_prefix(t, "text_encoders.clip_l.transformer.text_projection.");
    });
    ModelSpec spec;
    spec.model = path;
    ModelOrigin origin;
    auto m = open_model(spec, &origin);
    ASSERT_TRUE(m.ok()) << m.status().message();
    const Tensor p = value_of(m->find("text_encoder")->weights->get("text_projection.weight"));
    EXPECT_EQ(p.dtype(), DType::F16);  // as the stored embedding
    ASSERT_EQ(p.shape(), (Shape{32, 32}));
    for (int64_t i = 0; i < 32; ++i)
        for (int64_t j = 0; j < 32; ++j) ASSERT_EQ(p.item_at({i, j}), i == j ? 1.0 : 0.0);
    EXPECT_EQ(m->find("text_encoder")->config["projection_dim"], 32);
}

// fp8 e4m3 / e5m2, bf16, fp16 and fp32 weights are all read and returned as stored.
TEST(SingleFile, EveryStoredDtypeIsReadAsStored) {
    TempDir dir;
    const DType dtypes[] = {DType::F8_E4M3, DType::F8_E5M2, DType::BF16, DType::F16, DType::F32};
    const std::string path = write_variant(dir, "dtypes.safetensors", [&](NamedTensors& t) {
        int k = 0;
        for (auto& [n, v] : t)
            if (n.starts_with("text_encoders.t5xxl.") || n.starts_with("model.diffusion_model.joint_blocks.0."))
                v = v.to(DType::F32).to(dtypes[k++ % 5]);
    });
    ModelSpec spec;
    spec.model = path;
    const ModelFolder m = must_open(spec);
    auto stored = SafetensorsSource::open(path);
    ASSERT_TRUE(stored.ok());
    std::set<DType> seen;
    for (const std::string& n : (*stored)->names()) {
        if (!n.starts_with("text_encoders.t5xxl.")) continue;
        const std::string d = n.substr(std::string("text_encoders.t5xxl.transformer.").size());
        const Tensor got = value_of(m.find("text_encoder_3")->weights->get(d));
        EXPECT_TRUE(same_bits(got, value_of((*stored)->get(n)))) << n;
        seen.insert(got.dtype());
    }
    EXPECT_EQ(seen.size(), 5u);
    // A split of an fp8 fused qkv stays fp8 and a view.
    const TensorSource& tr = *m.find("transformer")->weights;
    for (const char* n : {"transformer_blocks.0.attn.to_v.weight", "transformer_blocks.0.attn.add_k_proj.bias"}) {
        const DType want = (*stored)->meta(std::string("model.diffusion_model.joint_blocks.0.") +
                                           (std::string(n).find("add_") != std::string::npos ? "context_block.attn.qkv.bias"
                                                                                             : "x_block.attn.qkv.weight"))->dtype;
        EXPECT_EQ(tr.get(n)->dtype(), want) << n;
    }
}

// --- broken variants: each fails at open with a message naming the problem ---

TEST(SingleFileBroken, MissingBlock) {
    TempDir dir;
    ModelSpec spec;
    spec.model = write_variant(dir, "missing_block.safetensors",
                               [](NamedTensors& t) { drop_prefix(t, "model.diffusion_model.joint_blocks.0."); });
    const std::string msg = open_error(spec);
    EXPECT_HAS(msg, "the MMDiT weights do not fit the config derived from them (num_layers=2");
    EXPECT_HAS(msg, "tensor(s) missing");
    EXPECT_HAS(msg, "transformer_blocks.0.attn.to_q.weight");
    EXPECT_HAS(msg, "the MMDiT in ");
}

TEST(SingleFileBroken, MissingTensorThatConfigsNeed) {
    TempDir dir;
    ModelSpec spec;
    spec.model = write_variant(dir, "no_pos.safetensors", [](NamedTensors& t) {
        drop_prefix(t, "model.diffusion_model.pos_embed");
    });
    EXPECT_HAS(open_error(spec), "cannot derive the MMDiT config: tensor \"pos_embed.pos_embed\" is missing");
    spec.model = write_variant(dir, "no_vae_block.safetensors", [](NamedTensors& t) {
        drop_prefix(t, "first_stage_model.decoder.up.1.block.2.");
    });
    const std::string msg = open_error(spec);
    EXPECT_HAS(msg, "the VAE weights do not fit");
    EXPECT_HAS(msg, "decoder.up_blocks.2.resnets.2.conv1.weight");  // LDM up.1 is diffusers up_blocks.2
}

TEST(SingleFileBroken, WrongShape) {
    TempDir dir;
    ModelSpec spec;
    spec.model = write_variant(dir, "wrong_shape.safetensors", [](NamedTensors& t) {
        for (auto& [n, v] : t)
            if (n == "model.diffusion_model.joint_blocks.1.x_block.mlp.fc1.weight") v = Tensor::zeros({120, 32}, DType::F16);
    });
    EXPECT_HAS(open_error(spec), "transformer_blocks.1.ff.net.0.proj.weight has shape [120, 32], expected [128, 32]");

    spec.model = write_variant(dir, "odd_qkv.safetensors", [](NamedTensors& t) {
        for (auto& [n, v] : t)
            if (n == "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.bias") v = Tensor::zeros({95}, DType::F16);
    });
    EXPECT_HAS(open_error(spec), "joint_blocks.0.context_block.attn.qkv.bias [95]: rows not divisible into 3 parts");

    spec.model = write_variant(dir, "t5_wrong.safetensors", [](NamedTensors& t) {
        for (auto& [n, v] : t)
            if (n == "text_encoders.t5xxl.transformer.encoder.block.1.layer.0.SelfAttention.o.weight")
                v = Tensor::zeros({64, 60}, DType::F8_E4M3);
    });
    EXPECT_HAS(open_error(spec), "encoder.block.1.layer.0.SelfAttention.o.weight has shape [64, 60], expected [64, 64]");
}

TEST(SingleFileBroken, ExtraTensor) {
    TempDir dir;
    ModelSpec spec;
    spec.model = write_variant(dir, "extra_unknown.safetensors", [](NamedTensors& t) {
        t.emplace_back("model.diffusion_model.joint_blocks.0.x_block.attn.extra.weight", Tensor::zeros({2}, DType::F16));
    });
    std::string msg = open_error(spec);
    EXPECT_HAS(msg, "1 tensor(s) that no MMDiT name rule knows");
    EXPECT_HAS(msg, "model.diffusion_model.joint_blocks.0.x_block.attn.extra.weight");

    spec.model = write_variant(dir, "extra_prefix.safetensors", [](NamedTensors& t) {
        t.emplace_back("cond_stage_model.transformer.foo.weight", Tensor::zeros({2}, DType::F16));
    });
    msg = open_error(spec);
    EXPECT_HAS(msg, "outside the prefixes of Stability's single-file layout");
    EXPECT_HAS(msg, "cond_stage_model.transformer.foo.weight");

    // Mapped, but no tensor of this model: a second relative attention bias.
    spec.model = write_variant(dir, "extra_mapped.safetensors", [](NamedTensors& t) {
        t.emplace_back("text_encoders.t5xxl.transformer.encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                       Tensor::zeros({32, 4}, DType::F16));
    });
    msg = open_error(spec);
    EXPECT_HAS(msg, "1 tensor(s) this model does not have");
    EXPECT_HAS(msg, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight");
}

TEST(SingleFileBroken, ScaledFp8AndTokenizerFolders) {
    TempDir dir;
    ModelSpec spec;
    spec.model = write_variant(dir, "scaled.safetensors", [](NamedTensors& t) {
        t.emplace_back("text_encoders.t5xxl.transformer.scaled_fp8", Tensor::zeros({2}, DType::F8_E4M3));
    });
    EXPECT_HAS(open_error(spec), "\"scaled fp8\" file");

    spec.model = golden_single();
    spec.tokenizers = dir / "nothing";
    EXPECT_HAS(open_error(spec), "(--tokenizers): not a folder");
    fs::create_directories(dir / "toks/tokenizer");
    fs::create_directories(dir / "toks/tokenizer_2");
    spec.tokenizers = dir / "toks";
    const std::string msg = open_error(spec);
    EXPECT_HAS(msg, "tokenizer files missing");
    EXPECT_HAS(msg, "tokenizer/vocab.json");
    EXPECT_HAS(msg, "tokenizer_3/spiece.model");
}

// --- the encoders running on the single file's weights (issue 9: the T5 encodings of t5fp8_encode.safetensors) ---

namespace {

// Token ids of tokenize.json entry `index` for `key` ("clip_l", "clip_g", "t5") as [1, 77] int32.
Tensor golden_ids(int index, const std::string& key) {
    auto j = read_json_file(sd3::testing::tiny_path("tokenize.json"));
    EXPECT_TRUE(j.ok());
    const auto ids = (*j)[index][key].get<std::vector<int32_t>>();
    Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::I32);  // [1, 77]
    std::copy(ids.begin(), ids.end(), t.data<int32_t>());
    return t;
}

}  // namespace

// encode_prompt of make_single_file.py on the single file's encoders (T5 in fp8): CLIP-L/G penultimate states
// concatenated and zero-padded to the joint width, then T5's last hidden state; pooled = both projected pools.
// Tolerance as TextEncodersGolden (float32 throughout, same weights; the fp8 weights dequantize exactly):
// 1e-5 absolute + relative covers GEMM summation order and ulps of exp/erf/tanh over 2-3 layers.
TEST(SingleFileEncoders, T5Fp8EncodingsOfTheSingleFile) {
    ModelSpec spec;
    spec.model = golden_single();
    const ModelFolder m = must_open(spec);
    auto clip_model = [&](const std::string& name) {
        const Component* c = m.find(name);
        auto cfg = ClipTextConfig::from_json(c->config, c->config_path);
        EXPECT_TRUE(cfg.ok()) << cfg.status().message();
        auto model = ClipTextModel::load(*cfg, c->weights);
        EXPECT_TRUE(model.ok()) << model.status().message();
        return std::move(model).value();
    };
    const ClipTextModel clip_l = clip_model("text_encoder");
    const ClipTextModel clip_g = clip_model("text_encoder_2");
    const Component* t5c = m.find("text_encoder_3");
    auto t5cfg = T5Config::from_json(t5c->config, t5c->config_path);
    ASSERT_TRUE(t5cfg.ok()) << t5cfg.status().message();
    for (QuantFormat format : {QuantFormat::F32, QuantFormat::FP8_E4M3}) {  // dequantized, and kept fp8 as stored
        T5LoadOptions opt;
        opt.format = format;
        auto t5 = T5Encoder::load(*t5cfg, t5c->weights, opt);
        ASSERT_TRUE(t5.ok()) << t5.status().message();
        const SafetensorsFile g = sd3::testing::open_golden("tiny-a/single_file/t5fp8_encode.safetensors");
        // tokenize.json: entry 0 and 1 are the two prompts, entry 2 the empty negative prompt.
        for (int i = 0; i < 2; ++i) {
            for (const bool negative : {false, true}) {
                SCOPED_TRACE(str_cat("prompt ", i, negative ? " negative" : "", " format ", cpu::quant_format_name(format)));
                const int tok = negative ? 2 : i;
                auto l = clip_l.forward(golden_ids(tok, "clip_l"));
                auto gg = clip_g.forward(golden_ids(tok, "clip_g"));
                auto t = t5->forward(golden_ids(tok, "t5"));
                ASSERT_TRUE(l.ok() && gg.ok() && t.ok());
                const std::string key = str_cat(i, negative ? ".negative_" : ".", "prompt_embeds");
                const Tensor ref = sd3::testing::golden_tensor(g, key);  // [1, 77 + 77, joint]
                const int64_t dl = l->penultimate.size(2), dg = gg->penultimate.size(2);
                EXPECT_TRUE(sd3::testing::all_close(ref.slice(1, 77, 154), *t, 1e-5, 1e-5)) << "T5 part";
                EXPECT_TRUE(sd3::testing::all_close(ref.slice(1, 0, 77).slice(2, 0, dl), l->penultimate, 1e-5, 1e-5));
                EXPECT_TRUE(sd3::testing::all_close(ref.slice(1, 0, 77).slice(2, dl, dl + dg), gg->penultimate, 1e-5, 1e-5));
                const Tensor pooled = sd3::testing::golden_tensor(
                    g, str_cat(i, negative ? ".negative_pooled_prompt_embeds" : ".pooled_prompt_embeds"));  // [1, dl+dg]
                EXPECT_TRUE(sd3::testing::all_close(pooled.slice(1, 0, dl), l->pooled, 1e-5, 1e-5));
                EXPECT_TRUE(sd3::testing::all_close(pooled.slice(1, dl, dl + dg), gg->pooled, 1e-5, 1e-5));
            }
        }
    }
}

// The MMDiT and VAE goldens through the single-file path: the models load from the single file's components
// (derived configs, mapped weights) and give outputs bit-identical to the same models loaded from the folder, and
// within the mmdit/vae golden tests' tolerances of the reference (same bounds and reasons as there).
TEST(SingleFileModels, MMDiTAndVaeGoldensThroughTheSingleFile) {
    ModelSpec spec;
    spec.model = golden_single();
    const ModelFolder single = must_open(spec);
    const ModelFolder folder = must_open_folder(tiny_folder());

    auto from_single = MMDiT::load(*single.find("transformer"));
    auto from_folder = MMDiT::load(*folder.find("transformer"));
    ASSERT_TRUE(from_single.ok()) << from_single.status().message();
    ASSERT_TRUE(from_folder.ok()) << from_folder.status().message();
    for (MMDiT* m : {&from_single.value(), &from_folder.value()})
        m->mutable_weights().pos_embed = sincos_pos_embed(16, 8, 32);  // as MMDiTGolden: the table the reference ran with
    const SafetensorsFile g = sd3::testing::open_golden("tiny-a/mmdit.safetensors");
    for (int n : {0, 1}) {
        const std::string p = std::to_string(n) + ".";
        const Tensor x = sd3::testing::golden_tensor(g, p + "hidden_states"), t = sd3::testing::golden_tensor(g, p + "timestep");
        const Tensor c = sd3::testing::golden_tensor(g, p + "encoder_hidden_states");
        const Tensor pooled = sd3::testing::golden_tensor(g, p + "pooled_projections");
        auto a = from_single->forward(x, t, c, pooled);
        auto b = from_folder->forward(x, t, c, pooled);
        ASSERT_TRUE(a.ok() && b.ok());
        EXPECT_TRUE(same_bits(*a, *b)) << "case " << n;
        // 2 blocks of float32 with other summation orders than PyTorch: see MMDiTGolden.ForwardMatchesDiffusers.
        EXPECT_TRUE(sd3::testing::all_close(*a, sd3::testing::golden_tensor(g, p + "output"), 5e-6, 1e-5)) << "case " << n;
    }

    const Component* vc = single.find("vae");
    auto vcfg = VaeConfig::from_json(vc->config, vc->config_path);
    ASSERT_TRUE(vcfg.ok()) << vcfg.status().message();
    auto vae = Vae::load(*vcfg, vc->weights);
    ASSERT_TRUE(vae.ok()) << vae.status().message();
    auto ref_vae = Vae::load_folder(tiny_folder() + "/vae");
    ASSERT_TRUE(ref_vae.ok());
    const SafetensorsFile f = sd3::testing::open_golden("tiny-a/vae.safetensors");
    auto dec = vae->decode(sd3::testing::golden_tensor(f, "0.latent_in"));
    auto dec_ref = ref_vae->decode(sd3::testing::golden_tensor(f, "0.latent_in"));
    ASSERT_TRUE(dec.ok() && dec_ref.ok());
    EXPECT_TRUE(same_bits(*dec, *dec_ref));
    // ~25 float32 conv layers in another summation order: see VaeGolden.
    EXPECT_TRUE(sd3::testing::all_close(*dec, sd3::testing::golden_tensor(f, "0.decoded"), 2e-5, 1e-4));
    auto enc = vae->encode(sd3::testing::golden_tensor(f, "0.image"));
    ASSERT_TRUE(enc.ok());
    EXPECT_TRUE(sd3::testing::all_close(enc->mean, sd3::testing::golden_tensor(f, "0.latent_mean"), 2e-5, 1e-4));
}

// End to end as a ComfyUI user runs it: the single file plus --tokenizers, prompt text in, the reference's
// encode_prompt out (t5fp8_encode.json: max_sequence_length 77, negative ""), through the tokenizers and
// TextEncoders opened from the ModelFolder that open_model built. Tolerance as SingleFileEncoders.
TEST(SingleFileEncoders, PromptTextThroughTokenizersAndEncoders) {
    ModelSpec spec;
    spec.model = golden_single();
    spec.tokenizers = tiny_folder();
    const ModelFolder m = must_open(spec);
    auto meta = read_json_file(sd3::testing::tiny_path("single_file/t5fp8_encode.json"));
    ASSERT_TRUE(meta.ok());
    const int max_len = (*meta)["max_sequence_length"];
    auto tok_l = ClipTokenizer::load(m.find("tokenizer")->dir);
    auto tok_g = ClipTokenizer::load(m.find("tokenizer_2")->dir);
    auto tok_t5 = T5Tokenizer::load(m.find("tokenizer_3")->dir);
    ASSERT_TRUE(tok_l.ok() && tok_g.ok() && tok_t5.ok());
    auto ids = [](const Tokenized& t) {  // [1, T] int32
        Tensor out = Tensor::empty({1, static_cast<int64_t>(t.ids.size())}, DType::I32);
        std::copy(t.ids.begin(), t.ids.end(), out.data<int32_t>());
        return out;
    };
    auto tokens = [&](const std::string& text) {
        return PromptTokens{ids(tok_l->encode(text)), ids(tok_g->encode(text)), ids(tok_t5->encode(text, max_len))};
    };
    TextEncoderOptions opt;
    opt.max_sequence_length = max_len;
    opt.t5.format = T5WeightFormat::FP8_E4M3;  // the file's fp8 weights kept as stored
    auto te = TextEncoders::open(m, opt);
    ASSERT_TRUE(te.ok()) << te.status().message();
    auto out = te->encode_tokens({tokens((*meta)["0"]), tokens((*meta)["1"])});
    auto neg = te->encode_tokens({tokens((*meta)["negative_prompt"])}, false);
    ASSERT_TRUE(out.ok() && neg.ok()) << out.status().message() << neg.status().message();
    const SafetensorsFile g = sd3::testing::open_golden("tiny-a/single_file/t5fp8_encode.safetensors");
    for (int i = 0; i < 2; ++i) {
        SCOPED_TRACE(str_cat("prompt ", i));
        EXPECT_TRUE(sd3::testing::all_close((*out)[i].prompt_embeds, sd3::testing::golden_tensor(g, str_cat(i, ".prompt_embeds")), 1e-5, 1e-5));
        EXPECT_TRUE(sd3::testing::all_close((*out)[i].pooled, sd3::testing::golden_tensor(g, str_cat(i, ".pooled_prompt_embeds")), 1e-5, 1e-5));
        EXPECT_TRUE(sd3::testing::all_close((*neg)[0].prompt_embeds, sd3::testing::golden_tensor(g, str_cat(i, ".negative_prompt_embeds")), 1e-5, 1e-5));
        EXPECT_TRUE(sd3::testing::all_close((*neg)[0].pooled, sd3::testing::golden_tensor(g, str_cat(i, ".negative_pooled_prompt_embeds")), 1e-5, 1e-5));
    }
}
