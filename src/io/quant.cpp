// Quantizers of frozen Linear weights and QuantizedMatrix (io/quant.h). The int8 and NF4 formulas follow
// bitsandbytes (research/gpu-components.md §4a, §4b): row absmax with round-half-even to int8, and NF4 codes
// chosen by bitsandbytes' midpoint thresholds on x * (1 / block absmax).
#include "io/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace sd3 {

const float kNF4Midpoints[15] = {
    -0.8480964004993439f,  -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,   0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

std::optional<QuantFormat> quant_format_from_name(std::string_view name) {
    if (name == "f32" || name == "float32" || name == "fp32") return QuantFormat::F32;
    if (name == "fp16" || name == "f16" || name == "float16") return QuantFormat::F16;
    if (name == "bf16" || name == "bfloat16") return QuantFormat::BF16;
    if (name == "fp8" || name == "fp8-e4m3" || name == "f8_e4m3" || name == "float8_e4m3fn") return QuantFormat::FP8_E4M3;
    if (name == "int8") return QuantFormat::INT8_ROW;
    if (name == "nf4") return QuantFormat::NF4;
    return std::nullopt;
}

DType quant_format_storage_dtype(QuantFormat f) {
    switch (f) {
        case QuantFormat::F32: return DType::F32;
        case QuantFormat::F16: return DType::F16;
        case QuantFormat::BF16: return DType::BF16;
        case QuantFormat::FP8_E4M3: return DType::F8_E4M3;
        case QuantFormat::INT8_ROW: return DType::I8;
        case QuantFormat::NF4: return DType::U8;
    }
    return DType::F32;
}

uint8_t nf4_encode(float x) {
    // The number of midpoints strictly below x is the code index: the same answer as bitsandbytes' balanced
    // decision tree, whose every test is `x > midpoint`. NaN compares false everywhere and gives 0.
    uint8_t code = 0;
    for (float m : kNF4Midpoints) code += (x > m) ? 1 : 0;
    return code;
}

void quantize_int8_rows(const float* w, int64_t rows, int64_t cols, int8_t* q, float* absmax) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* row = w + r * cols;
        float amax = 0.0f;
        for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
        absmax[r] = amax;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t c = 0; c < cols; ++c) {
            const float v = std::nearbyint(row[c] * inv);  // default rounding mode: nearest, ties to even
            q[r * cols + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
        }
    }
}

void quantize_nf4(const float* w, int64_t n, int64_t block_size, uint8_t* packed, float* absmax) {
    SD3_ASSERT(block_size > 0 && block_size % 2 == 0, "NF4 block size must be even, got ", block_size);
    const int64_t blocks = (n + block_size - 1) / block_size;
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t begin = b * block_size, end = std::min(n, begin + block_size);
        float amax = 0.0f;
        for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(w[i]));
        absmax[b] = amax;
        const float inv = 1.0f / amax;  // bitsandbytes multiplies by the reciprocal
        // Codes 64 at a time, in a loop the compiler vectorizes, then packed; blocks are even-sized, so a byte
        // never straddles two blocks (quantize_matrix hands runs of whole blocks to threads).
        for (int64_t c0 = begin; c0 < end; c0 += 64) {
            const int64_t cn = std::min<int64_t>(64, end - c0);
            uint8_t codes[64];
            for (int64_t j = 0; j < cn; ++j)
                codes[j] = amax > 0.0f ? nf4_encode(w[c0 + j] * inv) : uint8_t{7};  // 7 is the code of 0.0
            int64_t j = 0;
            for (; j + 1 < cn; j += 2) packed[(c0 + j) / 2] = static_cast<uint8_t>(codes[j] << 4 | codes[j + 1]);
            if (j < cn) packed[(c0 + j) / 2] = static_cast<uint8_t>(codes[j] << 4);  // an odd tail: low nibble 0
        }
    }
}

uint8_t f32_to_f8e4m3_saturate(float f) {
    if (std::isnan(f)) return f32_to_f8e4m3(f);
    return f32_to_f8e4m3(std::clamp(f, -448.0f, 448.0f));
}

cpu::QuantWeightView QuantizedMatrix::view() const {
    cpu::QuantWeightView v;
    v.format = format;
    v.rows = rows;
    v.cols = cols;
    v.data = data.defined() ? data.raw() : nullptr;
    v.scale = scale.defined() ? scale.data<float>() : nullptr;
    v.block_size = block_size;
    return v;
}

size_t QuantizedMatrix::bytes() const {
    return (data.defined() ? data.nbytes() : 0) + (scale.defined() ? scale.nbytes() : 0);
}

Tensor QuantizedMatrix::dequantize() const {
    Tensor out = Tensor::empty({rows, cols}, DType::F32);  // [rows, cols]
    cpu::dequantize_rows(out.data<float>(), view(), 0, rows);
    return out;
}

