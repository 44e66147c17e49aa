// make-model: the weight lists of each architecture are exactly what the model loaders take (a generated tiny
// folder loads through every model, whose WeightLoader rejects missing, misshapen and extra tensors), the tiny
// preset has the names and shapes of the golden tiny-a folder, and SD3 Medium has its published size.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/testing.h"
#include "io/model_folder.h"
#include "io/model_presets.h"
#include "models/clip_text.h"
#include "models/mmdit.h"
#include "models/t5_encoder.h"
#include "models/vae.h"

using namespace sd3;
namespace fs = std::filesystem;

namespace {

int64_t count_params(const std::vector<TensorSpec>& specs) {
    int64_t n = 0;
    for (const TensorSpec& s : specs) n += shape_numel(s.shape);
    return n;
}

struct TempDir {
    fs::path path = fs::temp_directory_path() /
                    ("sd3_preset_" + std::to_string(::getpid()) + "_" +
                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    TempDir() { fs::remove_all(path); }
    ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST(ModelPresets, TinyPresetHasTheGoldenFoldersTensors) {
    auto folder = ModelFolder::open(sd3::testing::tiny_path("model"));
    ASSERT_TRUE(folder.ok()) << folder.status().message();
    auto configs = preset_configs("tiny");
    ASSERT_TRUE(configs.ok());
    for (const char* name : {"transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"}) {
        const Component* c = folder->find(name);
        auto specs = component_weight_specs(c->class_name, (*configs)[name], DType::F16);
        ASSERT_TRUE(specs.ok()) << specs.status().message();
        std::vector<std::string> names;
        for (const TensorSpec& s : *specs) {
            names.push_back(s.name);
            auto meta = c->weights->meta(s.name);
            ASSERT_TRUE(meta.has_value()) << name << ": preset has " << s.name << " which the golden folder lacks";
            EXPECT_EQ(meta->shape, s.shape) << s.name;
        }
        std::sort(names.begin(), names.end());
        EXPECT_EQ(names, c->weights->names()) << name;
    }
}

TEST(ModelPresets, GeneratedTinyFolderLoadsThroughEveryModel) {
    TempDir dir;
    MakeModelOptions opt;
    opt.preset = "tiny";
    opt.output_dir = dir.path.string();
    opt.tokenizers_dir = sd3::testing::tiny_path("model");
    opt.max_shard_bytes = 64 << 10;  // forces the larger components into shards with an index
    ASSERT_TRUE(make_model(opt).ok());
    EXPECT_TRUE(fs::exists(dir.path / "text_encoder" / "model.safetensors.index.json"));

    auto folder = ModelFolder::open(dir.path.string());
    ASSERT_TRUE(folder.ok()) << folder.status().message();
    ASSERT_EQ(folder->components().size(), 9u);
    auto mmdit = MMDiT::load(*folder->find("transformer"));
    EXPECT_TRUE(mmdit.ok()) << mmdit.status().message();
    const Component* vae = folder->find("vae");
    auto vae_cfg = VaeConfig::from_json(vae->config, vae->config_path);
    ASSERT_TRUE(vae_cfg.ok());
    auto v = Vae::load(*vae_cfg, vae->weights);
    EXPECT_TRUE(v.ok()) << v.status().message();
    for (const char* name : {"text_encoder", "text_encoder_2"}) {
        const Component* c = folder->find(name);
        auto cfg = ClipTextConfig::from_json(c->config, c->config_path);
        ASSERT_TRUE(cfg.ok());
        auto m = ClipTextModel::load(*cfg, c->weights);
        EXPECT_TRUE(m.ok()) << m.status().message();
    }
    const Component* t5 = folder->find("text_encoder_3");
    auto t5_cfg = T5Config::from_json(t5->config, t5->config_path);
    ASSERT_TRUE(t5_cfg.ok());
    auto t5m = T5Encoder::load(*t5_cfg, t5->weights);
    EXPECT_TRUE(t5m.ok()) << t5m.status().message();

    // Random, not constant: a weight matrix has spread; norms are one, biases zero.
    auto w = folder->find("transformer")->weights->get("transformer_blocks.0.attn.to_q.weight");
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->dtype(), DType::BF16);
    const std::vector<float> v0 = w->to_float_vector();
    EXPECT_NE(v0[0], v0[1]);
    EXPECT_EQ(folder->find("transformer")->weights->get("transformer_blocks.0.attn.to_q.bias")->to_float_vector()[0], 0.0f);
}

TEST(ModelPresets, RefusesANonEmptyOutputAndMissingTokenizers) {
    TempDir dir;
    fs::create_directories(dir.path);
    std::ofstream(dir.path / "keep.txt") << "user data";
    MakeModelOptions opt{"tiny", dir.path.string(), sd3::testing::tiny_path("model")};
    auto s = make_model(opt);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("not an empty folder"), std::string::npos);
    EXPECT_TRUE(fs::exists(dir.path / "keep.txt"));
    opt.output_dir = (dir.path / "new").string();
    opt.tokenizers_dir = dir.path.string();
    EXPECT_NE(make_model(opt).message().find("has no tokenizer/ folder"), std::string::npos);
    EXPECT_NE(preset_configs("sd4").status().message().find("unknown preset"), std::string::npos);
}

// SD3 Medium's transformer: about 2.03 B parameters plus the 192x192x1536 position table (§1.2: 4.17 GB in fp16).
TEST(ModelPresets, Sd3MediumSizes) {
    auto c = preset_configs("sd3-medium");
    ASSERT_TRUE(c.ok());
    const int64_t transformer = count_params(component_weight_specs("SD3Transformer2DModel", (*c)["transformer"], DType::F16).value());
    EXPECT_NEAR(static_cast<double>(transformer) * 2, 4.17e9, 0.02e9);
    const int64_t clip_l = count_params(component_weight_specs("CLIPTextModelWithProjection", (*c)["text_encoder"], DType::F16).value());
    EXPECT_NEAR(static_cast<double>(clip_l), 123.65e6, 0.01e6);  // §1.4
    const int64_t t5 = count_params(component_weight_specs("T5EncoderModel", (*c)["text_encoder_3"], DType::F16).value());
    EXPECT_NEAR(static_cast<double>(t5) * 2, 9.52e9, 0.03e9);  // §1.6: 9.52 GB in fp16
    auto c35 = preset_configs("sd3.5-medium");
    ASSERT_TRUE(c35.ok());
    EXPECT_GT(count_params(component_weight_specs("SD3Transformer2DModel", (*c35)["transformer"], DType::F16).value()), transformer);
}
