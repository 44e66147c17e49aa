// dtype conversions: every code of each small format decodes and re-encodes to itself, and narrowing rounds to
// nearest-even with PyTorch's overflow rules (fp16/e5m2 -> inf, e4m3fn -> NaN, bf16 keeps NaN).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"

using namespace sd3;

TEST(DType, SafetensorsNamesRoundTrip) {
    for (DType dt : kAllDTypes) {
        auto back = dtype_from_safetensors_name(dtype_safetensors_name(dt));
        ASSERT_TRUE(back.has_value());
        EXPECT_EQ(*back, dt);
    }
    EXPECT_FALSE(dtype_from_safetensors_name("F12").has_value());
}

TEST(DType, F16EveryCodeRoundTrips) {
    for (uint32_t c = 0; c < 65536; ++c) {
        const float f = f16_to_f32(static_cast<uint16_t>(c));
        if (std::isnan(f)) continue;
        EXPECT_EQ(f32_to_f16(f), c) << "code " << c;
    }
}

TEST(DType, F16KnownValuesAndRounding) {
    EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even -> 1.
    EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
    // 1 + 3*2^-11 is halfway between odd and even codes -> rounds up to the even 1 + 2^-9.
    EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
    EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds past the largest finite -> inf
    EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
    EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(DType, BF16RoundsToNearestEven) {
    EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
    EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000)), 0x3f80);  // tie, even below
    EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000)), 0x3f82);  // tie, even above
    EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808001)), 0x3f81);
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
    for (uint32_t c = 0; c < 65536; ++c) {
        const float f = bf16_to_f32(static_cast<uint16_t>(c));
        if (!std::isnan(f)) EXPECT_EQ(f32_to_bf16(f), c);
    }
}

TEST(DType, F8E4M3EveryCodeAndOverflow) {
    for (uint32_t c = 0; c < 256; ++c) {
        const float f = f8e4m3_to_f32(static_cast<uint8_t>(c));
        if (std::isnan(f)) {
            EXPECT_EQ(c & 0x7f, 0x7fu);
            continue;
        }
        EXPECT_EQ(f32_to_f8e4m3(f), c) << "code " << c;
    }
    EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
    EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
    EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7e);  // tie between 448 and (NaN-coded) 480 -> even 448
    EXPECT_EQ(f32_to_f8e4m3(470.0f), 0x7f);  // PyTorch: out of range -> NaN, no saturation
    EXPECT_EQ(f32_to_f8e4m3(-1e6f), 0xff);
}

TEST(DType, F8E5M2EveryCodeAndOverflow) {
    for (uint32_t c = 0; c < 256; ++c) {
        const float f = f8e5m2_to_f32(static_cast<uint8_t>(c));
        if (std::isnan(f)) continue;
        EXPECT_EQ(f32_to_f8e5m2(f), c) << "code " << c;
    }
    EXPECT_EQ(f8e5m2_to_f32(0x7b), 57344.0f);
    EXPECT_TRUE(std::isinf(f8e5m2_to_f32(0x7c)));
    EXPECT_EQ(f32_to_f8e5m2(62000.0f), 0x7c);
    EXPECT_EQ(f32_to_f8e5m2(60000.0f), 0x7b);
}

TEST(DType, ConvertElementsMatchesScalarPath) {
    const float src[5] = {0.1f, -2.5f, 3.14159f, 1e-5f, 70000.0f};
    for (DType dt : {DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2}) {
        std::vector<unsigned char> narrow(5 * dtype_size(dt));
        convert_elements(src, DType::F32, narrow.data(), dt, 5);
        float back[5];
        convert_elements(narrow.data(), dt, back, DType::F32, 5);
        for (int i = 0; i < 5; ++i) {
            const double expect = load_as_double(narrow.data(), dt, i);
            if (std::isnan(expect)) EXPECT_TRUE(std::isnan(back[i]));
            else EXPECT_EQ(back[i], expect) << dtype_name(dt) << " element " << i;
        }
    }
}

TEST(DType, ParallelConversionMatchesElementByElement) {
    // 200003 elements: three full parallel runs of 65536 and a short fourth; each element must be what the scalar
    // path gives, at the runs' seams too.
    const int64_t n = 200003;
    std::vector<float> src(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) src[i] = std::sin(0.001f * static_cast<float>(i)) * (1.0f + 0.01f * (i % 997));
    for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::I32}) {
        std::vector<unsigned char> narrow(static_cast<size_t>(n) * dtype_size(dt));
        convert_elements_parallel(src.data(), DType::F32, narrow.data(), dt, n);
        std::vector<float> back(static_cast<size_t>(n));
        convert_elements_parallel(narrow.data(), dt, back.data(), DType::F32, n);
        std::vector<unsigned char> one(dtype_size(dt));
        for (int64_t i = 0; i < n; ++i) {
            store_from_double(one.data(), dt, 0, src[i]);
            ASSERT_EQ(std::memcmp(one.data(), narrow.data() + i * dtype_size(dt), dtype_size(dt)), 0)
                << dtype_name(dt) << " element " << i;
            const double expect = load_as_double(narrow.data(), dt, i);
            ASSERT_EQ(back[i], static_cast<float>(expect)) << dtype_name(dt) << " element " << i;
        }
    }
}
