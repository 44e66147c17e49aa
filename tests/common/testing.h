// Shared test helpers: golden-data paths and the per-element tolerance check of DESIGN.md "Testing":
// every element must satisfy |got - ref| <= atol + rtol * |ref|; the report names the worst element.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace sd3::testing {

inline std::string data_path(const std::string& relative) { return std::string(SD3_TEST_DATA) + "/" + relative; }
inline std::string tiny_path(const std::string& relative) { return data_path("tiny-a/" + relative); }

// Opens a golden safetensors file of tests/data, failing the test when it cannot.
inline SafetensorsFile open_golden(const std::string& relative) {
    auto f = SafetensorsFile::open(data_path(relative));
    if (!f.ok()) ADD_FAILURE() << f.status().message();
    return std::move(f).value();
}

inline Tensor golden_tensor(const SafetensorsFile& f, const std::string& name) {
    auto t = f.get(name);
    if (!t.ok()) ADD_FAILURE() << t.status().message();
    return t.ok() ? t.value() : Tensor();
}

// The name a LoRA slot ("....lora_A.weight") has in the golden training step of lora_and_training.safetensors,
// which PEFT saved with its adapter name ("....lora_A.default.weight").
inline std::string golden_lora_name(const std::string& slot) {
    std::string n = slot;
    n.insert(n.size() - std::string(".weight").size(), ".default");
    return n;
}

// The norm-wise relative error ‖got − ref‖ / ‖ref‖ of two CPU tensors of the same size (float math in double).
inline double relative_error(const Tensor& got, const Tensor& ref) {
    const std::vector<float> g = got.to_float_vector(), r = ref.to_float_vector();
    EXPECT_EQ(g.size(), r.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < g.size() && i < r.size(); ++i) {
        num += (static_cast<double>(g[i]) - r[i]) * (static_cast<double>(g[i]) - r[i]);
        den += static_cast<double>(r[i]) * r[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}

inline ::testing::AssertionResult all_close(const Tensor& got, const Tensor& ref, double atol, double rtol) {
    if (got.shape() != ref.shape())
        return ::testing::AssertionFailure() << "shape " << shape_str(got.shape()) << " != reference "
                                             << shape_str(ref.shape());
    const std::vector<float> g = got.to_float_vector();
    const std::vector<float> r = ref.to_float_vector();
    int64_t bad = 0, worst = -1;
    double worst_excess = 0, max_abs = 0;
    for (size_t i = 0; i < g.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(g[i]) - r[i]);
        const double allowed = atol + rtol * std::fabs(static_cast<double>(r[i]));
        max_abs = std::max(max_abs, diff);
        if (!(diff <= allowed)) {  // also catches NaN
            ++bad;
            if (worst < 0 || diff - allowed > worst_excess || std::isnan(diff)) {
                worst = static_cast<int64_t>(i);
                worst_excess = diff - allowed;
            }
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess() << "max |diff| " << max_abs;
    return ::testing::AssertionFailure() << bad << " of " << g.size() << " elements outside atol " << atol
                                         << " + rtol " << rtol << "; worst at flat index " << worst << ": got "
                                         << g[worst] << ", reference " << r[worst] << "; max |diff| " << max_abs;
}

}  // namespace sd3::testing
