// Dequantizers for every QuantFormat and the weight-only quantized linear layer (quant_ops.h).
// Dequantization is exact arithmetic of the stored values: a cast for F16/BF16/FP8, q * (absmax / 127) for INT8
// rows, code * absmax for NF4 (bitsandbytes' dequantize formulas, research/gpu-components.md §4a-4b).
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/quant_ops.h"

namespace sd3::cpu {

const float kNF4Code[16] = {SD3_NF4_CODE_VALUES};

const char* quant_format_name(QuantFormat f) {
    switch (f) {
        case QuantFormat::F32: return "f32";
        case QuantFormat::F16: return "fp16";
        case QuantFormat::BF16: return "bf16";
        case QuantFormat::FP8_E4M3: return "fp8";
        case QuantFormat::INT8_ROW: return "int8";
        case QuantFormat::NF4: return "nf4";
    }
    return "?";
}

void dequantize_rows(float* out, const QuantWeightView& w, int64_t row0, int64_t n) {
    SD3_ASSERT(row0 >= 0 && n >= 0 && row0 + n <= w.rows, "dequantize_rows: rows [", row0, ", ", row0 + n, ") of ",
               w.rows);
    const int64_t cols = w.cols;
    const int64_t first = row0 * cols, count = n * cols;  // flat element range
    switch (w.format) {
        case QuantFormat::F32:
            std::memcpy(out, static_cast<const float*>(w.data) + first, static_cast<size_t>(count) * sizeof(float));
            return;
        case QuantFormat::F16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + first;
#pragma omp parallel for if (count > (1 << 16))
            for (int64_t i = 0; i < count; ++i) out[i] = f16_to_f32(src[i]);
            return;
        }
        case QuantFormat::BF16: {
            const uint16_t* src = static_cast<const uint16_t*>(w.data) + first;
#pragma omp parallel for if (count > (1 << 16))
            for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_f32(src[i]);
            return;
        }
        case QuantFormat::FP8_E4M3: {
            const uint8_t* src = static_cast<const uint8_t*>(w.data) + first;
            float lut[256];  // every e4m3 byte decodes exactly; a table keeps the loop a load
            for (int v = 0; v < 256; ++v) lut[v] = f8e4m3_to_f32(static_cast<uint8_t>(v));
#pragma omp parallel for if (count > (1 << 16))
            for (int64_t i = 0; i < count; ++i) out[i] = lut[src[i]];
            return;
        }
        case QuantFormat::INT8_ROW: {
            SD3_ASSERT(w.scale != nullptr, "int8 weight without row scales");
            const int8_t* src = static_cast<const int8_t*>(w.data) + first;
#pragma omp parallel for if (count > (1 << 16))
            for (int64_t r = 0; r < n; ++r) {
                const float s = w.scale[row0 + r] / 127.0f;
                for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(src[r * cols + c]) * s;
            }
            return;
        }
        case QuantFormat::NF4: {
            SD3_ASSERT(w.scale != nullptr && w.block_size > 0, "nf4 weight without block absmax");
            const uint8_t* packed = static_cast<const uint8_t*>(w.data);
#pragma omp parallel for if (count > (1 << 16))
            for (int64_t i = 0; i < count; ++i) {
                const int64_t e = first + i;
                const uint8_t byte = packed[e / 2];
                const uint8_t code = (e % 2 == 0) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0x0f);
                out[i] = kNF4Code[code] * w.scale[e / w.block_size];
            }
            return;
        }
    }
    SD3_ASSERT(false, "unknown quant format");
}

void quant_linear_fwd(float* y, const float* x, const QuantWeightView& w, const float* b, int64_t M,
                      int64_t rows_per_block) {
    const int64_t N = w.rows, K = w.cols;
    if (b != nullptr) {
        for (int64_t i = 0; i < M; ++i) std::memcpy(y + i * N, b, static_cast<size_t>(N) * sizeof(float));
    }
    const float beta = b != nullptr ? 1.0f : 0.0f;
    if (w.format == QuantFormat::F32) {  // nothing to dequantize
        gemm(false, true, M, N, K, 1.0f, x, K, static_cast<const float*>(w.data), K, beta, y, N);
        return;
    }
    SD3_ASSERT(rows_per_block > 0, "rows_per_block must be positive");
    const int64_t block = std::min(rows_per_block, N);
    std::vector<float> scratch(static_cast<size_t>(block * K));  // [block, K] dequantized rows
    for (int64_t r0 = 0; r0 < N; r0 += block) {
        const int64_t nb = std::min(block, N - r0);
        dequantize_rows(scratch.data(), w, r0, nb);
        // y[:, r0:r0+nb] = x · scratchᵀ (a column block of y, row stride N)
        gemm(false, true, M, nb, K, 1.0f, x, K, scratch.data(), K, beta, y + r0, N);
    }
}

}  // namespace sd3::cpu
