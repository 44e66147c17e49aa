// ModelFolder on the tiny-a pipeline: all nine components with their configs and weights, and a clear error
// naming the file for each way a folder can be broken.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/testing.h"
#include "io/json_file.h"
#include "io/model_folder.h"
#include "io/model_info.h"

using namespace sd3;
namespace fs = std::filesystem;

TEST(ModelFolder, TinyHasAllNineComponents) {
    auto m = ModelFolder::open(sd3::testing::tiny_path("model"));
    ASSERT_TRUE(m.ok()) << m.status().message();
    ASSERT_EQ(m->components().size(), 9u);
    for (size_t i = 0; i < kSD3Components.size(); ++i) EXPECT_EQ(m->components()[i].name, kSD3Components[i]);
    EXPECT_EQ(m->find("transformer")->class_name, "SD3Transformer2DModel");
    EXPECT_EQ(m->find("vae")->class_name, "AutoencoderKL");
    EXPECT_EQ(m->find("text_encoder_3")->class_name, "T5EncoderModel");
    EXPECT_EQ(m->find("tokenizer_2")->config["pad_token"], "!");
    EXPECT_EQ(m->find("scheduler")->config["shift"], 3.0);
    EXPECT_EQ(m->find("tokenizer")->weights, nullptr);
}

// Every tensor of every weighted component reads back with the stored dtype (f16, as the real checkpoints) and the
// shapes its config implies for the tensors that pin the config's numbers.
TEST(ModelFolder, TinyWeightsMatchTheirConfigs) {
    auto m = ModelFolder::open(sd3::testing::tiny_path("model"));
    ASSERT_TRUE(m.ok()) << m.status().message();
    for (const Component& c : m->components()) {
        if (!c.weights) continue;
        for (const std::string& name : c.weights->names()) {
            auto t = c.weights->get(name);
            ASSERT_TRUE(t.ok()) << t.status().message();
            EXPECT_EQ(t->dtype(), DType::F16) << c.name << " " << name;
            EXPECT_EQ(t->shape(), c.weights->meta(name)->shape);
        }
    }
    const auto& tc = m->find("transformer")->config;
    const int64_t inner = tc["num_attention_heads"].get<int64_t>() * tc["attention_head_dim"].get<int64_t>();
    const int64_t p = tc["patch_size"];
    EXPECT_EQ(m->find("transformer")->weights->meta("pos_embed.proj.weight")->shape, (Shape{inner, tc["in_channels"], p, p}));
    const int64_t grid = tc["pos_embed_max_size"];
    EXPECT_EQ(m->find("transformer")->weights->meta("pos_embed.pos_embed")->shape, (Shape{1, grid * grid, inner}));
    EXPECT_EQ(m->find("transformer")->weights->meta("context_embedder.weight")->shape,
              (Shape{inner, tc["joint_attention_dim"]}));
    const int64_t layers = tc["num_layers"];
    EXPECT_TRUE(m->find("transformer")->weights->meta("transformer_blocks." + std::to_string(layers - 1) + ".attn.to_q.weight"));
    EXPECT_FALSE(m->find("transformer")->weights->meta("transformer_blocks." + std::to_string(layers) + ".attn.to_q.weight"));

    const auto& cc = m->find("text_encoder")->config;
    EXPECT_EQ(m->find("text_encoder")->weights->meta("text_model.embeddings.token_embedding.weight")->shape,
              (Shape{cc["vocab_size"], cc["hidden_size"]}));
    const auto& t5 = m->find("text_encoder_3")->config;
    EXPECT_EQ(m->find("text_encoder_3")->weights->meta("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")->shape,
              (Shape{t5["d_ff"], t5["d_model"]}));
    const auto& vc = m->find("vae")->config;
    EXPECT_EQ(m->find("vae")->weights->meta("encoder.conv_in.weight")->shape,
              (Shape{vc["block_out_channels"][0], vc["in_channels"], 3, 3}));
}

