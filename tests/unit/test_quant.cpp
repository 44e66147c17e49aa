// Exact tests of the weight quantizers (io/quant.h) and dequantizers (ops/cpu/quant_ops.h): the NF4 table and
// its thresholds, round trips of representable values, absmax scaling, rounding ties, packing order, fp8
// saturation, and the block-dequantizing linear against a float32 linear on the dequantized weight.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "common/testing.h"
#include "core/dtype.h"
#include "io/quant.h"
#include "ops/ops.h"
#include "ops/quant_linear.h"

namespace sd3 {
namespace {

Tensor random_matrix(int64_t rows, int64_t cols, uint32_t seed, float stddev = 1.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, stddev);
    std::vector<float> v(static_cast<size_t>(rows * cols));
    for (float& x : v) x = dist(gen);
    return Tensor::from_vector({rows, cols}, v);
}

TEST(Quant, NF4TableShape) {
    // bitsandbytes' table: 7 negative codes, 0 at index 7, 8 positive, normalized to [-1, 1], strictly ascending.
    EXPECT_EQ(cpu::kNF4Code[0], -1.0f);
    EXPECT_EQ(cpu::kNF4Code[7], 0.0f);
    EXPECT_EQ(cpu::kNF4Code[15], 1.0f);
    for (int i = 0; i < 15; ++i) EXPECT_LT(cpu::kNF4Code[i], cpu::kNF4Code[i + 1]) << i;
    // The thresholds are the midpoints of adjacent codes (bitsandbytes computed them in float32; allow 1 ulp).
    for (int i = 0; i < 15; ++i) {
        const float mid = (cpu::kNF4Code[i] + cpu::kNF4Code[i + 1]) / 2.0f;
        EXPECT_NEAR(kNF4Midpoints[i], mid, std::fabs(mid) * 1.2e-7f + 1e-9f) << i;
    }
}

TEST(Quant, NF4EncodeNearestWithTiesDown) {
    for (int i = 0; i < 16; ++i) EXPECT_EQ(nf4_encode(cpu::kNF4Code[i]), i) << i;
    for (int i = 0; i < 15; ++i) {
        const float m = kNF4Midpoints[i];
        EXPECT_EQ(nf4_encode(m), i) << "a midpoint goes to the lower code (strict >), " << i;
        EXPECT_EQ(nf4_encode(std::nextafter(m, 2.0f)), i + 1) << i;
    }
    EXPECT_EQ(nf4_encode(-5.0f), 0);
    EXPECT_EQ(nf4_encode(5.0f), 15);
    EXPECT_EQ(nf4_encode(std::numeric_limits<float>::quiet_NaN()), 0);
}

TEST(Quant, NF4RoundTripAndPacking) {
    // 100 elements = a block of 64 and a short block of 36. Each block holds code * absmax values (and its
    // absmax itself), which must come back exactly.
    const int64_t n = 100;
    std::vector<float> w(n);
    const float amax[2] = {2.5f, 0.375f};
    for (int64_t i = 0; i < n; ++i) {
        const int b = i < 64 ? 0 : 1;
        w[i] = cpu::kNF4Code[(i * 7 + 3) % 16] * amax[b];
    }
    w[10] = -amax[0];  // make sure the absmax is present in each block
    w[70] = amax[1];
    std::vector<uint8_t> packed((n + 1) / 2);
    std::vector<float> absmax(2);
    quantize_nf4(w.data(), n, 64, packed.data(), absmax.data());
    EXPECT_EQ(absmax[0], amax[0]);
    EXPECT_EQ(absmax[1], amax[1]);
    // first element in the high nibble
    EXPECT_EQ(packed[0] >> 4, nf4_encode(w[0] / amax[0]));
    EXPECT_EQ(packed[0] & 0x0f, nf4_encode(w[1] / amax[0]));
    cpu::QuantWeightView v{cpu::QuantFormat::NF4, 10, 10, packed.data(), absmax.data(), 64};
    std::vector<float> back(n);
    cpu::dequantize_rows(back.data(), v, 0, 10);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(back[i], w[i]) << i;
    // A row range in the middle (rows 6..7 = elements 60..79, across the block boundary).
    std::vector<float> part(20);
    cpu::dequantize_rows(part.data(), v, 6, 2);
    for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(part[i], w[60 + i]) << i;
    // An odd count: the last byte holds the last code in its high nibble and 0 in the low one, whatever the
    // buffer held before.
    std::vector<uint8_t> odd(50, 0xff);
    quantize_nf4(w.data(), 99, 64, odd.data(), absmax.data());
    EXPECT_EQ(odd[49], nf4_encode(w[98] / amax[1]) << 4);
    EXPECT_EQ(odd[0], packed[0]);
}

TEST(Quant, NF4ZeroBlockAndScaling) {
    std::vector<float> w(64, 0.0f);
    std::vector<uint8_t> packed(32);
    float absmax = -1;
    quantize_nf4(w.data(), 64, 64, packed.data(), &absmax);
    EXPECT_EQ(absmax, 0.0f);
    for (uint8_t b : packed) EXPECT_EQ(b, 0x77);  // the code of 0.0 in both nibbles
    // Scaling: a value at 0.6 * absmax lies between codes 13 (0.5626) and 14 (0.7230), nearer 13.
    w[0] = 10.0f;
    w[1] = 6.0f;
    quantize_nf4(w.data(), 64, 64, packed.data(), &absmax);
    EXPECT_EQ(absmax, 10.0f);
    EXPECT_EQ(packed[0], (15 << 4) | 13);
}

TEST(Quant, Int8RowsAbsmaxRoundTripAndTies) {
    // Row 0: values k * (amax / 127) round-trip exactly. Row 1: amax 127 makes the scale exactly 1, so x.5 ties
    // show the rounding (half to even, as __float2int_rn). Row 2: all zero.
    const int64_t cols = 8;
    const float amax = 3.7f, s = amax / 127.0f;
    std::vector<float> w = {127 * s, -127 * s, 1 * s, -64 * s, 0.0f, 5 * s, 100 * s, -3 * s,
                            127.0f,  2.5f,     3.5f,  -2.5f,    0.5f, -0.5f, 1.49f, -126.5f,
                            0,       0,        0,     0,        0,    0,     0,     0};
    std::vector<int8_t> q(24);
    std::vector<float> absmax(3);
    quantize_int8_rows(w.data(), 3, cols, q.data(), absmax.data());
    EXPECT_EQ(absmax[0], std::fabs(127 * s));
    EXPECT_EQ(absmax[1], 127.0f);
    EXPECT_EQ(absmax[2], 0.0f);
    const std::vector<int8_t> row0 = {127, -127, 1, -64, 0, 5, 100, -3};
    const std::vector<int8_t> row1 = {127, 2, 4, -2, 0, 0, 1, -126};
    for (int j = 0; j < cols; ++j) {
        EXPECT_EQ(q[j], row0[j]) << j;
        EXPECT_EQ(q[cols + j], row1[j]) << j;
        EXPECT_EQ(q[2 * cols + j], 0) << j;
    }
    cpu::QuantWeightView v{cpu::QuantFormat::INT8_ROW, 3, cols, q.data(), absmax.data(), 64};
    std::vector<float> back(24);
    cpu::dequantize_rows(back.data(), v, 0, 3);
    for (int j = 0; j < cols; ++j) EXPECT_EQ(back[j], static_cast<float>(row0[j]) * (absmax[0] / 127.0f)) << j;
    for (int j = 0; j < 4; ++j) EXPECT_FLOAT_EQ(back[j], w[j]) << "representable values come back, " << j;
    for (int j = 0; j < cols; ++j) EXPECT_EQ(back[2 * cols + j], 0.0f);
}

TEST(Quant, Fp8EveryFiniteValueRoundTripsAndSaturates) {
    for (int b = 0; b < 256; ++b) {
        const float f = f8e4m3_to_f32(static_cast<uint8_t>(b));
        if (std::isnan(f)) continue;
        const uint8_t back = f32_to_f8e4m3_saturate(f);
        EXPECT_EQ(f8e4m3_to_f32(back), f) << b;
    }
    EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3_saturate(1000.0f)), 448.0f);
    EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3_saturate(-1e30f)), -448.0f);
    EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3_saturate(449.0f)), 448.0f);
    EXPECT_TRUE(std::isnan(f8e4m3_to_f32(f32_to_f8e4m3_saturate(std::numeric_limits<float>::quiet_NaN()))));
    // Round to nearest even between 1.0 and 1.125 (e4m3 has 3 mantissa bits near 1).
    EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3_saturate(1.0625f)), 1.0f);
    EXPECT_EQ(f8e4m3_to_f32(f32_to_f8e4m3_saturate(1.1875f)), 1.25f);
}

