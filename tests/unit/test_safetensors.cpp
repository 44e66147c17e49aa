// safetensors: round trips, sharded sets, and every corruption the reader must name instead of crashing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "io/safetensors.h"

using namespace sd3;
namespace fs = std::filesystem;

namespace {

class SafetensorsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("sd3_st_" + std::to_string(::getpid()) + "_" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    // Writes a file from a raw header string and a data section of `data_bytes` zero bytes.
    std::string write_raw(const std::string& name, const std::string& header, size_t data_bytes,
                          std::optional<uint64_t> length_field = std::nullopt) {
        std::ofstream out(path(name), std::ios::binary);
        const uint64_t len = length_field.value_or(header.size());
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xff));
        out << header << std::string(data_bytes, '\0');
        return path(name);
    }

    std::string open_error(const std::string& p) {
        auto f = SafetensorsFile::open(p);
        EXPECT_FALSE(f.ok()) << "expected " << p << " to be rejected";
        return f.ok() ? "" : f.status().message();
    }

    fs::path dir_;
};

}  // namespace

TEST_F(SafetensorsTest, WriteThenReadRoundTrips) {
    Tensor a = Tensor::from_vector({2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor b = Tensor::from_vector({3}, {0.5f, -1, 7}).to(DType::BF16);
    Tensor c = Tensor::from_vector({2, 2}, {1, 2, 3, 4}).transpose(0, 1);  // strided input is written contiguous
    ASSERT_TRUE(write_safetensors(path("x.safetensors"), {{"a", a}, {"b", b}, {"c", c}}, {{"format", "pt"}}).ok());
    EXPECT_FALSE(fs::exists(path("x.safetensors.tmp")));
    auto f = SafetensorsFile::open(path("x.safetensors"));
    ASSERT_TRUE(f.ok()) << f.status().message();
    EXPECT_EQ(f->metadata().at("format"), "pt");
    ASSERT_EQ(f->tensors().size(), 3u);
    EXPECT_EQ(f->get("a").value().to_float_vector(), a.to_float_vector());
    EXPECT_EQ(f->get("b").value().dtype(), DType::BF16);
    EXPECT_EQ(f->get("b").value().to_float_vector(), b.to_float_vector());
    EXPECT_EQ(f->get("c").value().to_float_vector(), (std::vector<float>{1, 3, 2, 4}));
    auto missing = f->get("nope");
    EXPECT_EQ(missing.status().code(), ErrorCode::NOT_FOUND);
}

TEST_F(SafetensorsTest, ZeroSizedTensorsAndEmptyFile) {
    ASSERT_TRUE(write_safetensors(path("e.safetensors"), {{"z", Tensor::zeros({0, 4})}}).ok());
    auto f = SafetensorsFile::open(path("e.safetensors"));
    ASSERT_TRUE(f.ok()) << f.status().message();
    EXPECT_EQ(f->get("z").value().shape(), (Shape{0, 4}));
}

TEST_F(SafetensorsTest, MissingFile) {
    auto f = SafetensorsFile::open(path("absent.safetensors"));
    EXPECT_EQ(f.status().code(), ErrorCode::NOT_FOUND);
    EXPECT_NE(f.status().message().find("absent.safetensors"), std::string::npos);
}

TEST_F(SafetensorsTest, TruncatedBelowHeaderLength) {
    std::ofstream(path("t.safetensors"), std::ios::binary) << "abc";
    EXPECT_NE(open_error(path("t.safetensors")).find("fewer than the 8-byte header length"), std::string::npos);
}

TEST_F(SafetensorsTest, TruncatedData) {
    ASSERT_TRUE(write_safetensors(path("x.safetensors"), {{"a", Tensor::zeros({64})}}).ok());
    fs::resize_file(path("x.safetensors"), fs::file_size(path("x.safetensors")) - 10);
    EXPECT_NE(open_error(path("x.safetensors")).find("data_offsets end at byte 256 but the data section holds only 246"),
              std::string::npos);
}

TEST_F(SafetensorsTest, HugeHeaderLength) {
    const std::string p = write_raw("h.safetensors", "{}", 0, uint64_t{1} << 60);
    EXPECT_NE(open_error(p).find("exceeds the format's limit"), std::string::npos);
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
    const std::string p = write_raw("h.safetensors", "{}", 0, 1000);
    EXPECT_NE(open_error(p).find("runs past the end"), std::string::npos);
}

TEST_F(SafetensorsTest, BadJson) {
    const std::string p = write_raw("j.safetensors", "{\"a\": {\"dtype\": ", 0);
    EXPECT_NE(open_error(p).find("not valid JSON"), std::string::npos);
    const std::string q = write_raw("k.safetensors", "[1, 2]", 0);
    EXPECT_NE(open_error(q).find("not a JSON object"), std::string::npos);
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
    const std::string p = write_raw("o.safetensors", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
    EXPECT_NE(open_error(p).find("data_offsets end at byte 16"), std::string::npos);
    const std::string q = write_raw("r.safetensors", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8);
    EXPECT_NE(open_error(q).find("end before they begin"), std::string::npos);
}

TEST_F(SafetensorsTest, WrongDtypeSize) {
    // 3 f32 elements need 12 bytes; the offsets give 8.
    const std::string p = write_raw("d.safetensors", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 16);
    EXPECT_NE(open_error(p).find("needs 12 bytes but data_offsets span 8"), std::string::npos);
}

TEST_F(SafetensorsTest, UnknownDtype) {
    const std::string p = write_raw("u.safetensors", R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2);
    EXPECT_NE(open_error(p).find("unknown dtype \"Q4\""), std::string::npos);
}

TEST_F(SafetensorsTest, OverlappingTensors) {
    const std::string p = write_raw(
        "ov.safetensors",
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12);
    EXPECT_NE(open_error(p).find("overlap"), std::string::npos);
}

TEST_F(SafetensorsTest, DuplicateNames) {
    const std::string p = write_raw(
        "dup.safetensors",
        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
    EXPECT_NE(open_error(p).find("\"a\" appears twice"), std::string::npos);
}

TEST_F(SafetensorsTest, NegativeOrNonIntegerShape) {
    const std::string p = write_raw("s.safetensors", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
    EXPECT_NE(open_error(p).find("not a non-negative integer"), std::string::npos);
}

TEST_F(SafetensorsTest, MetadataMustBeStrings) {
    const std::string p = write_raw("m.safetensors", R"({"__metadata__":{"rank":4}})", 0);
    EXPECT_NE(open_error(p).find("__metadata__ value \"rank\" is not a string"), std::string::npos);
}

TEST_F(SafetensorsTest, ShardedIndex) {
    ASSERT_TRUE(write_safetensors(path("m-00001-of-00002.safetensors"), {{"a", Tensor::full({2}, 1)}}).ok());
    ASSERT_TRUE(write_safetensors(path("m-00002-of-00002.safetensors"), {{"b", Tensor::full({3}, 2)}}).ok());
    nlohmann::json index = {{"metadata", {{"total_size", 20}}},
                            {"weight_map", {{"a", "m-00001-of-00002.safetensors"}, {"b", "m-00002-of-00002.safetensors"}}}};
    std::ofstream(path("model.safetensors.index.json")) << index.dump();
    auto set = WeightSet::open(dir_.string(), {"model"});
    ASSERT_TRUE(set.ok()) << set.status().message();
    EXPECT_EQ(set->names(), (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(set->get("b").value().to_float_vector(), (std::vector<float>{2, 2, 2}));

    index["weight_map"]["c"] = "m-00001-of-00002.safetensors";
    std::ofstream(path("model.safetensors.index.json")) << index.dump();
    auto bad = WeightSet::open(dir_.string(), {"model"});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("lists \"c\""), std::string::npos);
}

TEST_F(SafetensorsTest, FailedWriteKeepsTheOldFile) {
    ASSERT_TRUE(write_safetensors(path("keep.safetensors"), {{"a", Tensor::full({2}, 3)}}).ok());
    // A directory where the temporary file would go makes the write fail.
    fs::create_directory(path("keep.safetensors.tmp"));
    EXPECT_FALSE(write_safetensors(path("keep.safetensors"), {{"a", Tensor::full({2}, 4)}}).ok());
    fs::remove(path("keep.safetensors.tmp"));
    auto f = SafetensorsFile::open(path("keep.safetensors"));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->get("a").value().to_float_vector(), (std::vector<float>{3, 3}));
}

TEST(SafetensorsGolden, TinyTransformerLoads) {
    auto f = SafetensorsFile::open(sd3::testing::tiny_path("model/transformer/diffusion_pytorch_model.safetensors"));
    ASSERT_TRUE(f.ok()) << f.status().message();
    auto w = f->get("pos_embed.proj.weight");
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(w->dtype(), DType::F16);
    EXPECT_EQ(w->shape(), (Shape{32, 16, 2, 2}));
}
