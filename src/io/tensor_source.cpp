// SafetensorsSource and WeightLoader.
#include "io/tensor_source.h"

#include "core/dtype.h"

namespace sd3 {

Result<std::shared_ptr<TensorSource>> SafetensorsSource::open(const std::string& path,
                                                              const std::vector<std::string>& stems) {
    SD3_ASSIGN_OR_RETURN(WeightSet set, WeightSet::open(path, stems));
    const std::string origin = set.files().size() == 1 ? set.files()[0].path() : path;
    return std::shared_ptr<TensorSource>(std::make_shared<SafetensorsSource>(std::move(set), origin));
}

std::optional<TensorMeta> SafetensorsSource::meta(std::string_view name) const {
    const TensorInfo* info = set_.find(name);
    if (info == nullptr) return std::nullopt;
    return TensorMeta{info->dtype, info->shape};
}

Result<Tensor> WeightLoader::take(const std::string& name, const Shape& expected, DType dtype) {
    auto meta = source_->meta(name);
    if (!meta)
        return make_error(ErrorCode::NOT_FOUND, source_->origin(), ": missing tensor \"", name,
                          "\" (the file does not match this model's config, or is not this kind of model)");
    if (meta->shape != expected)
        return make_error(ErrorCode::CORRUPT_FILE, source_->origin(), ": tensor \"", name, "\" has shape ",
                          shape_str(meta->shape), " but the config implies ", shape_str(expected));
    SD3_ASSIGN_OR_RETURN(Tensor t, source_->get(name));
    taken_.insert(name);
    if (t.dtype() == dtype) return t;
    const Tensor src = t.contiguous();
    Tensor out = Tensor::empty(src.shape(), dtype);
    convert_elements_parallel(src.raw(), src.dtype(), out.raw(), dtype, src.numel());  // a weight: bulk work
    return out;
}

Result<Tensor> WeightLoader::take_as_stored(const std::string& name, const Shape& expected) {
    const auto meta = source_->meta(name);
    return take(name, expected, meta ? meta->dtype : DType::F32);
}

Status WeightLoader::finish() const {
    std::vector<std::string> unused;
    for (const std::string& n : source_->names())
        if (!taken_.count(n)) unused.push_back(n);
    if (unused.empty()) return {};
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 20; ++i) list += "\n  " + unused[i];
    if (unused.size() > 20) list += str_cat("\n  ... and ", unused.size() - 20, " more");
    return make_error(ErrorCode::CORRUPT_FILE, source_->origin(), ": ", unused.size(),
                      " tensor(s) that this model's config does not use (wrong config, or a different model):", list);
}

}  // namespace sd3
