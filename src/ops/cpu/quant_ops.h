// Dequantizers and the weight-only quantized linear layer on the CPU (the specification the CUDA kernels follow).
// A frozen Linear weight [rows = out, cols = in] is held in one of the formats of docs/quantization.md; the
// matmul dequantizes a block of rows to float32 and runs the float32 GEMM. The storage side (quantizers, the
// owning struct) is io/quant.h; this header is raw pointers only.
#pragma once

#include <cstdint>

namespace sd3::cpu {

enum class QuantFormat : uint8_t {
    F32,       // float32 [rows, cols]
    F16,       // IEEE half [rows, cols]
    BF16,      // bfloat16 [rows, cols]
    FP8_E4M3,  // float8_e4m3fn [rows, cols], a plain cast (no scale), as t5xxl_fp8_e4m3fn.safetensors stores it
    INT8_ROW,  // int8 [rows, cols] with one float32 absmax per row: w = q * (absmax[r] / 127)  (bitsandbytes LLM.int8 weights)
    NF4,       // 4-bit NormalFloat, two codes per byte (high nibble first) over the flattened weight, one float32
               // absmax per block of `block_size` elements: w = kNF4Code[nibble] * absmax[i / block_size]
};

const char* quant_format_name(QuantFormat f);

// bitsandbytes' NF4 code table (csrc/kernels.cu; research/gpu-components.md §4b), index -> value.
// bitsandbytes' NF4 code book (research/gpu-components.md §4b), one list for the CPU table and the CUDA
// __constant__ copy (device code cannot read a host array).
#define SD3_NF4_CODE_VALUES                                                                                   \
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,          \
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,      \
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,               \
        0.7229568362236023f, 1.0f
extern const float kNF4Code[16];

// A read-only view of a quantized weight. `data` layout per format above; `scale` is the INT8 row absmax
// [rows] or the NF4 block absmax [ceil(rows*cols / block_size)]; null otherwise.
struct QuantWeightView {
    QuantFormat format = QuantFormat::F32;
    int64_t rows = 0, cols = 0;
    const void* data = nullptr;
    const float* scale = nullptr;
    int64_t block_size = 64;  // NF4 only
};

// out[n, cols] = rows [row0, row0 + n) of w, dequantized to float32.
void dequantize_rows(float* out, const QuantWeightView& w, int64_t row0, int64_t n);

// y[M, rows] = x[M, cols] · wᵀ + b (b [rows] may be null). Dequantizes `rows_per_block` rows of w at a time into a
// float32 scratch and calls the float32 GEMM on them, so memory beyond y is one block of rows.
void quant_linear_fwd(float* y, const float* x, const QuantWeightView& w, const float* b, int64_t M,
                      int64_t rows_per_block = 256);

}  // namespace sd3::cpu
