// TensorSource: a set of named tensors in the canonical (diffusers) naming, wherever they are stored: a folder's
// safetensors files, shards, or a single-file checkpoint seen through the name map (io/name_map). Models load
// only through a WeightLoader over a TensorSource, which checks shapes and reports unused tensors.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace sd3 {

struct TensorMeta {
    DType dtype;
    Shape shape;
};

class TensorSource {
  public:
    virtual ~TensorSource() = default;
    virtual std::vector<std::string> names() const = 0;  // sorted
    virtual std::optional<TensorMeta> meta(std::string_view name) const = 0;
    // The tensor as stored (CPU, stored dtype); may be a view into a memory map.
    virtual Result<Tensor> get(std::string_view name) const = 0;
    // Where the tensors come from, for messages ("model/transformer/diffusion_pytorch_model.safetensors").
    virtual std::string origin() const = 0;
};

// A WeightSet (one file or shards) as a TensorSource, names unchanged.
class SafetensorsSource : public TensorSource {
  public:
    SafetensorsSource(WeightSet set, std::string origin) : set_(std::move(set)), origin_(std::move(origin)) {}
    static Result<std::shared_ptr<TensorSource>> open(const std::string& path, const std::vector<std::string>& stems = {});

    std::vector<std::string> names() const override { return set_.names(); }
    std::optional<TensorMeta> meta(std::string_view name) const override;
    Result<Tensor> get(std::string_view name) const override { return set_.get(name); }
    std::string origin() const override { return origin_; }
    const WeightSet& weight_set() const { return set_; }

  private:
    WeightSet set_;
    std::string origin_;
};

// Takes tensors out of a source by name with the expected shape, converting to the requested dtype, and remembers
// which were taken so that `finish()` can report tensors the model did not use (an error, never a warning).
class WeightLoader {
  public:
    explicit WeightLoader(std::shared_ptr<const TensorSource> source) : source_(std::move(source)) {}

    Result<Tensor> take(const std::string& name, const Shape& expected, DType dtype = DType::F32);
    // The same without a conversion: the tensor as the file stores it (for weights that go to a device, which
    // converts them there).
    Result<Tensor> take_as_stored(const std::string& name, const Shape& expected);
    bool has(const std::string& name) const { return source_->meta(name).has_value(); }
    // Marks a tensor as deliberately unused (e.g. a buffer the reference recomputes).
    void ignore(const std::string& name) { taken_.insert(name); }
    // Fails listing every tensor of the source that no take() asked for.
    Status finish() const;
    const TensorSource& source() const { return *source_; }

  private:
    std::shared_ptr<const TensorSource> source_;
    std::set<std::string> taken_;
};

}  // namespace sd3