namespace {
// Calls fn(begin, values, count) on consecutive runs of `chunk` elements of w (the last may be shorter), each run
// converted to float32 (exact for every float dtype) in a buffer of its thread. Runs go to threads in parallel, so
// fn must write only its own run's outputs. No float32 copy of the whole weight is made: a T5-XXL feed-forward
// weight would be 168 MB of it, written and read again by one thread (half of an int8 load's time before).
template <typename Fn>
void for_each_f32_run(const Tensor& w, int64_t chunk, Fn fn) {
    const int64_t n = w.numel();
    if (n == 0) return;
    const int64_t runs = (n + chunk - 1) / chunk;
    const char* src = static_cast<const char*>(w.raw());
    const size_t elem = dtype_size(w.dtype());
#pragma omp parallel if (n > (1 << 16))
    {
        std::vector<float> buf(static_cast<size_t>(std::min(chunk, n)));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < runs; ++r) {
            const int64_t begin = r * chunk, count = std::min(chunk, n - begin);
            convert_elements(src + begin * static_cast<int64_t>(elem), w.dtype(), buf.data(), DType::F32, count);
            fn(begin, buf.data(), count);
        }
    }
}
}  // namespace

QuantizedMatrix quantize_matrix(const Tensor& w_in, QuantFormat format, int64_t nf4_block_size) {
    SD3_ASSERT(w_in.dim() == 2 && dtype_is_float(w_in.dtype()) && w_in.device().is_cpu(),
               "quantize_matrix: expected a 2-D float CPU tensor, got ", w_in.describe());
    QuantizedMatrix q;
    q.format = format;
    q.rows = w_in.size(0);
    q.cols = w_in.size(1);
    q.block_size = nf4_block_size;
    const DType storage = quant_format_storage_dtype(format);
    const bool plain_cast = format == QuantFormat::F32 || format == QuantFormat::F16 || format == QuantFormat::BF16 ||
                            format == QuantFormat::FP8_E4M3;
    if (plain_cast && w_in.dtype() == storage) {  // already in the wanted format: keep as stored
        q.data = w_in.contiguous();
        return q;
    }
    const Tensor w = w_in.contiguous();  // [rows, cols] as stored
    const int64_t n = w.numel();
    constexpr int64_t kRun = int64_t{1} << 14;  // elements per run of the element-wise formats
    switch (format) {
        case QuantFormat::F32:
        case QuantFormat::F16:
        case QuantFormat::BF16: {  // round to nearest even
            q.data = Tensor::empty({q.rows, q.cols}, storage);
            char* dst = static_cast<char*>(q.data.raw());
            const int64_t elem = static_cast<int64_t>(dtype_size(storage));
            for_each_f32_run(w, kRun, [&](int64_t begin, const float* v, int64_t count) {
                convert_elements(v, DType::F32, dst + begin * elem, storage, count);
            });
            break;
        }
        case QuantFormat::FP8_E4M3: {
            q.data = Tensor::empty({q.rows, q.cols}, DType::F8_E4M3);
            uint8_t* dst = q.data.data<uint8_t>();
            for_each_f32_run(w, kRun, [&](int64_t begin, const float* v, int64_t count) {
                for (int64_t i = 0; i < count; ++i) dst[begin + i] = f32_to_f8e4m3_saturate(v[i]);
            });
            break;
        }
        case QuantFormat::INT8_ROW: {  // a run is a row
            q.data = Tensor::empty({q.rows, q.cols}, DType::I8);
            q.scale = Tensor::empty({q.rows}, DType::F32);
            int8_t* dst = q.data.data<int8_t>();
            float* absmax = q.scale.data<float>();
            for_each_f32_run(w, q.cols, [&](int64_t begin, const float* v, int64_t) {
                quantize_int8_rows(v, 1, q.cols, dst + begin, absmax + begin / q.cols);
            });
            break;
        }
        case QuantFormat::NF4: {  // a run is whole blocks; blocks are even-sized, so runs start on a byte
            SD3_ASSERT(nf4_block_size > 0 && nf4_block_size % 2 == 0, "NF4 block size must be even, got ",
                       nf4_block_size);
            q.data = Tensor::empty({(n + 1) / 2}, DType::U8);
            q.scale = Tensor::empty({(n + nf4_block_size - 1) / nf4_block_size}, DType::F32);
            uint8_t* packed = q.data.data<uint8_t>();
            float* absmax = q.scale.data<float>();
            const int64_t run = std::max<int64_t>(1, kRun / nf4_block_size) * nf4_block_size;
            for_each_f32_run(w, run, [&](int64_t begin, const float* v, int64_t count) {
                quantize_nf4(v, count, nf4_block_size, packed + begin / 2, absmax + begin / nf4_block_size);
            });
            break;
        }
    }
    return q;
}

}  // namespace sd3
