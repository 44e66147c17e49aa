// Element types and their exact conversions to and from float32.
// Narrowing conversions round to nearest, ties to even, as PyTorch's casts do; fp8 follows PyTorch's
// float8_e4m3fn (no infinities: out of range becomes NaN) and float8_e5m2 (out of range becomes inf).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace sd3 {

enum class DType : uint8_t { F32, F64, F16, BF16, F8_E4M3, F8_E5M2, I8, U8, I32, I64, BOOL };

inline constexpr DType kAllDTypes[] = {DType::F32, DType::F64,  DType::F16, DType::BF16, DType::F8_E4M3, DType::F8_E5M2,
                                       DType::I8,  DType::U8,   DType::I32, DType::I64,  DType::BOOL};

size_t dtype_size(DType dt);
bool dtype_is_float(DType dt);
// Our short name ("bf16") and the safetensors header name ("BF16").
std::string_view dtype_name(DType dt);
std::string_view dtype_safetensors_name(DType dt);
std::optional<DType> dtype_from_safetensors_name(std::string_view name);
std::optional<DType> dtype_from_name(std::string_view name);  // accepts our names: f32, bf16, fp8-e4m3, ...

// --- scalar conversions -------------------------------------------------------------------------------------

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f8e4m3_to_f32(uint8_t v);
uint8_t f32_to_f8e4m3(float f);
float f8e5m2_to_f32(uint8_t v);
uint8_t f32_to_f8e5m2(float f);

// Reads element i of a buffer of type `dt` as float (or double), and writes one.
double load_as_double(const void* data, DType dt, int64_t i);
void store_from_double(void* data, DType dt, int64_t i, double v);

// Converts n contiguous elements between any two types (exact where the target holds the value).
void convert_elements(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);
// The same in parallel runs of 64K elements, for bulk conversions such as weights as they load (CLIP-G's 695M
// parameters to float32). Kept off the paths that queue GPU work, where OpenMP's workers, spinning for a while
// after each parallel region, would compete with the thread that launches the kernels.
void convert_elements_parallel(const void* src, DType src_dt, void* dst, DType dst_dt, int64_t n);

}  // namespace sd3