TEST(Quant, MatrixFormatsDequantizeWithinTheirPrecision) {
    const Tensor w = random_matrix(33, 70, 1);  // [33, 70], odd sizes: the last NF4 block is short
    const std::vector<float> ref = w.to_float_vector();
    struct Case {
        QuantFormat f;
        double rel;   // F16/BF16/FP8: |err| <= rel * |w| + abs_floor (half an ulp of the significand);
                      // INT8: |err| <= rel * row absmax; NF4: |err| <= rel * block absmax
        double abs_floor;
    } cases[] = {
        {QuantFormat::F32, 0.0, 0.0},
        {QuantFormat::F16, 1.0 / 2048, 0x1p-25},     // 11-bit significand; subnormal step 2^-24
        {QuantFormat::BF16, 1.0 / 256, 0.0},         // 8-bit significand, f32's exponent range
        {QuantFormat::FP8_E4M3, 1.0 / 16, 0x1p-10},  // 4-bit significand; subnormal step 2^-9
        {QuantFormat::INT8_ROW, 0.5 / 127, 0.0},     // half a step of absmax / 127
        {QuantFormat::NF4, 0.1519037, 0.0},           // widest half-gap between codes: (1 - 0.6961928) / 2
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(cpu::quant_format_name(c.f));
        const QuantizedMatrix q = quantize_matrix(w, c.f);
        EXPECT_EQ(q.rows, 33);
        EXPECT_EQ(q.cols, 70);
        const std::vector<float> got = q.dequantize().to_float_vector();
        for (int64_t r = 0; r < 33; ++r) {
            float row_max = 0;
            for (int64_t j = 0; j < 70; ++j) row_max = std::max(row_max, std::fabs(ref[r * 70 + j]));
            for (int64_t j = 0; j < 70; ++j) {
                const int64_t i = r * 70 + j;
                double bound;
                if (c.f == QuantFormat::INT8_ROW) {
                    bound = c.rel * row_max * (1 + 1e-6);
                } else if (c.f == QuantFormat::NF4) {
                    float bmax = 0;
                    const int64_t b0 = (i / 64) * 64;
                    for (int64_t k = b0; k < std::min<int64_t>(b0 + 64, 33 * 70); ++k) bmax = std::max(bmax, std::fabs(ref[k]));
                    bound = c.rel * bmax * (1 + 1e-6);
                } else {
                    bound = c.rel * std::fabs(ref[i]) + c.abs_floor;
                }
                ASSERT_LE(std::fabs(got[i] - ref[i]), bound) << "element " << i << " ref " << ref[i] << " got " << got[i];
            }
        }
    }
}

