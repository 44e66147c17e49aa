// The CUDA context of one device: its stream, cuBLASLt handle and workspaces, cuDNN's attention state (handle on
// the context's stream, made on first attention call), created on first use (which also registers the device
// allocator with Tensor). Host code only; kernels see none of it (they get an Exec).
// No CUDA header here, so the Tensor-level code can include it.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor.h"
#include "ops/cuda/cuda_ops.h"

typedef struct CUmemPoolHandle_st* cudaMemPool_t;

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
    // The stream-ordered pool the device's tensors come from: bytes in use now, the most in use since the last
    // reset_peak_memory(), reserved by the pool; free/total as the driver reports them.
    MemoryStats memory_stats();
    void reset_peak_memory();
    // Frees the scratch (stream-ordered); the next exec() that asks for scratch allocates it again.
    void release_scratch();

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
    cublasLtHandle_t blas_ = nullptr;
    void* blas_workspace_ = nullptr;
    size_t blas_workspace_bytes_ = 0;
    void* scratch_ = nullptr;
    size_t scratch_bytes_ = 0;
    detail::CudnnState* dnn_ = nullptr;  // null: no cuDNN attention on this device
};

// Number of usable CUDA devices (0 without a driver or GPU).
int device_count();

}  // namespace sd3::cuda
