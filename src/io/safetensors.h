// safetensors: memory-mapped reading with full validation, atomic writing with __metadata__, and sharded
// checkpoints (`*.safetensors.index.json`). Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data section.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

struct TensorInfo {
    std::string name;
    DType dtype;
    Shape shape;
    size_t begin = 0;  // byte range in the data section
    size_t end = 0;
};

class SafetensorsFile {
  public:
    // Maps and validates the whole header; any violation is a CORRUPT_FILE error naming the file and the fault.
    static Result<SafetensorsFile> open(const std::string& path);

    const std::string& path() const { return path_; }
    // Tensors in the order of their data offsets.
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const TensorInfo* find(std::string_view name) const;
    bool contains(std::string_view name) const { return find(name) != nullptr; }

    // The tensor's bytes as a CPU tensor: a view into the mapping when aligned, else an aligned copy.
    Result<Tensor> get(std::string_view name) const;
    Tensor get(const TensorInfo& info) const;
    size_t file_bytes() const { return file_bytes_; }

  private:
    struct Mapping;
    std::string path_;
    std::shared_ptr<Mapping> mapping_;
    size_t file_bytes_ = 0;
    size_t data_start_ = 0;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t, std::less<>> by_name_;
    std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes CPU tensors (any strides) in the given order. Atomic: writes `path.tmp`, syncs, then renames, so a
// crash never leaves a file that looks whole, and an existing file is replaced only once the new one is complete.
Status write_safetensors(const std::string& path, const NamedTensors& tensors,
                         const std::map<std::string, std::string>& metadata = {});

struct TensorSpec {
    std::string name;
    DType dtype;
    Shape shape;
};
// Produces tensor i of the specs (a CPU tensor of that dtype and shape), or an error that aborts the write.
using TensorFiller = std::function<Result<Tensor>(size_t index)>;

// Writes tensors produced one at a time, so a file larger than memory can be written; atomic like
// write_safetensors (on any error the temporary file is removed and an existing file stays as it was).
Status write_safetensors_streamed(const std::string& path, const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata, const TensorFiller& fill);

// Reads every tensor of a file into memory (copies, so the file may be replaced afterwards).
Result<NamedTensors> read_all_safetensors(const std::string& path);

// One logical set of weights spread over one or more safetensors files.
class WeightSet {
  public:
    // `path` is a .safetensors file, a *.safetensors.index.json, or a folder holding exactly one of
    // `<stem>.safetensors` / `<stem>.safetensors.index.json` for one of `stems`.
    static Result<WeightSet> open(const std::string& path, const std::vector<std::string>& stems = {});

    const std::vector<std::string>& names() const { return names_; }  // sorted
    const TensorInfo* find(std::string_view name) const;
    Result<Tensor> get(std::string_view name) const;
    const std::vector<SafetensorsFile>& files() const { return files_; }
    const std::map<std::string, std::string>& metadata() const;
    size_t total_bytes() const;

  private:
    std::vector<SafetensorsFile> files_;
    std::map<std::string, std::pair<size_t, size_t>, std::less<>> index_;  // name -> (file, tensor)
    std::vector<std::string> names_;
};

}  // namespace sd3
