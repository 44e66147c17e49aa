// The text-to-image pipeline against pipeline.safetensors and rng.safetensors (make_golden.py step 6,
// make_rng_golden.py): here the tail (latents -> VAE -> image in [0, 1]); the full run is in
// test_pipeline_full_golden.cpp.
#include <gtest/gtest.h>

#include "common/testing.h"
#include "infer/sampling.h"
#include "models/vae.h"

using namespace sd3;

TEST(PipelineGolden, FinalLatentsDecodeToTheReferenceImage) {
    SafetensorsFile f = sd3::testing::open_golden("tiny-a/pipeline.safetensors");
    auto vae = Vae::load_folder(sd3::testing::tiny_path("model/vae"), Vae::Part::DECODER);
    ASSERT_TRUE(vae.ok()) << vae.status().message();
    const Tensor latents = sd3::testing::golden_tensor(f, "0.latents_out");  // [1, 16, 8, 8]
    auto decoded = vae->decode(vae->latents_to_vae(latents));
    ASSERT_TRUE(decoded.ok()) << decoded.status().message();
    const Tensor image = denormalize_images(*decoded);  // [1, 3, 64, 64]
    // The decoder's float32 summation-order differences (test_vae_golden.cpp: up to ~7e-6), halved by x/2.
    EXPECT_TRUE(sd3::testing::all_close(image, sd3::testing::golden_tensor(f, "0.image"), 1e-5, 1e-4));
}
