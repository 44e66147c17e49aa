// Moving tensors between devices, in every build: with the CUDA backend these copy through ops/cuda; without
// it, asking for a CUDA device is an UNSUPPORTED error that says so. No CUDA header is needed to call these.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

// True when this build has the CUDA backend and a CUDA device is present.
bool cuda_available();
// "cpu", "cuda" (device 0) or "cuda:N"; an error names what is accepted and which devices exist.
Result<Device> parse_device(std::string_view text);
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" or "cpu".
std::string device_description(Device device);

// A contiguous copy of `t` on `device` (same dtype), or `t` itself when it is already there and contiguous.
// Running out of device memory is an OUT_OF_MEMORY error saying what was asked and what was free.
Result<Tensor> to_device(const Tensor& t, Device device);
// to_device without the wait: the bytes go through pinned staging memory in the device's order, so the call
// returns at once and `t` may change or go right after. For uploads off the critical path (the trainer's next
// micro-batch, staged while the device works). `t` itself on the CPU.
Result<Tensor> upload_async(const Tensor& t, Device device);

// upload_async into an existing tensor: dst (contiguous, on any device) gets the bytes of `host` (a contiguous CPU
// tensor of the same dtype and shape) in the device's order, without waiting; `host` may change or go right after.
void upload_async_into(const Tensor& dst, const Tensor& host);

// A device tensor's bytes on their way to the host, queued in the device's order: wait() blocks until this copy
// is done (not the rest of the device's queue) and returns the CPU tensor. On the CPU, the tensor itself.
class PendingDownload {
  public:
    PendingDownload() = default;
    Tensor wait();

  private:
    friend PendingDownload download_async(const Tensor& t);
    Tensor source_;
    int handle_ = -1;
};
PendingDownload download_async(const Tensor& t);

// Host memory that a device copies from at full bus speed while the host goes on (page-locked): a CPU Storage.
// Ordinary host memory where there is no CUDA device or the system refuses to pin more (copies then still work,
// only slower and without overlap).
std::shared_ptr<Storage> allocate_pinned(size_t bytes);

// Copies on a second queue beside a device's own, so a transfer overlaps the kernels queued there. side_copy(dst,
// src): dst (a contiguous device tensor) gets the bytes of src (a contiguous CPU tensor of the same byte size,
// pinned for the copy to overlap) once the work queued on dst's device so far is done, so nothing queued before
// still reads what dst held; returns a ticket. wait_side_copy(device, ticket): the device's later work waits for
// that copy; each ticket is waited for once. src must stay unchanged until then. On the CPU the copy happens at
// once (ticket -1, nothing to wait for).
int side_copy(const Tensor& dst, const Tensor& src);
void wait_side_copy(Device device, int ticket);

// Copies src's elements (same shape; any device, strides and dtype) into dst's memory, converting float dtypes
// (quantized dtypes are copied only as themselves). Waits until a host source may be freed.
void copy_into(const Tensor& dst, const Tensor& src);
// A contiguous CPU copy (waits for the device's queued work); `t` itself when already on the CPU.
Tensor to_host(const Tensor& t);
// `t` converted to `dtype` on its own device (float dtypes on CUDA); `t` itself when the dtype matches.
Tensor convert(const Tensor& t, DType dtype);
// A contiguous float32 copy on the CPU (`t` itself when it already is one): what models hand back to callers.
Tensor host_f32(const Tensor& t);
// Waits until the work queued on `device` is done (no-op on the CPU).
void synchronize(Device device);
// The device's memory pool (all zero on the CPU): bytes in use, the peak since reset_peak_memory(), free/total.
MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
// Frees the device's kernel workspace, which keeps the size of the largest request so far (the next op that needs
// one allocates it again): between phases whose workspaces differ, such as the VAE's convolutions and training.
// It also waits for the device and gives back what recorded graphs hold between their launches (a recorded
// training step's activations), so the next phase has that memory too. Nothing on the CPU.
void release_workspace(Device device);
// Attention backwards on `device` with the deterministic algorithm (on: the default, bit-identical reruns) or,
// off, cuDNN's faster one that sums the query gradient with atomic adds in a varying order (docs/cuda.md says
// how much faster). The CPU's backward is always deterministic: nothing to set there.
void set_deterministic_attention(Device device, bool on);
// Convolutions on `device` whose input and output together pass `bytes` run on im2col with a capped scratch, the
// others on cuDNN through channels-last copies of input and output (faster; the copies cost memory). The default,
// 512 MiB, keeps a 1024² VAE decode's peak at 1.78 GB instead of 2.59 (its two 256-channel 1024² layers);
// `generate`, which frees the transformer before decoding, lifts it. Nothing on the CPU.
void set_conv_copy_limit(Device device, size_t bytes);
// Starts or stops the CUDA profiler's capture (cudaProfilerStart/Stop), for profilers started with capture off
// (`ncu --profile-from-start off`, `nsys --capture-range=cudaProfilerApi`); nothing without CUDA.
void profiler_capture(bool on);
// Device work that a loop queues again and again, recorded once and replayed (a CUDA graph): for iterations that
// queue the same kernels on the same buffers, such as the sampler's model call, where launching hundreds of
// kernels one by one costs the host as long as the device takes to run them. run(body): the first call runs
// `body` as it is (one-time setup such as kernel plans and workspace growth happens there); the second records
// what `body` queues and launches the recording; later calls launch it without calling `body`. `body` must free
// every device tensor it allocates before it returns, must not free one allocated before, and must not wait for
// the device (the wait fails while recording). Where the recording fails all the same (a library call that
// cannot be recorded), `body` runs as it is, that time and every later one. On the CPU `body` always runs.
class DeviceGraph {
  public:
    explicit DeviceGraph(Device device) : device_(device) {}
    ~DeviceGraph();
    DeviceGraph(const DeviceGraph&) = delete;
    DeviceGraph& operator=(const DeviceGraph&) = delete;

    Status run(const std::function<Status()>& body);
    bool replaying() const { return graph_ != nullptr; }

  private:
    Device device_;
    int calls_ = 0;
    void* graph_ = nullptr;  // the CUDA graph, once recorded
    bool record_failed_ = false;
};

// The 16-bit storage dtype of a device: BF16 where the card has bf16 tensor cores (sm_80 and up), else F16
// (sm_75, T4); F16 everywhere when the environment sets SD3_FORCE_FP16=1 (to exercise that path on big cards).
DType half_dtype(Device device);

}  // namespace sd3