TEST(Quant, MatrixFromEveryStoredDtypeMatchesTheArrayQuantizersOnItsFloat32Values) {
    // quantize_matrix converts and quantizes run by run in parallel; the array quantizers on the whole weight's
    // float32 values are the specification. 257 x 333 = 85581 elements take the parallel path, the odd width puts
    // NF4 blocks and fp8 runs across rows, and the last NF4 block is short (13 elements).
    const int64_t rows = 257, cols = 333, n = rows * cols;
    const Tensor w32 = random_matrix(rows, cols, 7, 0.05f);
    for (DType stored : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
        const Tensor w = w32.to(stored);
        const Tensor f = w.to(DType::F32);
        const float* v = f.data<float>();
        for (QuantFormat fmt : {QuantFormat::F32, QuantFormat::F16, QuantFormat::BF16, QuantFormat::FP8_E4M3,
                                QuantFormat::INT8_ROW, QuantFormat::NF4}) {
            SCOPED_TRACE(str_cat(dtype_name(stored), " as ", cpu::quant_format_name(fmt)));
            const QuantizedMatrix q = quantize_matrix(w, fmt);
            std::vector<uint8_t> want_data;
            std::vector<float> want_scale;
            if (fmt == QuantFormat::INT8_ROW) {
                want_data.resize(static_cast<size_t>(n));
                want_scale.resize(static_cast<size_t>(rows));
                quantize_int8_rows(v, rows, cols, reinterpret_cast<int8_t*>(want_data.data()), want_scale.data());
            } else if (fmt == QuantFormat::NF4) {
                want_data.resize(static_cast<size_t>((n + 1) / 2));
                want_scale.resize(static_cast<size_t>((n + 63) / 64));
                quantize_nf4(v, n, 64, want_data.data(), want_scale.data());
            } else if (fmt == QuantFormat::FP8_E4M3) {
                for (int64_t i = 0; i < n; ++i) want_data.push_back(f32_to_f8e4m3_saturate(v[i]));
            } else {
                const Tensor cast = f.to(quant_format_storage_dtype(fmt));
                const auto* b = static_cast<const uint8_t*>(cast.raw());
                want_data.assign(b, b + cast.nbytes());
            }
            ASSERT_EQ(q.data.nbytes(), want_data.size());
            EXPECT_EQ(std::memcmp(q.data.raw(), want_data.data(), want_data.size()), 0);
            if (want_scale.empty()) {
                EXPECT_FALSE(q.scale.defined());
            } else {
                ASSERT_EQ(q.scale.numel(), static_cast<int64_t>(want_scale.size()));
                EXPECT_EQ(std::memcmp(q.scale.raw(), want_scale.data(), want_scale.size() * sizeof(float)), 0);
            }
        }
    }
}