TEST(ModelFolder, DescribeCountsParameters) {
    auto m = ModelFolder::open(sd3::testing::tiny_path("model"));
    ASSERT_TRUE(m.ok());
    const auto d = describe_model(*m);
    ASSERT_EQ(d["components"].size(), 9u);
    const auto& tr = d["components"][0];
    EXPECT_EQ(tr["name"], "transformer");
    int64_t params = 0;
    for (const std::string& n : m->find("transformer")->weights->names())
        params += shape_numel(m->find("transformer")->weights->meta(n)->shape);
    EXPECT_EQ(tr["parameters"].get<int64_t>(), params);
    EXPECT_EQ(tr["bytes"].get<int64_t>(), params * 2);
    EXPECT_EQ(tr["config"]["num_layers"], 2);
}

namespace {

// A writable copy of the tiny model folder (configs and small files; weights copied too: ~7 MB).
class BrokenFolderTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("sd3_mf_" + std::to_string(::getpid()) + "_" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::copy(sd3::testing::tiny_path("model"), dir_, fs::copy_options::recursive);
        for (auto& e : fs::recursive_directory_iterator(dir_))
            fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    }
    void TearDown() override { fs::remove_all(dir_); }
    std::string error() {
        auto m = ModelFolder::open(dir_.string());
        EXPECT_FALSE(m.ok());
        return m.ok() ? "" : m.status().message();
    }
    fs::path dir_;
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_F(BrokenFolderTest, NoModelIndex) {
    fs::remove(dir_ / "model_index.json");
    EXPECT_TRUE(contains(error(), "no model_index.json"));
}

TEST_F(BrokenFolderTest, MissingComponentFolder) {
    fs::remove_all(dir_ / "vae");
    const std::string e = error();
    EXPECT_TRUE(contains(e, "lists \"vae\"")) << e;
}

TEST_F(BrokenFolderTest, MissingConfig) {
    fs::remove(dir_ / "transformer" / "config.json");
    EXPECT_TRUE(contains(error(), "transformer/config.json: cannot open"));
}

TEST_F(BrokenFolderTest, ConfigOfAnotherClass) {
    fs::copy_file(dir_ / "vae" / "config.json", dir_ / "transformer" / "config.json", fs::copy_options::overwrite_existing);
    EXPECT_TRUE(contains(error(), "describes a AutoencoderKL but model_index.json says \"transformer\" is a SD3Transformer2DModel"));
}

TEST_F(BrokenFolderTest, BadConfigJson) {
    std::ofstream(dir_ / "text_encoder" / "config.json") << "{ not json";
    EXPECT_TRUE(contains(error(), "text_encoder/config.json: not valid JSON"));
}

TEST_F(BrokenFolderTest, MissingWeights) {
    fs::remove(dir_ / "text_encoder_3" / "model.safetensors");
    EXPECT_TRUE(contains(error(), "expected model.safetensors"));
}

TEST_F(BrokenFolderTest, BinWeightsOnly) {
    fs::rename(dir_ / "vae" / "diffusion_pytorch_model.safetensors", dir_ / "vae" / "diffusion_pytorch_model.bin");
    EXPECT_TRUE(contains(error(), "PyTorch .bin weights"));
}

TEST_F(BrokenFolderTest, TruncatedWeights) {
    const fs::path w = dir_ / "transformer" / "diffusion_pytorch_model.safetensors";
    fs::resize_file(w, fs::file_size(w) / 2);
    const std::string e = error();
    EXPECT_TRUE(contains(e, "diffusion_pytorch_model.safetensors: not a valid safetensors file")) << e;
}

TEST_F(BrokenFolderTest, MissingTokenizerFiles) {
    fs::remove(dir_ / "tokenizer_3" / "spiece.model");
    EXPECT_TRUE(contains(error(), "the T5 tokenizer needs spiece.model"));
}

TEST_F(BrokenFolderTest, OptionalComponentAbsent) {
    auto index = read_json_file((dir_ / "model_index.json").string()).value();
    index["text_encoder_3"] = {nullptr, nullptr};
    index["tokenizer_3"] = {nullptr, nullptr};
    std::ofstream(dir_ / "model_index.json") << index.dump();
    auto m = ModelFolder::open(dir_.string());
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_EQ(m->components().size(), 7u);
    auto t5 = m->require("text_encoder_3");
    ASSERT_FALSE(t5.ok());
    EXPECT_TRUE(contains(t5.status().message(), "has no text_encoder_3"));
}
