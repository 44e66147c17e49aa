// MemoryPlan and Arena.
#include "core/arena.h"

#include <algorithm>
#include <cstdio>

#include "core/check.h"

namespace sd3 {

std::string format_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
    return buf;
}

size_t MemoryPlan::add(const std::string& name, const Shape& shape, DType dtype) {
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
    const size_t offset = (total_ + kAlignment - 1) / kAlignment * kAlignment;
    entries_.push_back({name, shape, dtype, offset, bytes});
    total_ = offset + bytes;
    return entries_.size() - 1;
}

std::string MemoryPlan::describe(const std::string& title, int largest) const {
    std::vector<const Entry*> sorted;
    for (const Entry& e : entries_) sorted.push_back(&e);
    std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) { return a->bytes > b->bytes; });
    std::string s = str_cat(title, ": ", entries_.size(), " buffers, ", format_bytes(static_cast<double>(total_)));
    if (!sorted.empty()) {
        s += " (largest:";
        for (int i = 0; i < largest && i < static_cast<int>(sorted.size()); ++i)
            s += str_cat(i ? ", " : " ", sorted[i]->name, " ", format_bytes(static_cast<double>(sorted[i]->bytes)));
        s += ")";
    }
    return s;
}

Result<Arena> Arena::allocate(const MemoryPlan& plan, Device device) {
    Arena arena;
    arena.plan_ = plan;
    arena.storage_ = Storage::allocate(plan.total_bytes(), device);
    if (!arena.storage_)
        return make_error(ErrorCode::OUT_OF_MEMORY, "cannot allocate ", format_bytes(static_cast<double>(plan.total_bytes())),
                          " on ", device.str(), " for the memory plan");
    return arena;
}

Tensor Arena::tensor(size_t index) const {
    SD3_ASSERT(index < plan_.entries().size(), "arena buffer ", index, " of ", plan_.entries().size());
    const MemoryPlan::Entry& e = plan_.entries()[index];
    return Tensor::view_of(storage_, e.offset, e.shape, e.dtype);
}

Tensor Arena::tensor(const std::string& name) const {
    for (size_t i = 0; i < plan_.entries().size(); ++i)
        if (plan_.entries()[i].name == name) return tensor(i);
    SD3_ASSERT(false, "no arena buffer named ", name);
    return {};
}

}  // namespace sd3
