// Where a model's frozen weights live and in which float dtype it computes (DESIGN.md "Memory": one allocation
// per model, named views into it). The CPU in float32 is the specification every test checks; a CUDA device
// computes in its 16-bit dtype (ops/device.h half_dtype) or in float32. Models take a Placement in their to().
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3::nn {

struct Placement {
    Device device = kCPU;
    DType dtype = DType::F32;  // compute dtype of activations and of float weights
    bool on_cpu() const { return device.is_cpu(); }
};

// The placement a command asks for: "cpu" computes in f32; a CUDA device in `precision` ("bf16", "fp16", "f32";
// "auto": the card's 16-bit dtype, bf16 from sm_80, fp16 on sm_75).
Result<Placement> placement_for(Device device, const std::string& precision);
// `p` with fp16 compute replaced by float32, for models whose activations overflow fp16's range (the SD3 VAE, as
// diffusers' force_upcast; T5-XXL's feed-forward); bf16 and float32 stay.
Placement overflow_safe(const Placement& p);
// `t` (any device, any float dtype) on the placement's device in its compute dtype: itself when it already is,
// a float32 view or copy on the CPU.
Tensor to_placement(const Tensor& t, const Placement& p);

// Gathers a model's weight tensors into one allocation on a device: `convert` tensors (float weights) become
// the placement's dtype, `keep` tensors (quantized data and their float32 scales) keep their stored dtype.
// place() copies each into its 256-byte aligned slot and rebinds the caller's Tensor to the view. Undefined
// tensors are skipped, a tensor added twice is placed once (shared weights stay shared).
class WeightPlacer {
  public:
    void convert(Tensor& t) { add(t, true); }
    void keep(Tensor& t) { add(t, false); }
    // Bytes of the one allocation. An OUT_OF_MEMORY error names the model and what was free.
    Result<size_t> place(const Placement& p, const char* model_name);
    // The bytes place() would allocate for a compute dtype, without placing anything.
    size_t bytes(DType compute) const;
    // The tensors' bytes as they are now (no conversion, no alignment).
    size_t tensor_bytes() const;
    // place()'s two halves on a given storage of at least bytes(compute): fill() copies each tensor into its slot
    // (converting) and rebinds it to the view there; bind() only rebinds, for a storage that holds the same
    // tensors' bytes in this layout already (a streamed block's device copy, nn/streamed_blocks.h).
    void fill(const std::shared_ptr<Storage>& storage, DType compute);
    void bind(const std::shared_ptr<Storage>& storage, DType compute);

  private:
    // Each entry's dtype on the device and offset in the allocation (shared data shares a slot); returns the total.
    size_t layout(DType compute, std::vector<size_t>& offsets, std::vector<DType>& dtypes) const;
    void rebind(const std::shared_ptr<Storage>& storage, DType compute, bool copy);
    struct Entry {
        Tensor* tensor;
        bool convert;
    };
    void add(Tensor& t, bool convert);
    std::vector<Entry> entries_;
};

}  // namespace sd3::nn
