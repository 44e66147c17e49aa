// CUDA contexts (one per device, made on first use), the device allocator behind Tensor, and the
// host<->device copies of ops/device.h.
#include "ops/cuda/context.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/check.h"
#include "core/tensor.h"
#include "ops/cuda/attention_cudnn.h"

namespace sd3::cuda {

namespace {

#define SD3_RT_CHECK(expr)                                                                      \
    do {                                                                                        \
        const cudaError_t sd3_err_ = (expr);                                                    \
        SD3_ASSERT(sd3_err_ == cudaSuccess, #expr, " failed: ", cudaGetErrorString(sd3_err_));  \
    } while (0)

// cuBLASLt's workspace: llm.c's 32 MiB ("only Hopper needs 32, for others 4 is OK").
constexpr size_t kBlasWorkspaceBytes = 32u << 20;
constexpr int kMaxDevices = 16;

std::mutex g_mutex;
std::unique_ptr<Context> g_contexts[kMaxDevices];

// Tensors come from the device's stream-ordered pool (cudaMallocAsync on the context's stream): freeing does not
// wait for the device (cudaFree would synchronize after every temporary), and freed blocks are reused by later
// allocations in stream order. The pool keeps what it has reserved (release threshold: unlimited), like
// PyTorch's caching allocator.
void* device_alloc(size_t bytes, int index) {
    Context& ctx = Context::get(index);
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, bytes, ctx.stream());
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the out-of-memory error so later launches do not report it
        return nullptr;
    }
    return p;
}

void device_free(void* p, int index) {
    Context& ctx = Context::get(index);
    cudaFreeAsync(p, ctx.stream());
}

MemoryStats device_stats(int index) { return Context::get(index).memory_stats(); }

}  // namespace

int device_count() {
    static const int count = [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        return n;
    }();
    return count;
}

Context& Context::get(int index) {
    SD3_ASSERT(index >= 0 && index < device_count() && index < kMaxDevices, "no CUDA device ", index, " (",
               device_count(), " present)");
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_contexts[index]) g_contexts[index].reset(new Context(index));
    SD3_RT_CHECK(cudaSetDevice(index));
    return *g_contexts[index];
}

Context::Context(int index) : index_(index) {
    SD3_RT_CHECK(cudaSetDevice(index));
    cudaDeviceProp prop{};
    SD3_RT_CHECK(cudaGetDeviceProperties(&prop, index));
    sm_ = prop.major * 10 + prop.minor;
    name_ = prop.name;
    total_memory_ = prop.totalGlobalMem;
    SD3_RT_CHECK(cudaStreamCreate(&stream_));
    SD3_RT_CHECK(cudaDeviceGetDefaultMemPool(&pool_, index));
    uint64_t keep_all = UINT64_MAX;
    SD3_RT_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep_all));
    const cublasStatus_t st = cublasLtCreate(&blas_);
    SD3_ASSERT(st == CUBLAS_STATUS_SUCCESS, "cublasLtCreate failed with status ", static_cast<int>(st));
    SD3_RT_CHECK(cudaMalloc(&blas_workspace_, kBlasWorkspaceBytes));
    blas_workspace_bytes_ = kBlasWorkspaceBytes;
    dnn_ = detail::cudnn_state_create(index, sm_, stream_);
    register_device_allocator(DeviceType::CUDA, DeviceAllocator{device_alloc, device_free, device_stats});
}

