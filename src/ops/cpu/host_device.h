// SD3_HOST_DEVICE marks the inline functions of the CPU specification that the CUDA kernels call as they are.
#pragma once

#if defined(__CUDACC__)
#define SD3_HOST_DEVICE __host__ __device__
#else
#define SD3_HOST_DEVICE
#endif
