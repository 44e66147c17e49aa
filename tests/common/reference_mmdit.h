// The tiny MMDiT as the golden reference ran it, for the tests that compare against its data.
#pragma once

#include "common/testing.h"
#include "models/mmdit.h"

namespace sd3::testing {

// tiny-a's transformer with fp16-rounded parameters and diffusers' float32 sin-cos position buffer, which
// make_golden.py ran with (test_mmdit.cpp explains why the golden data needs the latter).
inline MMDiT reference_mmdit() {
    auto m = MMDiT::load_dir(tiny_path("model/transformer"));
    EXPECT_TRUE(m.ok()) << m.status().message();
    m->mutable_weights().pos_embed = sincos_pos_embed(16, 8, 32);
    return std::move(m).value();
}

}  // namespace sd3::testing
