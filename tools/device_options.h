// The options every command that runs models shares: which device, in which precision, and where to write the
// run's measurements (seconds, peak GPU memory) as JSON for bench/ and for users comparing settings.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/status.h"
#include "io/json_file.h"
#include "io/quant.h"
#include "nn/placement.h"
#include "ops/device.h"

namespace sd3::tools {

struct DeviceCliOptions {
    std::string device = "auto";
    std::string precision = "auto";
    std::string metrics_json;
    std::string base_dtype = "auto";
    double max_vram_gib = 0;  // 0: not given
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

// --base-dtype: the transformer's block weights as stored in memory. "auto" keeps the compute dtype.
inline void add_base_dtype_option(CLI::App* sub, DeviceCliOptions& d) {
    sub->add_option("--base-dtype", d.base_dtype,
                    "transformer block weights in memory: auto (the compute dtype), int8 (per-row scale), fp8 "
                    "(e4m3) or nf4; dequantized one layer at a time")
        ->check(CLI::IsMember({"auto", "int8", "fp8", "nf4"}))
        ->capture_default_str();
}

inline std::optional<QuantFormat> base_format(const DeviceCliOptions& d) {
    if (d.base_dtype == "auto") return std::nullopt;
    return quant_format_from_name(d.base_dtype);
}

// --max-vram: the GiB the frozen weights may hold on the GPU; the blocks beyond it stream from host memory.
inline void add_max_vram_option(CLI::App* sub, DeviceCliOptions& d, const std::string& which_weights,
                                const std::string& by_default) {
    sub->add_option("--max-vram", d.max_vram_gib,
                    "GiB of GPU memory " + which_weights +
                        " may hold; the blocks beyond it stream from host memory, one at a time (default: " +
                        by_default + ")");
}

// --max-vram in bytes; 0 when not given.
inline size_t max_vram_bytes(const DeviceCliOptions& d) {
    return static_cast<size_t>(d.max_vram_gib * static_cast<double>(size_t{1} << 30));
}

// --device: "auto" is the first GPU when there is one, else the CPU.
inline Result<Device> resolve_device(const DeviceCliOptions& d) {
    if (d.device != "auto") return parse_device(d.device);
    return cuda_available() ? Device{DeviceType::CUDA, 0} : kCPU;
}

inline Result<nn::Placement> resolve_placement(const DeviceCliOptions& d) {
    SD3_ASSIGN_OR_RETURN(const Device device, resolve_device(d));
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