Context::~Context() {
    // Process exit: the driver may already be shutting down, so errors are ignored. cuDNN's state (dnn_) is left
    // to the process's end: its graphs and handle would be destroyed through a dlopen'ed library mid-teardown.
    if (scratch_ != nullptr) cudaFreeAsync(scratch_, stream_);
    for (Staging& b : staging_) {
        cudaFreeHost(b.host);
        cudaEventDestroy(b.done);
    }
    for (cudaEvent_t e : side_events_) cudaEventDestroy(e);
    if (side_mark_ != nullptr) cudaEventDestroy(side_mark_);
    if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
    if (blas_workspace_ != nullptr) cudaFree(blas_workspace_);
    if (blas_ != nullptr) cublasLtDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

int Context::acquire_staging(size_t bytes) {
    // The smallest free buffer that fits, so small downloads leave the large buffers to the uploads.
    int best = -1;
    for (size_t i = 0; i < staging_.size(); ++i) {
        const Staging& b = staging_[i];
        if (b.held || b.bytes < bytes || (best >= 0 && b.bytes >= staging_[best].bytes)) continue;
        if (cudaEventQuery(b.done) == cudaSuccess) best = static_cast<int>(i);
    }
    cudaGetLastError();  // cudaEventQuery's cudaErrorNotReady
    if (best < 0) {
        Staging b;
        b.bytes = std::max(bytes, size_t{1} << 20);
        SD3_RT_CHECK(cudaHostAlloc(&b.host, b.bytes, cudaHostAllocDefault));
        SD3_RT_CHECK(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
        staging_.push_back(b);
        best = static_cast<int>(staging_.size() - 1);
    }
    staging_[best].held = true;
    return best;
}

void Context::upload_async(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    SD3_RT_CHECK(cudaSetDevice(index_));
    void* host;
    cudaEvent_t done;
    int i;
    {
        std::lock_guard<std::mutex> lock(staging_mutex_);
        i = acquire_staging(bytes);
        host = staging_[i].host;
        done = staging_[i].done;
    }
    std::memcpy(host, src, bytes);  // outside the lock: the buffer is held, and this may take a millisecond
    SD3_RT_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_));
    SD3_RT_CHECK(cudaEventRecord(done, stream_));
    std::lock_guard<std::mutex> lock(staging_mutex_);
    staging_[i].held = false;  // free again once `done` completes
}

int Context::start_download(const void* src, size_t bytes) {
    SD3_RT_CHECK(cudaSetDevice(index_));
    std::lock_guard<std::mutex> lock(staging_mutex_);
    const int i = acquire_staging(bytes);
    if (bytes > 0) SD3_RT_CHECK(cudaMemcpyAsync(staging_[i].host, src, bytes, cudaMemcpyDeviceToHost, stream_));
    SD3_RT_CHECK(cudaEventRecord(staging_[i].done, stream_));
    return i;
}

void Context::finish_download(int handle, void* dst, size_t bytes) {
    cudaEvent_t done;
    void* host;
    {
        std::lock_guard<std::mutex> lock(staging_mutex_);
        done = staging_.at(handle).done;
        host = staging_.at(handle).host;
    }
    SD3_RT_CHECK(cudaEventSynchronize(done));
    std::memcpy(dst, host, bytes);
    std::lock_guard<std::mutex> lock(staging_mutex_);
    staging_[handle].held = false;
}

int Context::side_copy(void* dst, const void* src, size_t bytes) {
    SD3_RT_CHECK(cudaSetDevice(index_));
    if (copy_stream_ == nullptr) {
        SD3_RT_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
        SD3_RT_CHECK(cudaEventCreateWithFlags(&side_mark_, cudaEventDisableTiming));
    }
    int ticket = 0;
    while (ticket < static_cast<int>(side_events_.size()) && side_event_busy_[ticket]) ++ticket;
    if (ticket == static_cast<int>(side_events_.size())) {
        cudaEvent_t e = nullptr;
        SD3_RT_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        side_events_.push_back(e);
        side_event_busy_.push_back(false);
    }
    // The copy starts once the kernels queued so far are done: none of them reads dst's old bytes any more.
    SD3_RT_CHECK(cudaEventRecord(side_mark_, stream_));
    SD3_RT_CHECK(cudaStreamWaitEvent(copy_stream_, side_mark_, 0));
    if (bytes > 0) SD3_RT_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_stream_));
    SD3_RT_CHECK(cudaEventRecord(side_events_[ticket], copy_stream_));
    side_event_busy_[ticket] = true;
    return ticket;
}

void Context::wait_side_copy(int ticket) {
    SD3_ASSERT(ticket >= 0 && ticket < static_cast<int>(side_events_.size()) && side_event_busy_[ticket],
               "wait_side_copy of an unknown or spent ticket ", ticket);
    SD3_RT_CHECK(cudaStreamWaitEvent(stream_, side_events_[ticket], 0));
    side_event_busy_[ticket] = false;  // the wait holds the event's state as of now: it may be recorded again
}

