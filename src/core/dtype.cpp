// Element-type tables and the conversions declared in dtype.h.
#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace sd3 {

size_t dtype_size(DType dt) {
    switch (dt) {
        case DType::F64: case DType::I64: return 8;
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: return 2;
        case DType::F8_E4M3: case DType::F8_E5M2: case DType::I8: case DType::U8: case DType::BOOL: return 1;
    }
    SD3_ASSERT(false, "bad dtype");
    return 0;
}

bool dtype_is_float(DType dt) {
    switch (dt) {
        case DType::F32: case DType::F64: case DType::F16: case DType::BF16: case DType::F8_E4M3: case DType::F8_E5M2:
            return true;
        default: return false;
    }
}

std::string_view dtype_name(DType dt) {
    switch (dt) {
        case DType::F32: return "f32";
        case DType::F64: return "f64";
        case DType::F16: return "f16";
        case DType::BF16: return "bf16";
        case DType::F8_E4M3: return "fp8-e4m3";
        case DType::F8_E5M2: return "fp8-e5m2";
        case DType::I8: return "i8";
        case DType::U8: return "u8";
        case DType::I32: return "i32";
        case DType::I64: return "i64";
        case DType::BOOL: return "bool";
    }
    return "?";
}

std::string_view dtype_safetensors_name(DType dt) {
    switch (dt) {
        case DType::F32: return "F32";
        case DType::F64: return "F64";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F8_E4M3: return "F8_E4M3";
        case DType::F8_E5M2: return "F8_E5M2";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::BOOL: return "BOOL";
    }
    return "?";
}

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
    for (DType dt : kAllDTypes)
        if (dtype_safetensors_name(dt) == name) return dt;
    return std::nullopt;
}

std::optional<DType> dtype_from_name(std::string_view name) {
    for (DType dt : kAllDTypes)
        if (dtype_name(dt) == name) return dt;
    if (name == "fp32" || name == "float32") return DType::F32;
    if (name == "fp16" || name == "float16") return DType::F16;
    if (name == "bfloat16") return DType::BF16;
    if (name == "fp8" || name == "f8_e4m3" || name == "fp8_e4m3fn") return DType::F8_E4M3;
    if (name == "int8") return DType::I8;
    return std::nullopt;
}

// --- IEEE-style small floats --------------------------------------------------------------------------------

namespace {

// A binary format with `man` mantissa bits and exponent bias `bias`; `max_finite` its largest value.
struct MiniFloat {
    int man;
    int bias;
    double max_finite;
};

double minifloat_decode(uint32_t bits, int exp_bits, const MiniFloat& fmt) {
    const uint32_t man_mask = (1u << fmt.man) - 1;
    const uint32_t exp = (bits >> fmt.man) & ((1u << exp_bits) - 1);
    const uint32_t man = bits & man_mask;
    const bool neg = (bits >> (fmt.man + exp_bits)) & 1u;
    double v;
    if (exp == 0)
        v = std::ldexp(static_cast<double>(man), 1 - fmt.bias - fmt.man);
    else
        v = std::ldexp(static_cast<double>(man | (1u << fmt.man)), static_cast<int>(exp) - fmt.bias - fmt.man);
    return neg ? -v : v;
}

// Rounds |f| to the format's grid (nearest, ties to even) and returns the unsigned code, or -1 on overflow.
int64_t minifloat_encode_magnitude(double a, const MiniFloat& fmt) {
    const int min_exp = 1 - fmt.bias;  // exponent of the smallest normal
    int e = a > 0 ? std::ilogb(a) : min_exp;
    if (e < min_exp) e = min_exp;  // subnormal: fixed quantum
    const double quantum = std::ldexp(1.0, e - fmt.man);
    const double q = std::nearbyint(a / quantum) * quantum;  // default rounding mode: ties to even
    if (q > fmt.max_finite) return -1;
    if (q == 0) return 0;
    int qe = std::ilogb(q);
    if (qe < min_exp) return static_cast<int64_t>(q / std::ldexp(1.0, min_exp - fmt.man));  // subnormal code
    const int64_t man = static_cast<int64_t>(q / std::ldexp(1.0, qe - fmt.man)) - (int64_t{1} << fmt.man);
    return (static_cast<int64_t>(qe + fmt.bias) << fmt.man) | man;
}

constexpr MiniFloat kE4M3{3, 7, 448.0};
constexpr MiniFloat kE5M2{2, 15, 57344.0};

}  // namespace

