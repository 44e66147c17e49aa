// Device dispatch of the Tensor-level ops (ops.h, mmdit_ops.h, the VAE ops, quant_linear.h): a call whose first
// tensor is on a CUDA device goes to the same-named function of ops/cuda (tensor_ops.h, tensor_ops_model.h; f32,
// bf16 or f16 there), everything else continues to the CPU code below the macro. Included by ops/*.cpp only.
#pragma once

#include "core/tensor.h"

#ifdef SD3_HAVE_CUDA
#include "ops/cuda/tensor_ops.h"
#include "ops/cuda/tensor_ops_model.h"
#include "ops/cuda/tensor_ops_train.h"
#define SD3_ON_CUDA(t, call) \
    if ((t).defined() && (t).device().type == ::sd3::DeviceType::CUDA) return ::sd3::cuda::tensor_ops::call
// The same for ops that take a Device instead of a tensor (allocation).
#define SD3_ON_CUDA_DEVICE(device, call) \
    if ((device).type == ::sd3::DeviceType::CUDA) return ::sd3::cuda::tensor_ops::call
// The same where the tensor_ops predicate `fits` holds too; otherwise the code below runs, on either device (for
// a CUDA kernel that takes only some layouts, where the generic code composes ops that dispatch themselves).
#define SD3_ON_CUDA_IF(t, fits, call)                                                                     \
    if ((t).defined() && (t).device().type == ::sd3::DeviceType::CUDA && ::sd3::cuda::tensor_ops::fits) \
    return ::sd3::cuda::tensor_ops::call
#else
#define SD3_ON_CUDA(t, call)
#define SD3_ON_CUDA_DEVICE(device, call)
#define SD3_ON_CUDA_IF(t, fits, call)
#endif
