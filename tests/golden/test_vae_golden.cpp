// The tiny-a VAE against vae.safetensors (make_golden.py step 4): encode to mean/logvar and decode from latents,
// float32, for a 64x64 image and a non-square batch of two 128x96 images.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/testing.h"
#include "io/json_file.h"
#include "models/vae.h"
#include "ops/cpu/vae_ops.h"
#include "ops/ops.h"

using namespace sd3;
using sd3::testing::all_close;

namespace {
const Vae& tiny_vae() {
    static const Vae vae = [] {
        auto v = Vae::load_folder(sd3::testing::tiny_path("model/vae"));
        if (!v.ok()) ADD_FAILURE() << v.status().message();
        return std::move(v).value();
    }();
    return vae;
}
}  // namespace

TEST(VaeGolden, ConfigFromFolder) {
    const VaeConfig& c = tiny_vae().config();
    EXPECT_EQ(c.latent_channels, 16);
    EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{8, 8, 16, 16}));
    EXPECT_EQ(c.norm_num_groups, 4);
    EXPECT_FALSE(c.use_quant_conv);
    EXPECT_EQ(c.scale_factor(), 8);
    EXPECT_FLOAT_EQ(c.scaling_factor, 1.5305f);
    EXPECT_FLOAT_EQ(c.shift_factor, 0.0609f);
}

// Tolerances: the reference and we both compute in float32, but PyTorch's convolutions (oneDNN/MKL) and ours
// (im2col + OpenBLAS) sum in different orders, as do the GroupNorm statistics (we use double). Each layer adds a
// few float32 ulps of relative error to values of order 1; ~25 layers deep that stays below 1e-5 relative to the
// activations' scale. Observed: max |diff| 2.3e-6 (encode) and 6.6e-6 (decode, values up to ~1.5).
// 2e-5 absolute + 1e-4 relative leaves a margin of 3 while still catching any wrong op (a missing pad, a swapped
// norm, a wrong eps moves outputs by 1e-3 or more).
TEST(VaeGolden, EncodeMatchesReference) {
    SafetensorsFile f = sd3::testing::open_golden("tiny-a/vae.safetensors");
    for (const char* p : {"0.", "1."}) {
        const Tensor image = sd3::testing::golden_tensor(f, std::string(p) + "image");
        auto dist = tiny_vae().encode(image);
        ASSERT_TRUE(dist.ok()) << dist.status().message();
        EXPECT_TRUE(all_close(dist->mean, sd3::testing::golden_tensor(f, std::string(p) + "latent_mean"), 2e-5, 1e-4)) << p;
        EXPECT_TRUE(all_close(dist->logvar, sd3::testing::golden_tensor(f, std::string(p) + "latent_logvar"), 2e-5, 1e-4))
            << p;
    }
}

TEST(VaeGolden, DecodeMatchesReference) {
    SafetensorsFile f = sd3::testing::open_golden("tiny-a/vae.safetensors");
    for (const char* p : {"0.", "1."}) {
        auto out = tiny_vae().decode(sd3::testing::golden_tensor(f, std::string(p) + "latent_in"));
        ASSERT_TRUE(out.ok()) << out.status().message();
        EXPECT_TRUE(all_close(*out, sd3::testing::golden_tensor(f, std::string(p) + "decoded"), 2e-5, 1e-4)) << p;
    }
}