Exec Context::exec(size_t scratch_bytes) {
    SD3_RT_CHECK(cudaSetDevice(index_));
    if (scratch_bytes > scratch_bytes_) {
        // Stream-ordered: the old scratch is released after the kernels queued on it.
        if (scratch_ != nullptr) SD3_RT_CHECK(cudaFreeAsync(scratch_, stream_));
        scratch_ = nullptr;
        const size_t bytes = scratch_bytes + scratch_bytes / 4;  // headroom: fewer regrowths
        const cudaError_t err = cudaMallocAsync(&scratch_, bytes, stream_);
        if (err != cudaSuccess) {
            cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            throw OutOfMemoryError(Device{DeviceType::CUDA, index_}.str(), bytes, free_b, total_b, "a kernel's workspace");
        }
        scratch_bytes_ = bytes;
    }
    Exec ex;
    ex.stream = stream_;
    ex.blas = blas_;
    ex.blas_workspace = blas_workspace_;
    ex.blas_workspace_bytes = blas_workspace_bytes_;
    ex.scratch = scratch_;
    ex.scratch_bytes = scratch_bytes_;
    ex.sm = sm_;
    ex.dnn = dnn_;
    ex.deterministic_attention = deterministic_attention_;
    return ex;
}

void Context::synchronize() { SD3_RT_CHECK(cudaStreamSynchronize(stream_)); }

void Context::release_scratch() {
    if (scratch_ != nullptr) SD3_RT_CHECK(cudaFreeAsync(scratch_, stream_));
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    // Graph memory not in use now (a finished launch's) goes back: the next launch maps it again.
    synchronize();
    if (cudaDeviceGraphMemTrim(index_) != cudaSuccess) cudaGetLastError();
}

namespace {
// Bytes of the graphs' memory pool on `device` (0 where the driver does not report it).
uint64_t graph_memory(int device, cudaGraphMemAttributeType attr) {
    uint64_t v = 0;
    if (cudaDeviceGetGraphMemAttribute(device, attr, &v) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return v;
}
}  // namespace

MemoryStats Context::memory_stats() {
    MemoryStats m;
    uint64_t v = 0;
    SD3_RT_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &v));
    m.in_use = v + graph_memory(index_, cudaGraphMemAttrUsedMemCurrent);
    SD3_RT_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &v));
    // The two pools peak at different times: the pool's own peak, or what it held at a graph launch plus the
    // graphs' peak, whichever is larger.
    const uint64_t graph_peak = graph_memory(index_, cudaGraphMemAttrUsedMemHigh);
    m.peak = std::max<uint64_t>(v, graph_peak > 0 ? graph_launch_base_ + graph_peak : 0);
    SD3_RT_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &v));
    m.reserved = v + graph_memory(index_, cudaGraphMemAttrReservedMemCurrent);
    SD3_RT_CHECK(cudaSetDevice(index_));
    SD3_RT_CHECK(cudaMemGetInfo(&m.free, &m.total));
    return m;
}

void Context::reset_peak_memory() {
    synchronize();  // frees still queued count until they run
    uint64_t zero = 0;
    SD3_RT_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero));
    if (cudaDeviceSetGraphMemAttribute(index_, cudaGraphMemAttrUsedMemHigh, &zero) != cudaSuccess)
        cudaGetLastError();  // no graph memory statistics on this driver: nothing to reset
    graph_launch_base_ = 0;
}

void Context::begin_capture() {
    SD3_RT_CHECK(cudaSetDevice(index_));
    // A graph's allocations come from their own pool: the memory this pool keeps for reuse goes back first, so
    // the two do not each hold a copy of the same activations.
    synchronize();
    SD3_RT_CHECK(cudaMemPoolTrimTo(pool_, 0));
    SD3_RT_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
}

cudaGraphExec_t Context::end_capture() {
    cudaGraph_t graph = nullptr;
    const cudaError_t err = cudaStreamEndCapture(stream_, &graph);
    if (err != cudaSuccess || graph == nullptr) {
        cudaGetLastError();  // the failed capture's error: later launches must not report it
        if (graph != nullptr) cudaGraphDestroy(graph);
        return nullptr;
    }
    cudaGraphExec_t exec = nullptr;
    // Memory a graph allocates and does not free is freed before its next launch (none should be).
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, cudaGraphInstantiateFlagAutoFreeOnLaunch);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    return exec;
}

void Context::launch_graph(cudaGraphExec_t graph) {
    uint64_t in_use = 0;
    SD3_RT_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemCurrent, &in_use));
    graph_launch_base_ = std::max(graph_launch_base_, in_use);
    SD3_RT_CHECK(cudaGraphLaunch(graph, stream_));
}

void Context::destroy_graph(cudaGraphExec_t graph) {
    if (graph == nullptr) return;
    SD3_RT_CHECK(cudaGraphExecDestroy(graph));
    // The memory graphs allocated stays cached for later graphs: give it back (the device's other work reuses it).
    if (cudaDeviceGraphMemTrim(index_) != cudaSuccess) cudaGetLastError();
}

}  // namespace sd3::cuda
