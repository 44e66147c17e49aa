// Storage formats of frozen Linear weights (docs/quantization.md): the quantizers that turn a weight as stored in a
// file (f32/f16/bf16/fp8) into bf16, fp16, fp8-e4m3 (plain cast), int8 with a per-row absmax (bitsandbytes
// LLM.int8 weights) or NF4 in blocks of 64 (bitsandbytes' 4-bit NormalFloat), and QuantizedMatrix, the owning
// struct a model keeps per Linear. The dequantizers and the matmul are in ops/cpu/quant_ops.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "core/tensor.h"
#include "ops/cpu/quant_ops.h"

namespace sd3 {

using cpu::QuantFormat;

// "f32", "fp16", "bf16", "fp8", "int8", "nf4" (also "float32", "float16", "fp8-e4m3", "f16"): the CLI's names.
std::optional<QuantFormat> quant_format_from_name(std::string_view name);
// The dtype a tensor of that format stores as `data` (NF4: packed U8).
DType quant_format_storage_dtype(QuantFormat f);

// --- scalar and array quantizers (the exact semantics; unit-tested) -------------------------------------------

// Index of the NF4 code nearest to x (x already divided by the block absmax). Ties and the midpoints go to the
// lower code, as bitsandbytes' dQuantizeNF4 decision tree (strict `x > midpoint`) does; NaN gives 0.
uint8_t nf4_encode(float x);
// bitsandbytes' midpoints between adjacent codes (the thresholds of dQuantizeNF4), ascending.
extern const float kNF4Midpoints[15];

// Per output row r: absmax[r] = max_j |w[r, j]|, q[r, j] = round_half_even(w[r, j] * (127 / absmax[r])), as
// bitsandbytes' int8_vectorwise_quant. An all-zero row gets absmax 0 and zeros.
void quantize_int8_rows(const float* w, int64_t rows, int64_t cols, int8_t* q, float* absmax);
// Flattened blocks of `block_size` elements (the last may be short): absmax[b] = max |w| in the block,
// code = nf4_encode(w * (1 / absmax[b])), packed two per byte, the even element in the high nibble (bitsandbytes'
// kQuantizeBlockwise). An all-zero block gets absmax 0 and the code of 0.0. `packed` holds (n + 1) / 2 bytes.
void quantize_nf4(const float* w, int64_t n, int64_t block_size, uint8_t* packed, float* absmax);
// float32 -> float8_e4m3fn, rounding to nearest even and saturating to ±448 (a finite weight never becomes NaN,
// unlike PyTorch's .to(float8_e4m3fn), which gives NaN above the range).
uint8_t f32_to_f8e4m3_saturate(float f);

// --- one Linear weight in a storage format ---------------------------------------------------------------------

struct QuantizedMatrix {
    QuantFormat format = QuantFormat::F32;
    int64_t rows = 0, cols = 0;  // the Linear's [out, in]
    int64_t block_size = 64;     // NF4 only
    Tensor data;   // F32/F16/BF16/F8_E4M3/I8 [rows, cols]; NF4: U8 [(rows*cols + 1) / 2]
    Tensor scale;  // INT8_ROW: F32 [rows] row absmax; NF4: F32 [ceil(rows*cols / block_size)]; else undefined

    bool defined() const { return data.defined(); }
    cpu::QuantWeightView view() const;
    size_t bytes() const;  // data + scale
    Tensor dequantize() const;  // f32 [rows, cols]
};

// Turns a weight as stored ([rows, cols], any float dtype, CPU) into `format`. A tensor already in the target's
// storage dtype (fp8 as fp8, fp16 as fp16, ...) is kept as stored, without a copy.
QuantizedMatrix quantize_matrix(const Tensor& w, QuantFormat format, int64_t nf4_block_size = 64);

}  // namespace sd3
