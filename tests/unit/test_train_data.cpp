// Training data path: PIL-exact resize (tests/data/train/reference.safetensors from scripts/make_train_fixtures.py),
// crops, normalisation, captions (.txt, metadata.jsonl/csv, fallback), repeats and epoch order, skipping and
// --strict, the cache, TensorBoard record framing, checkpoint folders and LoRA files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/testing.h"
#include "io/image.h"
#include "train/cache.h"
#include "train/checkpoint.h"
#include "train/dataset.h"
#include "train/image_transforms.h"
#include "train/tensorboard.h"

namespace sd3::train {
namespace {

namespace fs = std::filesystem;
using sd3::testing::data_path;
using sd3::testing::golden_tensor;
using sd3::testing::open_golden;

fs::path temp_dir(const std::string& name) {
    fs::path p = fs::temp_directory_path() / str_cat("sd3tune_train_", name, "_", ::getpid());
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

void write_file(const fs::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
}

TEST(TrainTransforms, ResizeMatchesPil) {
    SafetensorsFile f = open_golden("train/reference.safetensors");
    for (const char* name : {"down", "up", "tall", "square", "strong_down"}) {
        const Tensor in = golden_tensor(f, str_cat("resize.", name, ".in"));    // [H, W, 3] u8
        const Tensor ref = golden_tensor(f, str_cat("resize.", name, ".out"));  // [h, w, 3] u8
        RgbImage img{static_cast<int>(in.size(1)), static_cast<int>(in.size(0)), {}};
        img.pixels.assign(in.data<uint8_t>(), in.data<uint8_t>() + in.numel());
        const int size = std::string(name) == "tall" ? 24 : std::string(name) == "strong_down" ? 20 : 16;
        int w, h;
        resized_size(img.width, img.height, size, &w, &h);
        ASSERT_EQ(w, ref.size(1)) << name;
        ASSERT_EQ(h, ref.size(0)) << name;
        const RgbImage out = resize_bilinear(img, w, h);
        if (std::string(name) != "tall") {
            // PIL's integer arithmetic reproduced: every byte equal
            EXPECT_EQ(0, std::memcmp(out.pixels.data(), ref.data<uint8_t>(), out.pixels.size())) << name;
        } else {
            // Pillow 13 (which made the fixture) runs the vertical pass first for some shapes, this one among them;
            // Pillow <= 12 (the reference's era) and we always go horizontal first. The two orders differ only by the
            // rounding of the 8-bit intermediate: at most a couple of levels.
            int worst = 0;
            for (size_t i = 0; i < out.pixels.size(); ++i)
                worst = std::max(worst, std::abs(int(out.pixels[i]) - int(ref.data<uint8_t>()[i])));
            EXPECT_LE(worst, 2) << name;
        }
    }
}

TEST(TrainTransforms, CropsFlipAndNormalisation) {
    int top, left;
    center_crop_offsets(25, 16, 16, &top, &left);
    EXPECT_EQ(top, 0);
    EXPECT_EQ(left, 4);  // round(4.5) = 4: Python rounds half to even
    center_crop_offsets(16, 23, 16, &top, &left);
    EXPECT_EQ(top, 4);  // round(3.5) = 4
    RgbImage img = RgbImage::blank(3, 2);
    for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>(i * 13);
    const RgbImage f = flip_horizontal(img);
    EXPECT_EQ(f.pixels[0], img.pixels[6]);
    const Tensor t = to_normalized_tensor(img);  // [3, 2, 3]
    EXPECT_EQ(t.shape(), (Shape{3, 2, 3}));
    EXPECT_FLOAT_EQ(t.data<float>()[0], (0.0f / 255.0f - 0.5f) / 0.5f);
    EXPECT_FLOAT_EQ(t.data<float>()[1], (39.0f / 255.0f - 0.5f) / 0.5f);  // pixel (1, 0) red
    const RgbImage c = crop(img, 1, 1, 1);
    EXPECT_EQ(c.pixels[0], img.pixels[(1 * 3 + 1) * 3]);
}

TEST(TrainDataset, CaptionsFromTextFilesAndFallback) {
    DatasetOptions o;
    o.instance_data_dir = data_path("train/images");
    o.instance_prompt = "a photo of sks dog";
    auto list = list_instance_images(o);
    ASSERT_TRUE(list.ok()) << list.status().message();
    ASSERT_EQ(list->size(), 4u);
    EXPECT_EQ((*list)[0].caption, "a photo of sks dog on grass, number 0");
    EXPECT_EQ((*list)[3].caption, "a photo of sks dog");  // no .txt: the instance prompt
    o.instance_prompt.clear();
    EXPECT_FALSE(list_instance_images(o).ok());  // dog_2 has no caption and there is no fallback
}

TEST(TrainDataset, CaptionsFromMetadataJsonlAndCsv) {
    DatasetOptions o;
    o.instance_data_dir = data_path("train/images_meta");
    auto list = list_instance_images(o);
    ASSERT_TRUE(list.ok()) << list.status().message();
    EXPECT_EQ((*list)[2].caption, "a photo of sks dog, view 2");
    o.caption_column = "nope";
    EXPECT_FALSE(list_instance_images(o).ok());

    const fs::path d = temp_dir("csv");
    fs::copy_file(data_path("train/images/dog_0.png"), d / "a.png");
    fs::copy_file(data_path("train/images/dog_1.png"), d / "b.png");
    write_file(d / "metadata.csv", "file_name,text\na.png,\"a dog, \"\"quoted\"\"\"\nb.png,\n");
    DatasetOptions c;
    c.instance_data_dir = d.string();
    c.instance_prompt = "fallback";
    auto l2 = list_instance_images(c);
    ASSERT_TRUE(l2.ok()) << l2.status().message();
    EXPECT_EQ((*l2)[0].caption, "a dog, \"quoted\"");
    EXPECT_EQ((*l2)[1].caption, "fallback");
    fs::remove_all(d);
}

ImageDecoder file_decoder() {
    return [](const std::string& p) -> Result<RgbImage> {
        SD3_ASSIGN_OR_RETURN(Image img, read_image(p));
        return RgbImage{img.width, img.height, std::move(img.pixels)};
    };
}

TEST(TrainDataset, UnreadableAndTinyImagesAreSkippedOrStop) {
    const fs::path d = temp_dir("bad");
    fs::copy_file(data_path("train/images/dog_0.png"), d / "good.png");
    write_file(d / "broken.png", "not a png at all");
    Image tiny = Image::blank(4, 4);
    ASSERT_TRUE(write_png((d / "tiny.png").string(), tiny).ok());
    DatasetOptions o;
    o.instance_data_dir = d.string();
    o.instance_prompt = "p";
    o.resolution = 16;
    auto list = list_instance_images(o);
    ASSERT_TRUE(list.ok());
    auto prep = prepare_dataset(o, *list, {}, file_decoder(), 1);
    ASSERT_TRUE(prep.ok()) << prep.status().message();
    EXPECT_EQ(prep->instance.size(), 1u);
    ASSERT_EQ(prep->skipped.size(), 2u);
    EXPECT_NE(prep->skipped[0].find("broken.png"), std::string::npos);
    EXPECT_NE(prep->skipped[1].find("too small"), std::string::npos);
    o.strict = true;
    auto strict = prepare_dataset(o, *list, {}, file_decoder(), 1);
    ASSERT_FALSE(strict.ok());
    EXPECT_NE(strict.status().message().find("broken.png"), std::string::npos);
    fs::remove_all(d);
}

TEST(TrainDataset, PreparedImagesRepeatsAndOrder) {
    DatasetOptions o;
    o.instance_data_dir = data_path("train/images");
    o.instance_prompt = "p";
    o.resolution = 32;
    o.random_flip = true;
    o.repeats = 3;
    auto list = list_instance_images(o);
    ASSERT_TRUE(list.ok());
    auto a = prepare_dataset(o, *list, {}, file_decoder(), 5);
    auto b = prepare_dataset(o, *list, {}, file_decoder(), 5);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->instance.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_EQ(a->instance[i].pixels.shape(), (Shape{3, 32, 32}));
        EXPECT_TRUE(sd3::testing::all_close(a->instance[i].pixels, b->instance[i].pixels, 0, 0));  // same crop seed
        // the flipped twin mirrors the crop
        EXPECT_EQ(a->instance[i].pixels.data<float>()[0], a->instance[i].pixels_flipped.data<float>()[31]);
    }
    EXPECT_EQ(dataset_length(o, 4, 0), 12);
    EXPECT_EQ(sample_at(o, 5, 4, 0).instance, 1);  // copies of an image are consecutive
    const auto p0 = epoch_permutation(9, 0, 12), p0b = epoch_permutation(9, 0, 12), p1 = epoch_permutation(9, 1, 12);
    EXPECT_EQ(p0, p0b);
    EXPECT_NE(p0, p1);
    std::vector<int64_t> sorted = p1;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(sorted[i], i);
    o.with_prior_preservation = true;
    EXPECT_EQ(dataset_length(o, 4, 20), 20);
    EXPECT_EQ(sample_at(o, 17, 4, 20).class_image, 17);
}

TEST(TrainCache, ReusesEntriesAndKeysBySettings) {
    const fs::path d = temp_dir("cache");
    auto cache = TrainCache::open(d.string(), "model-A");
    ASSERT_TRUE(cache.ok());
    int calls = 0;
    auto enc = [&](const std::vector<std::string>& ps) -> Result<std::vector<EncodedPrompt>> {
        ++calls;
        std::vector<EncodedPrompt> out;
        for (const auto& p : ps)
            out.push_back({Tensor::full({2, 3}, static_cast<double>(p.size())), Tensor::full({4}, 1.0)});
        return out;
    };
    auto r1 = cache->prompts({"a", "bb", "a"}, enc);
    ASSERT_TRUE(r1.ok());
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(cache->stats().prompts_encoded, 2);
    auto r2 = cache->prompts({"bb", "a"}, enc);
    ASSERT_TRUE(r2.ok());
    EXPECT_EQ(calls, 1);  // all cached
    EXPECT_EQ((*r2)[0].prompt_embeds.data<float>()[0], 2.0f);
    auto other = TrainCache::open(d.string(), "model-B");  // other settings: other keys
    ASSERT_TRUE(other->prompts({"a"}, enc).ok());
    EXPECT_EQ(calls, 2);
    const Tensor px = Tensor::full({3, 8, 8}, 0.5);
    EXPECT_FALSE(cache->has_latent(px));
    auto lat = cache->latent(px, [](const Tensor&) -> Result<LatentDist> {
        return LatentDist{Tensor::full({16, 1, 1}, 2.0), Tensor::full({16, 1, 1}, -1.0)};
    });
    ASSERT_TRUE(lat.ok());
    EXPECT_TRUE(cache->has_latent(px));
    auto again = cache->latent(px, nullptr);  // no encoder needed on a hit
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->logvar.data<float>()[0], -1.0f);
    fs::remove_all(d);
}

TEST(TrainTensorBoard, Crc32cAndRecordFraming) {
    const char* check = "123456789";
    EXPECT_EQ(crc32c(reinterpret_cast<const uint8_t*>(check), 9), 0xE3069283u);  // the CRC-32C check value
    const std::vector<uint8_t> payload = {1, 2, 3};
    const auto rec = TensorBoardWriter::frame(payload);
    ASSERT_EQ(rec.size(), 8u + 4 + 3 + 4);
    uint64_t len;
    std::memcpy(&len, rec.data(), 8);
    EXPECT_EQ(len, 3u);
    uint32_t c;
    std::memcpy(&c, rec.data() + 8, 4);
    EXPECT_EQ(c, masked_crc32c(rec.data(), 8));
    const fs::path d = temp_dir("tb");
    auto w = TensorBoardWriter::open(d.string());
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->scalar("loss", 0.5, 3).ok());
    const std::string path = w->path();
    *w = TensorBoardWriter();
    std::ifstream f(path, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    // two records, each with valid CRCs; the second holds the tag
    size_t pos = 0;
    int records = 0;
    while (pos + 12 <= bytes.size()) {
        uint64_t n;
        std::memcpy(&n, bytes.data() + pos, 8);
        uint32_t dc;
        std::memcpy(&dc, bytes.data() + pos + 12 + n, 4);
        EXPECT_EQ(dc, masked_crc32c(bytes.data() + pos + 12, n));
        pos += 12 + n + 4;
        ++records;
    }
    EXPECT_EQ(records, 2);
    EXPECT_NE(std::string(bytes.begin(), bytes.end()).find("loss"), std::string::npos);
    fs::remove_all(d);
}

TEST(TrainCheckpoint, SaveLoadLimitAndIncompleteFolders) {
    const fs::path d = temp_dir("ckpt");
    const std::vector<LoraSlot> slots = {{"transformer_blocks.0.attn.to_q.lora_A.weight", 0, {2, 3}},
                                         {"transformer_blocks.0.attn.to_q.lora_B.weight", 6, {3, 2}}};
    std::vector<float> params(12);
    for (int i = 0; i < 12; ++i) params[i] = 0.1f * i;
    LoraSettings lora;
    lora.rank = 2;
    auto opt = make_optimizer(OptimizerConfig{}, {{0, 6}, {6, 6}});
    std::vector<float> g(12, 0.01f);
    opt->step(params.data(), g.data(), 1e-3);
    TrainerState st;
    st.global_step = 1;
    st.settings_hash = "h";
    for (int64_t step : {1, 2, 3}) {
        st.global_step = step;
        auto r = save_checkpoint(d.string(), st, slots, params.data(), lora, *opt, 2);
        ASSERT_TRUE(r.ok()) << r.status().message();
    }
    auto all = list_checkpoints(d.string());
    ASSERT_EQ(all.size(), 2u);  // limit 2: checkpoint-1 removed
    EXPECT_EQ(all[0].first, 2);
    // an interrupted write (no trainer_state.json) is never picked as "latest"
    fs::create_directories(d / "checkpoint-9");
    auto latest = resolve_checkpoint(d.string(), "latest");
    ASSERT_TRUE(latest.ok());
    EXPECT_EQ(fs::path(*latest).filename(), "checkpoint-3");
    EXPECT_FALSE(resolve_checkpoint(d.string(), "checkpoint-9").ok());
    std::vector<float> back(12, 0.0f);
    auto opt2 = make_optimizer(OptimizerConfig{}, {{0, 6}, {6, 6}});
    TrainerState st2;
    ASSERT_TRUE(load_checkpoint(*latest, slots, back.data(), *opt2, &st2).ok());
    EXPECT_EQ(st2.global_step, 3);
    EXPECT_EQ(st2.settings_hash, "h");
    EXPECT_EQ(back, params);
    EXPECT_EQ(opt2->steps(), 1);
    // the LoRA file is the diffusers layout
    auto set = sd3::read_lora_file((fs::path(*latest) / kLoraWeightName).string());
    ASSERT_TRUE(set.ok()) << set.status().message();
    ASSERT_EQ(set->modules.count("transformer_blocks.0.attn.to_q"), 1u);
    EXPECT_EQ(set->modules["transformer_blocks.0.attn.to_q"].alpha, 2.0f);
    fs::remove_all(d);
}

}  // namespace
}  // namespace sd3::train