float f16_to_f32(uint16_t h) {
    const uint32_t exp = (h >> 10) & 0x1f;
    if (exp == 0x1f) return f32_from_bits((static_cast<uint32_t>(h & 0x8000) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13));
    return static_cast<float>(minifloat_decode(h, 5, MiniFloat{10, 15, 65504.0}));
}

uint16_t f32_to_f16(float f) {
    const uint16_t sign = (f32_bits(f) >> 16) & 0x8000;
    if (std::isnan(f)) return sign | 0x7e00;
    const int64_t code = minifloat_encode_magnitude(std::fabs(static_cast<double>(f)), MiniFloat{10, 15, 65504.0});
    if (code < 0) return sign | 0x7c00;  // overflow -> inf
    return sign | static_cast<uint16_t>(code);
}

float f8e4m3_to_f32(uint8_t v) {
    if ((v & 0x7f) == 0x7f) return std::nanf("");  // e4m3fn: S.1111.111 is NaN, there is no inf
    return static_cast<float>(minifloat_decode(v, 4, kE4M3));
}

uint8_t f32_to_f8e4m3(float f) {
    const uint8_t sign = (f32_bits(f) >> 24) & 0x80;
    if (std::isnan(f) || std::isinf(f)) return sign | 0x7f;
    const int64_t code = minifloat_encode_magnitude(std::fabs(static_cast<double>(f)), kE4M3);
    return sign | static_cast<uint8_t>(code < 0 ? 0x7f : code);  // out of range -> NaN, as PyTorch
}

float f8e5m2_to_f32(uint8_t v) {
    const uint32_t exp = (v >> 2) & 0x1f;
    if (exp == 0x1f) return f16_to_f32(static_cast<uint16_t>(v) << 8);  // inf / NaN as in fp16
    return static_cast<float>(minifloat_decode(v, 5, kE5M2));
}

uint8_t f32_to_f8e5m2(float f) {
    const uint8_t sign = (f32_bits(f) >> 24) & 0x80;
    if (std::isnan(f)) return sign | 0x7f;
    const int64_t code = minifloat_encode_magnitude(std::fabs(static_cast<double>(f)), kE5M2);
    return sign | static_cast<uint8_t>(code < 0 ? 0x7c : code);  // out of range -> inf
}

double load_as_double(const void* data, DType dt, int64_t i) {
    switch (dt) {
        case DType::F32: return static_cast<const float*>(data)[i];
        case DType::F64: return static_cast<const double*>(data)[i];
        case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
        case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
        case DType::F8_E4M3: return f8e4m3_to_f32(static_cast<const uint8_t*>(data)[i]);
        case DType::F8_E5M2: return f8e5m2_to_f32(static_cast<const uint8_t*>(data)[i]);
        case DType::I8: return static_cast<const int8_t*>(data)[i];
        case DType::U8: return static_cast<const uint8_t*>(data)[i];
        case DType::I32: return static_cast<const int32_t*>(data)[i];
        case DType::I64: return static_cast<double>(static_cast<const int64_t*>(data)[i]);
        case DType::BOOL: return static_cast<const uint8_t*>(data)[i] ? 1.0 : 0.0;
    }
    return 0;
}

