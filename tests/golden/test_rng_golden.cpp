// TorchGenerator against rng.safetensors (make_rng_golden.py): every `seed*` tensor must come out bit-identical
// to what torch.randn drew with torch.Generator().manual_seed(seed) on the CPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "common/testing.h"
#include "core/rng.h"

using namespace sd3;

namespace {

Shape parse_shape(const std::string& s) {  // "1x16x8x8"
    Shape shape;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t x = s.find('x', pos);
        if (x == std::string::npos) x = s.size();
        shape.push_back(std::stoll(s.substr(pos, x - pos)));
        pos = x + 1;
    }
    return shape;
}

// Counts elements whose float32 bit patterns differ; reports the worst difference in units in the last place.
::testing::AssertionResult bit_identical(const Tensor& got, const Tensor& ref) {
    if (got.shape() != ref.shape())
        return ::testing::AssertionFailure() << "shape " << shape_str(got.shape()) << " vs " << shape_str(ref.shape());
    const std::vector<float> g = got.to_float_vector(), r = ref.to_float_vector();
    int64_t bad = 0, first = -1, worst_ulp = 0;
    for (size_t i = 0; i < g.size(); ++i) {
        if (f32_bits(g[i]) != f32_bits(r[i])) {
            if (first < 0) first = static_cast<int64_t>(i);
            ++bad;
            worst_ulp = std::max<int64_t>(worst_ulp, std::llabs(static_cast<int64_t>(f32_bits(g[i])) -
                                                                static_cast<int64_t>(f32_bits(r[i]))));
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << bad << " of " << g.size() << " differ (worst " << worst_ulp
                                         << " ulp of f32); first at " << first << ": got " << g[first] << " ref "
                                         << r[first];
}

}  // namespace

TEST(RngGolden, EverySeedTensorIsBitIdentical) {
    SafetensorsFile f = sd3::testing::open_golden("tiny-a/rng.safetensors");
    int checked = 0;
    for (const TensorInfo& info : f.tensors()) {
        const std::string& name = info.name;  // seed42.f32.1x16x8x8 / seed0.f32.sequence.first
        if (name.rfind("seed", 0) != 0) continue;
        const size_t d1 = name.find('.'), d2 = name.find('.', d1 + 1);
        const uint64_t seed = std::stoull(name.substr(4, d1 - 4));
        const std::string dt = name.substr(d1 + 1, d2 - d1 - 1);
        const std::string rest = name.substr(d2 + 1);
        const Tensor ref = f.get(info);
        TorchGenerator g(seed);
        Tensor got;
        if (rest == "sequence.first" || rest == "sequence.second") {
            got = g.randn({1, 16, 8, 8});
            if (rest == "sequence.second") got = g.randn({1, 16, 8, 8});
        } else {
            const DType dtype = dt == "f32" ? DType::F32 : dt == "f16" ? DType::F16 : DType::BF16;
            got = g.randn(parse_shape(rest), dtype).to(DType::F32);
        }
        EXPECT_TRUE(bit_identical(got, ref)) << name;
        ++checked;
    }
    EXPECT_EQ(checked, 27);  // seeds 0, 1234: 6 f32 shapes + 2 in sequence; seed 42: also 1x16x128x128 in f32, f16, bf16
}

// make_golden.py draws every random input of mmdit.safetensors, vae.safetensors and pipeline.safetensors from one
// generator seeded with 1, mixing torch.randn and torch.rand; replaying that order must give the same tensors.
TEST(RngGolden, ReplaysMakeGoldenDrawOrderWithRandAndRandn) {
    SafetensorsFile mm = sd3::testing::open_golden("tiny-a/mmdit.safetensors");
    SafetensorsFile vae = sd3::testing::open_golden("tiny-a/vae.safetensors");
    SafetensorsFile pipe = sd3::testing::open_golden("tiny-a/pipeline.safetensors");
    TorchGenerator g(1);
    const int64_t ctx_tokens = 77 + 77, ctx_dim = 64, pooled_dim = 64;
    struct Case { int64_t h, w, b; };
    const Case cases[] = {{64, 64, 1}, {128, 96, 2}};
    for (int j = 0; j < 2; ++j) {
        const auto [H, W, B] = cases[j];
        const std::string p = std::to_string(j) + ".";
        EXPECT_TRUE(bit_identical(g.randn({B, 16, H / 8, W / 8}), mm.get(p + "hidden_states").value()));
        EXPECT_TRUE(bit_identical(g.randn({B, ctx_tokens, ctx_dim}), mm.get(p + "encoder_hidden_states").value()));
        EXPECT_TRUE(bit_identical(g.randn({B, pooled_dim}), mm.get(p + "pooled_projections").value()));
        Tensor ts = g.rand({B});
        for (int64_t i = 0; i < B; ++i) ts.data<float>()[i] *= 1000.0f;  // torch.rand(B) * 1000
        EXPECT_TRUE(bit_identical(ts, mm.get(p + "timestep").value()));
    }
    for (int j = 0; j < 2; ++j) {
        const auto [H, W, B] = cases[j];
        const std::string p = std::to_string(j) + ".";
        Tensor img = g.rand({B, 3, H, W});
        for (int64_t i = 0; i < img.numel(); ++i) img.data<float>()[i] = img.data<float>()[i] * 2.0f - 1.0f;
        EXPECT_TRUE(bit_identical(img, vae.get(p + "image").value()));
        EXPECT_TRUE(bit_identical(g.randn({B, 16, H / 8, W / 8}), vae.get(p + "latent_in").value()));
    }
    EXPECT_TRUE(bit_identical(g.randn({1, 16, 8, 8}), pipe.get("0.latents_in").value()));
}

TEST(Rng, KnownTorchValuesForSeedZero) {
    // torch.manual_seed(0); torch.rand(4) -> [0.4963, 0.7682, 0.0885, 0.1320] (printed to 4 decimals).
    TorchGenerator g(0);
    const Tensor u = g.rand({4});
    const float expected[] = {0.4963f, 0.7682f, 0.0885f, 0.1320f};
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(u.data<float>()[i], expected[i], 5e-5) << i;
    // A fresh torch.Generator() is seeded with c10's default seed.
    EXPECT_EQ(TorchGenerator().initial_seed(), 67280421310721ULL);
}

TEST(Rng, StateRoundTripIncludingCachedNormal) {
    TorchGenerator g(1234);
    g.randn({3});  // the serial path leaves a cached second Box-Muller value behind
    const std::vector<uint8_t> state = g.get_state();
    ASSERT_EQ(state.size(), TorchGenerator::kStateBytes);
    const Tensor a1 = g.randn({5}), b1 = g.randn({40}), c1 = g.rand({7});
    TorchGenerator h(99);
    ASSERT_TRUE(h.set_state(state).ok());
    EXPECT_EQ(h.initial_seed(), 1234u);
    const Tensor a2 = h.randn({5}), b2 = h.randn({40}), c2 = h.rand({7});
    EXPECT_TRUE(bit_identical(a1, a2));
    EXPECT_TRUE(bit_identical(b1, b2));
    EXPECT_TRUE(bit_identical(c1, c2));
    // The cached value is part of the state (normal_is_valid at byte 5040): without it the next draw differs.
    std::vector<uint8_t> no_cache = state;
    ASSERT_EQ(no_cache[5040], 1);
    no_cache[5040] = 0;
    TorchGenerator k;
    ASSERT_TRUE(k.set_state(no_cache).ok());
    EXPECT_FALSE(bit_identical(k.randn({5}), a1));
}

TEST(Rng, SetStateRejectsBadBytes) {
    TorchGenerator g;
    std::vector<uint8_t> bad(100, 0);
    EXPECT_EQ(g.set_state(bad).code(), ErrorCode::CORRUPT_FILE);
    std::vector<uint8_t> s = g.get_state();
    std::memset(s.data() + 8, 0, 4);  // left = 0 is not a valid mt19937 position
    EXPECT_EQ(g.set_state(s).code(), ErrorCode::CORRUPT_FILE);
}

TEST(Rng, CachedNormalIsUsedBeforeNewDraws) {
    // randn(1) twice equals randn(2) once: the second element comes from the cache in both cases.
    TorchGenerator a(7), b(7);
    const Tensor one = a.randn({1}), two = a.randn({1}), both = b.randn({2});
    EXPECT_EQ(f32_bits(one.data<float>()[0]), f32_bits(both.data<float>()[0]));
    EXPECT_EQ(f32_bits(two.data<float>()[0]), f32_bits(both.data<float>()[1]));
    EXPECT_EQ(a.get_state(), b.get_state());
}
