// The CUDA context of one device: its stream, cuBLASLt handle and workspaces, cuDNN's attention state (handle on
// the context's stream, made on first attention call), created on first use (which also registers the device
// allocator with Tensor). Host code only; kernels see none of it (they get an Exec).
// No CUDA header here, so the Tensor-level code can include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "ops/cuda/cuda_ops.h"

typedef struct CUmemPoolHandle_st* cudaMemPool_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace sd3::cuda {

class Context {
  public:
    // The context of device `index` (made current). Asserts that the device exists: check available() first.
    static Context& get(int index);

    int index() const { return index_; }
    int sm() const { return sm_; }  // compute capability as 10 * major + minor, e.g. 90
    const std::string& name() const { return name_; }
    size_t total_memory() const { return total_memory_; }
    cudaStream_t stream() const { return stream_; }

    // Launch arguments with at least `scratch_bytes` of scratch (grown on demand; the Tensor-level ops may
    // allocate, the launchers never do).
    Exec exec(size_t scratch_bytes = 0);
    void synchronize();
    // The stream-ordered pool the device's tensors come from, plus the memory CUDA graphs allocate as they run
    // (their own pool): bytes in use now, the most in use since the last reset_peak_memory() (the pool's own peak,
    // or the most it held at a graph launch plus the graphs' peak, whichever is larger; tensors allocated while
    // a graph runs and freed before the next launch are not seen there), reserved; free/total as the driver
    // reports them.
    MemoryStats memory_stats();
    void reset_peak_memory();
    // Frees the scratch (stream-ordered; the next exec() that asks for scratch allocates it again), then waits for
    // the stream and gives back the memory graphs hold between launches.
    void release_scratch();
    // Whether attention backwards on this device use cuDNN's deterministic algorithm (the default) or its faster
    // one that sums dQ with atomics (Exec::deterministic_attention); every later exec() carries the choice.
    void set_deterministic_attention(bool on) { deterministic_attention_ = on; }
    bool deterministic_attention() const { return deterministic_attention_; }
    // Convolutions whose input and output together pass this many bytes run on im2col with its capped scratch
    // instead of cuDNN on channels-last copies of both (faster, but the copies cost memory: ops::conv2d).
    void set_conv_copy_limit(size_t bytes) { conv_copy_limit_ = bytes; }
    size_t conv_copy_limit() const { return conv_copy_limit_; }

    // CUDA graphs of the stream's work: begin_capture() starts recording (this thread's work on the stream is
    // recorded, not run); end_capture() returns the instantiated graph, or null when the recording failed (a call
    // that cannot be captured, such as a synchronization: the recorded work is dropped, nothing ran).
    // launch_graph() queues a graph on the stream; destroy_graph() frees one and the memory graphs had cached.
    void begin_capture();
    cudaGraphExec_t end_capture();
    void launch_graph(cudaGraphExec_t graph);
    void destroy_graph(cudaGraphExec_t graph);

    // Copies host memory to device memory in stream order and returns without waiting for the device: the bytes
    // go through a pinned staging buffer, which is reused once the device has copied out of it. Any thread.
    void upload_async(void* dst, const void* src, size_t bytes);
    // The device-to-host copy of `bytes` from `src` queued in stream order into a pinned buffer, and the handle to
    // wait for it alone (not for the rest of the stream); finish_download copies the bytes out and frees the
    // buffer for reuse.
    int start_download(const void* src, size_t bytes);
    void finish_download(int handle, void* dst, size_t bytes);

    // Copies on a second stream (ops/device.h SideCopies): side_copy queues dst <- src (host memory, pinned for
    // the copy to overlap) behind the work queued on the context's stream so far and returns a ticket;
    // wait_side_copy(ticket) makes the stream's later work wait for that copy, after which the ticket is spent.
    int side_copy(void* dst, const void* src, size_t bytes);
    void wait_side_copy(int ticket);

    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    ~Context();

  private:
    explicit Context(int index);

    int index_ = 0;
    int sm_ = 0;
    std::string name_;
    size_t total_memory_ = 0;
    cudaStream_t stream_ = nullptr;
    cudaMemPool_t pool_ = nullptr;
    uint64_t graph_launch_base_ = 0;  // the most the pool held at a graph launch since reset_peak_memory()
    cublasLtHandle_t blas_ = nullptr;
    void* blas_workspace_ = nullptr;
    size_t blas_workspace_bytes_ = 0;
    void* scratch_ = nullptr;
    size_t scratch_bytes_ = 0;
    detail::CudnnState* dnn_ = nullptr;  // null: no cuDNN attention on this device
    bool deterministic_attention_ = true;
    size_t conv_copy_limit_ = size_t{512} << 20;  // keeps a 1024² decode's 256-channel layers on im2col

    // Pinned staging buffers of upload_async / start_download, each free again once its event has completed.
    struct Staging {
        void* host = nullptr;
        size_t bytes = 0;
        cudaEvent_t done = nullptr;
        bool held = false;  // being filled by an upload, or a download not yet finished
    };
    int acquire_staging(size_t bytes);  // a free buffer of at least `bytes`, marked held; with staging_mutex_ held
    std::vector<Staging> staging_;
    std::mutex staging_mutex_;

    // side_copy's stream (made on first use), the event marking the main stream's progress that a copy waits
    // for, and one event per ticket (reused once its ticket is spent).
    cudaStream_t copy_stream_ = nullptr;
    cudaEvent_t side_mark_ = nullptr;
    std::vector<cudaEvent_t> side_events_;
    std::vector<bool> side_event_busy_;
};

// Number of usable CUDA devices (0 without a driver or GPU).
int device_count();

}  // namespace sd3::cuda