void store_from_double(void* data, DType dt, int64_t i, double v) {
    switch (dt) {
        case DType::F32: static_cast<float*>(data)[i] = static_cast<float>(v); return;
        case DType::F64: static_cast<double*>(data)[i] = v; return;
        // Narrow through float first, as PyTorch casts from float32 tensors.
        case DType::F16: static_cast<uint16_t*>(data)[i] = f32_to_f16(static_cast<float>(v)); return;
        case DType::BF16: static_cast<uint16_t*>(data)[i] = f32_to_bf16(static_cast<float>(v)); return;
        case DType::F8_E4M3: static_cast<uint8_t*>(data)[i] = f32_to_f8e4m3(static_cast<float>(v)); return;
        case DType::F8_E5M2: static_cast<uint8_t*>(data)[i] = f32_to_f8e5m2(static_cast<float>(v)); return;
        case DType::I8: static_cast<int8_t*>(data)[i] = static_cast<int8_t>(v); return;
        case DType::U8: static_cast<uint8_t*>(data)[i] = static_cast<uint8_t>(v); return;
        case DType::I32: static_cast<int32_t*>(data)[i] = static_cast<int32_t>(v); return;
        case DType::I64: static_cast<int64_t*>(data)[i] = static_cast<int64_t>(v); return;
        case DType::BOOL: static_cast<uint8_t*>(data)[i] = v != 0 ? 1 : 0; return;
    }
}

void convert_elements(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) {
    if (src_dt == dst_dt) {
        std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(src_dt));
        return;
    }
    // Fast paths for the conversions that move model weights.
    if (dst_dt == DType::F32 && src_dt == DType::BF16) {
        const auto* s = static_cast<const uint16_t*>(src);
        auto* d = static_cast<float*>(dst);
        for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
        return;
    }
    if (dst_dt == DType::BF16 && src_dt == DType::F32) {
        const auto* s = static_cast<const float*>(src);
        auto* d = static_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
        return;
    }
    if (dst_dt == DType::F32 && (src_dt == DType::F16 || src_dt == DType::F8_E4M3 || src_dt == DType::F8_E5M2)) {
        // Table lookup: every code of these formats decodes once.
        static float f16_table[65536];
        static float e4m3_table[256], e5m2_table[256];
        static const bool tables_ready = [] {
            for (uint32_t c = 0; c < 65536; ++c) f16_table[c] = f16_to_f32(static_cast<uint16_t>(c));
            for (uint32_t c = 0; c < 256; ++c) {
                e4m3_table[c] = f8e4m3_to_f32(static_cast<uint8_t>(c));
                e5m2_table[c] = f8e5m2_to_f32(static_cast<uint8_t>(c));
            }
            return true;
        }();
        (void)tables_ready;
        auto* d = static_cast<float*>(dst);
        if (src_dt == DType::F16) {
            const auto* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) d[i] = f16_table[s[i]];
        } else {
            const float* table = src_dt == DType::F8_E4M3 ? e4m3_table : e5m2_table;
            const auto* s = static_cast<const uint8_t*>(src);
            for (int64_t i = 0; i < n; ++i) d[i] = table[s[i]];
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i) store_from_double(dst, dst_dt, i, load_as_double(src, src_dt, i));
}

void convert_elements_parallel(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n) {
    constexpr int64_t kRun = int64_t{1} << 16;
    const int64_t runs = (n + kRun - 1) / kRun;
    const auto* s = static_cast<const char*>(src);
    auto* d = static_cast<char*>(dst);
    const auto ss = static_cast<int64_t>(dtype_size(src_dt)), ds = static_cast<int64_t>(dtype_size(dst_dt));
#pragma omp parallel for schedule(static) if (runs > 1)
    for (int64_t r = 0; r < runs; ++r) {
        const int64_t begin = r * kRun;
        convert_elements(s + begin * ss, src_dt, d + begin * ds, dst_dt, std::min(kRun, n - begin));
    }
}

}  // namespace sd3
