// WeightPlacer: one device allocation per model, filled tensor by tensor (each uploaded as stored, converted on
// the device, so no host-side copy of the whole model is made).
#include "nn/placement.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "core/check.h"
#include "ops/device.h"

namespace sd3::nn {

Result<Placement> placement_for(Device device, const std::string& precision) {
    if (device.is_cpu()) {
        if (precision != "auto" && precision != "f32" && precision != "no")
            return make_error(ErrorCode::INVALID_ARGUMENT, "precision '", precision,
                              "' on the CPU: the CPU computes in float32 (use --device cuda for bf16/fp16)");
        return Placement{device, DType::F32};
    }
    if (precision == "auto") return Placement{device, half_dtype(device)};
    if (precision == "bf16") return Placement{device, DType::BF16};
    if (precision == "fp16" || precision == "f16") return Placement{device, DType::F16};
    if (precision == "f32" || precision == "no" || precision == "fp32") return Placement{device, DType::F32};
    return make_error(ErrorCode::INVALID_ARGUMENT, "precision '", precision, "': expected auto, bf16, fp16 or f32");
}

Placement overflow_safe(const Placement& p) {
    return Placement{p.device, p.dtype == DType::F16 ? DType::F32 : p.dtype};
}

Tensor to_placement(const Tensor& t, const Placement& p) {
    if (p.on_cpu()) return host_f32(t);
    if (t.device() == p.device && t.dtype() == p.dtype) return t;
    Tensor out = Tensor::empty(t.shape(), p.dtype, p.device);
    copy_into(out, t);
    return out;
}

void WeightPlacer::add(Tensor& t, bool convert) {
    if (!t.defined()) return;
    for (const Entry& e : entries_)
        if (e.tensor == &t) return;
    entries_.push_back({&t, convert});
}

size_t WeightPlacer::layout(DType compute, std::vector<size_t>& offsets, std::vector<DType>& dtypes) const {
    constexpr size_t kAlign = 256;
    // Tensors that view the same data (e.g. a tied embedding) get one slot.
    std::map<std::tuple<const void*, DType, int64_t>, size_t> slot_of;
    offsets.assign(entries_.size(), 0);
    dtypes.assign(entries_.size(), DType::F32);
    size_t total = 0;
    for (size_t i = 0; i < entries_.size(); ++i) {
        const Tensor& t = *entries_[i].tensor;
        const bool is_float = t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16;
        dtypes[i] = entries_[i].convert && is_float ? compute : t.dtype();
        const auto key = std::make_tuple(static_cast<const void*>(t.raw()), dtypes[i], t.numel());
        if (auto it = slot_of.find(key); it != slot_of.end() && t.is_contiguous()) {
            offsets[i] = it->second;
            continue;
        }
        offsets[i] = total;
        slot_of[key] = total;
        total += (static_cast<size_t>(t.numel()) * dtype_size(dtypes[i]) + kAlign - 1) / kAlign * kAlign;
    }
    return total;
}

size_t WeightPlacer::bytes(DType compute) const {
    std::vector<size_t> offsets;
    std::vector<DType> dtypes;
    return layout(compute, offsets, dtypes);
}

size_t WeightPlacer::tensor_bytes() const {
    size_t n = 0;
    for (const Entry& e : entries_) n += e.tensor->nbytes();
    return n;
}

Result<size_t> WeightPlacer::place(const Placement& p, const char* model_name) {
    const size_t total = bytes(p.dtype);
    if (!p.on_cpu()) synchronize(p.device);  // makes the device's context, which registers its allocator
    std::shared_ptr<Storage> storage = Storage::allocate(std::max<size_t>(total, 1), p.device);
    if (storage == nullptr) {
        const MemoryStats m = memory_stats(p.device);
        return make_error(ErrorCode::OUT_OF_MEMORY, "out of memory on ", p.device.str(), " placing the ", model_name,
                          ": its weights need ", total >> 20, " MiB, ", m.free >> 20, " MiB are free; use a smaller "
                          "weight format (--base-dtype / --t5-dtype) or --max-vram");
    }
    fill(storage, p.dtype);
    synchronize(p.device);
    return total;
}

void WeightPlacer::fill(const std::shared_ptr<Storage>& storage, DType compute) { rebind(storage, compute, true); }

void WeightPlacer::bind(const std::shared_ptr<Storage>& storage, DType compute) { rebind(storage, compute, false); }

void WeightPlacer::rebind(const std::shared_ptr<Storage>& storage, DType compute, bool copy) {
    std::vector<size_t> offsets;
    std::vector<DType> dtypes;
    const size_t total = layout(compute, offsets, dtypes);
    SD3_ASSERT(storage->bytes() >= total, "a storage of ", storage->bytes(), " bytes for weights of ", total);
    std::map<size_t, Tensor> placed;  // offset -> view, for shared slots
    for (size_t i = 0; i < entries_.size(); ++i) {
        Tensor& t = *entries_[i].tensor;
        if (auto it = placed.find(offsets[i]); it != placed.end() && it->second.shape() == t.shape()) {
            t = it->second;
            continue;
        }
        Tensor view = Tensor::view_of(storage, offsets[i], t.shape(), dtypes[i]);
        if (copy) copy_into(view, t);
        placed[offsets[i]] = view;
        t = view;
    }
    entries_.clear();
}

}  // namespace sd3::nn
