// The VAE's extra ops and helpers: nearest upsampling, right/bottom padding, banded convolution equal to the
// plain one, latent normalization in the pipeline's order, config validation, and loading one half of the VAE.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "core/rng.h"
#include "io/json_file.h"
#include "models/vae.h"
#include "ops/cpu/vae_ops.h"
#include "ops/ops.h"

using namespace sd3;

TEST(VaeOps, UpsampleNearestRepeatsEachPixel) {
    const Tensor x = Tensor::from_vector({1, 2, 2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    const Tensor y = ops::upsample_nearest2x(x);  // [1, 2, 4, 6]
    ASSERT_EQ(y.shape(), (Shape{1, 2, 4, 6}));
    for (int64_t c = 0; c < 2; ++c)
        for (int64_t r = 0; r < 4; ++r)
            for (int64_t q = 0; q < 6; ++q) EXPECT_EQ(y.item_at({0, c, r, q}), x.item_at({0, c, r / 2, q / 2}));
}

TEST(VaeOps, PadRightBottomAppendsZeros) {
    const Tensor x = Tensor::from_vector({1, 1, 2, 2}, {1, 2, 3, 4});
    const Tensor y = ops::pad_right_bottom(x, 1, 1);
    ASSERT_EQ(y.shape(), (Shape{1, 1, 3, 3}));
    EXPECT_EQ(y.to_float_vector(), (std::vector<float>{1, 2, 0, 3, 4, 0, 0, 0, 0}));
}

TEST(VaeOps, BandedConvEqualsPlainConv) {
    TorchGenerator g(3);
    const Tensor x = g.randn({2, 3, 13, 11});
    const Tensor w = g.randn({5, 3, 3, 3});
    const Tensor b = g.randn({5});
    for (int64_t stride : {1, 2}) {
        for (int64_t pad : {0, 1}) {
            const Tensor ref = ops::conv2d(x, w, b, stride, pad);
            // A buffer of one output row forces one band per row.
            const Tensor got = ops::conv2d_banded(x, w, b, stride, pad, 1);
            // Same dot products, but OpenBLAS may block a smaller GEMM differently: float32 rounding only.
            EXPECT_TRUE(sd3::testing::all_close(got, ref, 1e-5, 1e-5)) << "stride " << stride << " pad " << pad;
        }
    }
}

TEST(Vae, LatentNormalizationFollowsThePipeline) {
    auto vae = Vae::load_folder(sd3::testing::tiny_path("model/vae"), Vae::Part::DECODER);
    ASSERT_TRUE(vae.ok()) << vae.status().message();
    EXPECT_TRUE(vae->has_decoder());
    EXPECT_FALSE(vae->has_encoder());
    EXPECT_FALSE(vae->encode(Tensor::zeros({1, 3, 8, 8})).ok());
    const Tensor z = Tensor::from_vector({4}, {1.0f, -2.0f, 0.5f, 0.0f});
    const Tensor x = vae->latents_to_vae(z);
    for (int i = 0; i < 4; ++i) {
        // float32: z / 1.5305f + 0.0609f, the division first, as `latents / scaling_factor + shift_factor`.
        EXPECT_EQ(x.to_float_vector()[i], z.to_float_vector()[i] / 1.5305f + 0.0609f);
        EXPECT_EQ(vae->vae_to_latents(x).to_float_vector()[i], (x.to_float_vector()[i] - 0.0609f) * 1.5305f);
    }
}

TEST(Vae, EncoderOnlyLoadsAndSamples) {
    auto vae = Vae::load_folder(sd3::testing::tiny_path("model/vae"), Vae::Part::ENCODER);
    ASSERT_TRUE(vae.ok()) << vae.status().message();
    EXPECT_FALSE(vae->decode(Tensor::zeros({1, 16, 2, 2})).ok());
    // Odd sizes go through the right/bottom padding of each downsampler: (n + 1 - 3) / 2 + 1, so 20 -> 10 -> 5 -> 2
    // and 28 -> 14 -> 7 -> 3.
    auto d = vae->encode(Tensor::zeros({1, 3, 20, 28}));
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_EQ(d->mean.shape(), (Shape{1, 16, 2, 3}));
    TorchGenerator g(5), h(5);
    const Tensor s = d->sample(g);
    const Tensor noise = h.randn(d->mean.shape());
    const float expect = d->mean.to_float_vector()[7] + std::exp(0.5f * d->logvar.to_float_vector()[7]) * noise.to_float_vector()[7];
    EXPECT_EQ(s.to_float_vector()[7], expect);
}

TEST(Vae, ConfigErrorsNameTheFile) {
    auto base = read_json_file(sd3::testing::tiny_path("model/vae/config.json"));
    ASSERT_TRUE(base.ok());
    nlohmann::json j = *base;
    j["act_fn"] = "relu";
    EXPECT_EQ(VaeConfig::from_json(j, "x/config.json").status().code(), ErrorCode::UNSUPPORTED);
    j = *base;
    j["block_out_channels"] = std::vector<int>{8, 6, 16, 16};  // 6 is not a multiple of 4 groups
    auto r = VaeConfig::from_json(j, "x/config.json");
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE);
    EXPECT_NE(r.status().message().find("x/config.json"), std::string::npos);
    j = *base;
    j["up_block_types"] = std::vector<std::string>{"UpDecoderBlock2D"};
    EXPECT_EQ(VaeConfig::from_json(j, "x/config.json").status().code(), ErrorCode::CORRUPT_FILE);
    // A config that disagrees with the weights fails at load with the tensor's name.
    j = *base;
    j["layers_per_block"] = 1;
    auto c = VaeConfig::from_json(j, "x/config.json");
    ASSERT_TRUE(c.ok());
    auto src = SafetensorsSource::open(sd3::testing::tiny_path("model/vae"), {"diffusion_pytorch_model"});
    ASSERT_TRUE(src.ok());
    auto v = Vae::load(*c, *src);
    EXPECT_FALSE(v.ok());
    EXPECT_NE(v.status().message().find("resnets"), std::string::npos) << v.status().message();
}

TEST(Vae, TiledDecodeFollowsDiffusersTiling) {
    auto vae = Vae::load_folder(sd3::testing::tiny_path("model/vae"), Vae::Part::DECODER);
    ASSERT_TRUE(vae.ok()) << vae.status().message();
    EXPECT_EQ(vae->config().sample_size, 64);  // tiles of 64 / 8 = 8 latents by default
    TorchGenerator g(11);
    // No larger than one tile: exactly decode().
    const Tensor small = g.randn({1, 16, 8, 8});
    auto a = vae->decode(small), b = vae->decode_tiled(small);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->to_float_vector(), b->to_float_vector());
    // 8x12 latents: tiles start every 6 latents (8 * 0.75), blend over 16 pixels (64 * 0.25), keep 48 per tile.
    const Tensor z = g.randn({1, 16, 8, 12});
    auto tiled = vae->decode_tiled(z);
    ASSERT_TRUE(tiled.ok()) << tiled.status().message();
    ASSERT_EQ(tiled->shape(), (Shape{1, 3, 64, 96}));
    auto t00 = vae->decode(z.slice(2, 0, 8).slice(3, 0, 8).contiguous());   // [1, 3, 64, 64]
    auto t01 = vae->decode(z.slice(2, 0, 8).slice(3, 6, 12).contiguous());  // [1, 3, 64, 48]
    ASSERT_TRUE(t00.ok() && t01.ok());
    // Tile (0, 0) is never blended: the top-left 48x48 pixels are its own.
    for (int64_t y : {0, 20, 47})
        for (int64_t x : {0, 30, 47}) EXPECT_EQ(tiled->item_at({0, 1, y, x}), t00->item_at({0, 1, y, x}));
    // Columns 48..63 of the top band blend tile (0, 0)'s columns 48..63 into tile (0, 1)'s columns 0..15.
    for (int64_t k : {0, 5, 15}) {
        const float wa = static_cast<float>(1.0 - k / 16.0), wb = static_cast<float>(k / 16.0);
        const float expect = static_cast<float>(t00->item_at({0, 2, 10, 48 + k})) * wa +
                             static_cast<float>(t01->item_at({0, 2, 10, k})) * wb;
        EXPECT_FLOAT_EQ(tiled->item_at({0, 2, 10, 48 + k}), expect) << k;
    }
    // Beyond the overlap, tile (0, 1) alone.
    EXPECT_EQ(tiled->item_at({0, 0, 30, 48 + 20}), t01->item_at({0, 0, 30, 20}));
    // Rows 48..63 blend tile (0, 0)'s rows 48..63 into the second band's tile (1, 0) (latent rows 6..7, 16 pixels).
    auto t10 = vae->decode(z.slice(2, 6, 8).slice(3, 0, 8).contiguous());  // [1, 3, 16, 64]
    ASSERT_TRUE(t10.ok());
    for (int64_t k : {0, 7, 15}) {
        const float wa = static_cast<float>(1.0 - k / 16.0), wb = static_cast<float>(k / 16.0);
        const float expect = static_cast<float>(t00->item_at({0, 0, 48 + k, 5})) * wa +
                             static_cast<float>(t10->item_at({0, 0, k, 5})) * wb;
        EXPECT_FLOAT_EQ(tiled->item_at({0, 0, 48 + k, 5}), expect) << k;
    }
    EXPECT_FALSE(vae->decode_tiled(z, VaeTiling{8, 1.0}).ok());
}
