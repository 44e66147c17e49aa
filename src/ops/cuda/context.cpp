// CUDA contexts (one per device, made on first use), the device allocator behind Tensor, and the
// host<->device copies of ops/device.h.
#include "ops/cuda/context.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <memory>
#include <mutex>

#include "core/check.h"
#include "core/tensor.h"

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

void* device_alloc(size_t bytes, int index) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(index);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    cudaSetDevice(prev);
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the out-of-memory error so later launches do not report it
        return nullptr;
    }
    return p;
}

void device_free(void* p, int index) {
    int prev = 0;
    cudaGetDevice(&prev);
    cudaSetDevice(index);
    cudaFree(p);
    cudaSetDevice(prev);
}

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
    const cublasStatus_t st = cublasLtCreate(&blas_);
    SD3_ASSERT(st == CUBLAS_STATUS_SUCCESS, "cublasLtCreate failed with status ", static_cast<int>(st));
    SD3_RT_CHECK(cudaMalloc(&blas_workspace_, kBlasWorkspaceBytes));
    blas_workspace_bytes_ = kBlasWorkspaceBytes;
    register_device_allocator(DeviceType::CUDA, DeviceAllocator{device_alloc, device_free});
}

Context::~Context() {
    // Process exit: the driver may already be shutting down, so errors are ignored.
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (blas_workspace_ != nullptr) cudaFree(blas_workspace_);
    if (blas_ != nullptr) cublasLtDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Exec Context::exec(size_t scratch_bytes) {
    SD3_RT_CHECK(cudaSetDevice(index_));
    if (scratch_bytes > scratch_bytes_) {
        if (scratch_ != nullptr) SD3_RT_CHECK(cudaFree(scratch_));  // waits for kernels still using it
        scratch_ = nullptr;
        const size_t bytes = scratch_bytes + scratch_bytes / 4;  // headroom: fewer regrowths
        SD3_RT_CHECK(cudaMalloc(&scratch_, bytes));
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
    return ex;
}

void Context::synchronize() { SD3_RT_CHECK(cudaStreamSynchronize(stream_)); }

}  // namespace sd3::cuda
