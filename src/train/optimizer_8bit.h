// bitsandbytes' 8-bit blockwise quantization of optimizer moments (AdamW8bit), regenerated from the published
// algorithm (docs/optimizers.md): the dynamic maps of create_dynamic_map (bitsandbytes/functional.py @0.43.1),
// the nearest-code search of quantize_2D and the blockwise AdamW update of kOptimizerStatic8bit2StateBlockwise
// (csrc/kernels.cu @0.43.1), as plain loops.
#pragma once

#include <array>
#include <cstdint>

namespace sd3::train {

// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 sorted float32 codes.
// signed: 127 negative + 0 + 127 positive + 1.0; unsigned: 0 + 254 positive + 1.0.
std::array<float, 256> dynamic_quant_map(bool is_signed);

// quantize_2D: the code whose value is nearest to x (x normally in [-1, 1]) by binary search over the sorted map,
// ties (exactly at a midpoint) going to the lower code as bitsandbytes does.
uint8_t quantize_nearest(const std::array<float, 256>& code, bool is_signed, float x);

// Blockwise 8-bit Adam state for one parameter tensor of n elements: uint8 codes of m (signed map) and v
// (unsigned map), one float32 absmax per block of `block` elements for each.
struct Adam8bitBlockState {
    uint8_t* m_codes;
    uint8_t* v_codes;
    float* m_absmax;  // [ceil(n / block)]
    float* v_absmax;
};

// One AdamW8bit update of p [n] with gradient g [n] at step t (1-based), bitsandbytes' order: Adam step, then
// decoupled decay p *= 1 - lr*wd. Non-finite gradient elements zero their moments and leave p unchanged.
void adam8bit_update(float* p, const float* g, int64_t n, int64_t block, Adam8bitBlockState st, float beta1,
                     float beta2, float eps, float weight_decay, float lr, int64_t t);

}  // namespace sd3::train
