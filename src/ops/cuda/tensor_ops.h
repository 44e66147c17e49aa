// Tensor-level CUDA operations behind ops/ops.h and ops/device.h: check dtypes and devices, make inputs
// contiguous on the device, allocate results there and call the launchers of cuda_ops.h on the device's
// context. Tensors are F32, BF16 or F16 (all operands of one call the same dtype). No CUDA header here.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/quant_ops.h"

namespace sd3::cuda::tensor_ops {

int device_count();
int sm_version(int index);
std::string describe(int index);
void synchronize(int index);
MemoryStats memory_stats(int index);
void reset_peak_memory(int index);
void release_workspace(int index);
void set_deterministic_attention(int index, bool on);
void set_conv_copy_limit(int index, size_t bytes);
void profiler_capture(bool on);
// Context::begin_capture / end_capture (null: the recording failed) / launch_graph / destroy_graph.
void capture_begin(int index);
void* capture_end(int index);
void graph_launch(int index, void* graph);
void graph_destroy(int index, void* graph);

Result<Tensor> to_device(const Tensor& t, Device device);
Result<Tensor> upload_async(const Tensor& t, Device device);  // t on the CPU
void upload_async_into(const Tensor& dst, const Tensor& host);  // Context::upload_async into dst
Tensor to_host(const Tensor& t);
// A contiguous device tensor's bytes queued for the host (Context::start_download), and their arrival in `host`
// (a contiguous CPU tensor of the same size).
int start_download(const Tensor& t);
void finish_download(const Tensor& t, int handle, const Tensor& host);
Tensor contiguous(const Tensor& t);
// Page-locked host memory (null when the driver refuses to pin more) and its release.
void* pinned_alloc(size_t bytes);
void pinned_free(void* p);
// Context::side_copy of dst (a contiguous CUDA tensor) <- src (a contiguous CPU tensor of the same byte size), and
// Context::wait_side_copy.
int side_copy(const Tensor& dst, const Tensor& src);
void wait_side_copy(int index, int ticket);
// dst (a CUDA tensor) = src (host or device), converting float dtypes.
void copy(const Tensor& dst, const Tensor& src);
Tensor convert(const Tensor& t, DType dtype);

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, float alpha);
Tensor linear_gelu_tanh(const Tensor& x, const Tensor& w, const Tensor& b, Tensor* pre);
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);
Tensor rms_norm(const Tensor& x, const Tensor& w, float eps);
Tensor group_norm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups, float eps);
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b, int64_t stride, int64_t pad);
Tensor activation(const Tensor& x, cpu::Activation act);
void activation_(Tensor& x, cpu::Activation act);  // x contiguous
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads, float scale, bool causal,
                 const Tensor& bias);
Tensor add(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& a, float s);
Tensor cat(const std::vector<Tensor>& parts, int dim);
void guided_euler_step_(Tensor& latents, const Tensor& v, bool cfg, float guidance_scale, float dt);
// The weight view's data and scales must be in device memory (checked).
Tensor linear_quantized(const Tensor& x, const cpu::QuantWeightView& w, const Tensor& b);
Tensor dequantize_weight(const cpu::QuantWeightView& w, DType dtype, Device device);

}  // namespace sd3::cuda::tensor_ops
