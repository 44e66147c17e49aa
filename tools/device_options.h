// The options every command that runs models shares: which device, in which precision, and where to write the
// run's measurements (seconds, peak GPU memory) as JSON for bench/ and for users comparing settings.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"
#include "io/json_file.h"
#include "nn/placement.h"
#include "ops/device.h"

namespace sd3::tools {

struct DeviceCliOptions {
    std::string device = "auto";
    std::string precision = "auto";
    std::string metrics_json;
};

// `precision_flag`: the name of the precision option ("--precision"; train takes the reference's
// --mixed_precision instead and registers it itself).
inline void add_device_options(CLI::App* sub, DeviceCliOptions& d, const char* precision_flag = "--precision") {
    sub->add_option("--device", d.device, "cpu, cuda or cuda:N (auto: the first GPU when there is one)")
        ->capture_default_str();
    if (precision_flag != nullptr)
        sub->add_option(precision_flag, d.precision,
                        "compute dtype on the GPU: auto (bf16, or fp16 on cards without bf16), bf16, fp16, f32")
            ->capture_default_str();
    sub->add_option("--metrics-json", d.metrics_json, "write seconds and peak GPU memory of the run to this JSON file");
}

inline Result<nn::Placement> resolve_placement(const DeviceCliOptions& d) {
    Device device = kCPU;
    if (d.device == "auto") {
        if (cuda_available()) device = Device{DeviceType::CUDA, 0};
    } else {
        SD3_ASSIGN_OR_RETURN(device, parse_device(d.device));
    }
    return nn::placement_for(device, d.precision);
}

// Adds the device and its peak memory (since the last reset) to `m` and writes it when a path was given.
inline Status write_metrics(const DeviceCliOptions& d, const nn::Placement& p, nlohmann::ordered_json m) {
    if (d.metrics_json.empty()) return {};
    m["device"] = device_description(p.device);
    m["dtype"] = dtype_name(p.dtype);
    if (!m.contains("peak_gpu_bytes")) m["peak_gpu_bytes"] = memory_stats(p.device).peak;
    return write_text_atomic(d.metrics_json, m.dump(2) + "\n");
}

}  // namespace sd3::tools