TEST(Quant, StoredFormatIsKeptWithoutCopy) {
    const Tensor w16 = random_matrix(4, 6, 2).to(DType::F16);
    const QuantizedMatrix q = quantize_matrix(w16, QuantFormat::F16);
    EXPECT_EQ(q.data.raw(), w16.raw());
    const Tensor w8 = random_matrix(4, 6, 3).to(DType::F8_E4M3);
    const QuantizedMatrix q8 = quantize_matrix(w8, QuantFormat::FP8_E4M3);
    EXPECT_EQ(q8.data.raw(), w8.raw());
    // An fp8 file dequantizes exactly (a plain cast): f32 of the same tensor gives the same numbers.
    EXPECT_TRUE(testing::all_close(q8.dequantize(), w8.to(DType::F32), 0, 0));
}

TEST(Quant, FormatNames) {
    EXPECT_EQ(quant_format_from_name("int8"), QuantFormat::INT8_ROW);
    EXPECT_EQ(quant_format_from_name("nf4"), QuantFormat::NF4);
    EXPECT_EQ(quant_format_from_name("fp8"), QuantFormat::FP8_E4M3);
    EXPECT_EQ(quant_format_from_name("bf16"), QuantFormat::BF16);
    EXPECT_EQ(quant_format_from_name("fp16"), QuantFormat::F16);
    EXPECT_EQ(quant_format_from_name("f32"), QuantFormat::F32);
    EXPECT_FALSE(quant_format_from_name("int4").has_value());
}

TEST(Quant, BlockedLinearMatchesFloatLinearOnDequantizedWeight) {
    const Tensor x = random_matrix(5, 70, 4);  // [5, 70]
    const Tensor w = random_matrix(37, 70, 5, 0.1f);
    const Tensor b = random_matrix(1, 37, 6).view({37});
    for (QuantFormat f : {QuantFormat::F32, QuantFormat::BF16, QuantFormat::FP8_E4M3, QuantFormat::INT8_ROW,
                          QuantFormat::NF4}) {
        SCOPED_TRACE(cpu::quant_format_name(f));
        const QuantizedMatrix q = quantize_matrix(w, f);
        const Tensor ref = ops::linear(x, q.dequantize(), b);  // [5, 37]
        // Blocks of 16 rows (37 = 16 + 16 + 5) through the public entry point, and through the Tensor op.
        Tensor y = Tensor::empty({5, 37}, DType::F32);
        cpu::quant_linear_fwd(y.data<float>(), x.data<float>(), q.view(), b.data<float>(), 5, 16);
        // The same dot products in possibly another summation order inside the BLAS: float32 rounding only,
        // |err| <= K * eps * sum|x*w| ~ 70 * 6e-8 * O(3) ~ 1e-5; 2e-5 absolute + 1e-5 relative covers it.
        EXPECT_TRUE(testing::all_close(y, ref, 2e-5, 1e-5));
        EXPECT_TRUE(testing::all_close(ops::linear_quantized(x, q.view(), b), ref, 2e-5, 1e-5));
    }
}

}  // namespace
}  // namespace sd3
