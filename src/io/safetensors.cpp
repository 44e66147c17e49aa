// safetensors reading (mmap + validation), atomic writing, and sharded index files.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/check.h"

namespace sd3 {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The safetensors reference implementation refuses headers above 100 MB; so do we, before allocating anything.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct SafetensorsFile::Mapping {
    void* addr = nullptr;
    size_t bytes = 0;
    ~Mapping() {
        if (addr != nullptr && addr != MAP_FAILED) munmap(addr, bytes);
    }
};

namespace {

Status corrupt(const std::string& path, const std::string& what) {
    return Status(ErrorCode::CORRUPT_FILE,
                  str_cat(path, ": not a valid safetensors file: ", what,
                          " (the file may be truncated or damaged; download or export it again)"));
}

// Parses the header JSON, rejecting duplicate tensor names (the JSON library would keep only the last).
Result<json> parse_header(const std::string& path, std::string_view text) {
    std::set<std::string> seen;
    std::string duplicate;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
        if (depth == 1 && event == json::parse_event_t::key) {
            const std::string key = parsed.get<std::string>();
            if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
        }
        return true;
    };
    json header = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
    if (header.is_discarded()) return corrupt(path, "the header is not valid JSON");
    if (!duplicate.empty()) return corrupt(path, str_cat("tensor name \"", duplicate, "\" appears twice in the header"));
    if (!header.is_object()) return corrupt(path, "the header is not a JSON object");
    return header;
}

Result<TensorInfo> parse_entry(const std::string& path, const std::string& name, const json& entry, size_t data_bytes) {
    const std::string where = str_cat("tensor \"", name, "\": ");
    if (!entry.is_object()) return corrupt(path, where + "entry is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) return corrupt(path, where + "missing dtype");
    if (!entry.contains("shape") || !entry["shape"].is_array()) return corrupt(path, where + "missing shape");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
        return corrupt(path, where + "data_offsets must be [begin, end]");
    TensorInfo info;
    info.name = name;
    const std::string dtype_text = entry["dtype"].get<std::string>();
    auto dt = dtype_from_safetensors_name(dtype_text);
    if (!dt) return corrupt(path, where + str_cat("unknown dtype \"", dtype_text, "\""));
    info.dtype = *dt;
    uint64_t numel = 1;
    for (const json& d : entry["shape"]) {
        if (!d.is_number_unsigned()) return corrupt(path, where + "shape holds a value that is not a non-negative integer");
        const uint64_t v = d.get<uint64_t>();
        if (v != 0 && numel > (uint64_t{1} << 62) / v) return corrupt(path, where + "shape is impossibly large");
        numel *= v;
        info.shape.push_back(static_cast<int64_t>(v));
    }
    for (const json& o : entry["data_offsets"])
        if (!o.is_number_unsigned()) return corrupt(path, where + "data_offsets must be non-negative integers");
    const uint64_t begin = entry["data_offsets"][0].get<uint64_t>();
    const uint64_t end = entry["data_offsets"][1].get<uint64_t>();
    if (begin > end) return corrupt(path, where + str_cat("data_offsets [", begin, ", ", end, "] end before they begin"));
    if (end > data_bytes)
        return corrupt(path, where + str_cat("data_offsets end at byte ", end, " but the data section holds only ",
                                             data_bytes, " bytes"));
    const uint64_t expect = numel * dtype_size(info.dtype);
    if (end - begin != expect)
        return corrupt(path, where + str_cat("shape ", shape_str(info.shape), " of ", dtype_text, " needs ", expect,
                                             " bytes but data_offsets span ", end - begin));
    info.begin = begin;
    info.end = end;
    return info;
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const ErrorCode code = errno == ENOENT ? ErrorCode::NOT_FOUND : ErrorCode::IO_ERROR;
        return Status(code, str_cat(path, ": cannot open: ", std::strerror(errno)));
    }
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return Status(ErrorCode::IO_ERROR, str_cat(path, ": not a regular file"));
    }
    SafetensorsFile file;
    file.path_ = path;
    file.file_bytes_ = static_cast<size_t>(st.st_size);
    file.mapping_ = std::make_shared<Mapping>();
    if (file.file_bytes_ > 0) {
        file.mapping_->addr = mmap(nullptr, file.file_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
        file.mapping_->bytes = file.file_bytes_;
    }
    ::close(fd);
    if (file.mapping_->addr == MAP_FAILED)
        return Status(ErrorCode::IO_ERROR, str_cat(path, ": cannot map the file: ", std::strerror(errno)));

    if (file.file_bytes_ < 8) return corrupt(path, str_cat("the file has ", file.file_bytes_, " bytes, fewer than the 8-byte header length"));
    const auto* bytes = static_cast<const unsigned char*>(file.mapping_->addr);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len > kMaxHeaderBytes)
        return corrupt(path, str_cat("header length ", header_len, " exceeds the format's limit of ", kMaxHeaderBytes, " bytes"));
    if (header_len > file.file_bytes_ - 8)
        return corrupt(path, str_cat("header length ", header_len, " runs past the end of the ", file.file_bytes_, "-byte file"));
    file.data_start_ = 8 + header_len;
    const size_t data_bytes = file.file_bytes_ - file.data_start_;

    SD3_ASSIGN_OR_RETURN(json header, parse_header(path, std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len)));
    for (auto it = header.begin(); it != header.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it.value().is_object()) return corrupt(path, "__metadata__ is not an object");
            for (auto m = it.value().begin(); m != it.value().end(); ++m) {
                if (!m.value().is_string()) return corrupt(path, str_cat("__metadata__ value \"", m.key(), "\" is not a string"));
                file.metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        SD3_ASSIGN_OR_RETURN(TensorInfo info, parse_entry(path, it.key(), it.value(), data_bytes));
        file.tensors_.push_back(std::move(info));
    }
    std::sort(file.tensors_.begin(), file.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (size_t i = 1; i < file.tensors_.size(); ++i) {
        const TensorInfo& prev = file.tensors_[i - 1];
        const TensorInfo& cur = file.tensors_[i];
        if (cur.begin < prev.end)
            return corrupt(path, str_cat("tensors \"", prev.name, "\" and \"", cur.name, "\" overlap in the data section"));
    }
    for (size_t i = 0; i < file.tensors_.size(); ++i) file.by_name_[file.tensors_[i].name] = i;
    return file;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

Result<Tensor> SafetensorsFile::get(std::string_view name) const {
    const TensorInfo* info = find(name);
    if (info == nullptr) return Status(ErrorCode::NOT_FOUND, str_cat(path_, ": no tensor named \"", name, "\""));
    return get(*info);
}

Tensor SafetensorsFile::get(const TensorInfo& info) const {
    char* base = static_cast<char*>(mapping_->addr) + data_start_ + info.begin;
    const size_t align = dtype_size(info.dtype);
    if (reinterpret_cast<uintptr_t>(base) % align == 0)
        return Tensor::borrow(base, info.shape, info.dtype, kCPU, mapping_);
    Tensor copy = Tensor::empty(info.shape, info.dtype);
    std::memcpy(copy.raw(), base, info.end - info.begin);
    return copy;
}

// --- writing ------------------------------------------------------------------------------------------------

Status write_safetensors_streamed(const std::string& path, const std::vector<TensorSpec>& specs,
                                  const std::map<std::string, std::string>& metadata, const TensorFiller& fill) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string> names;
    size_t offset = 0;
    for (const TensorSpec& spec : specs) {
        if (!names.insert(spec.name).second)
            return Status(ErrorCode::INVALID_ARGUMENT, str_cat(path, ": tensor name \"", spec.name, "\" given twice"));
        const size_t bytes = static_cast<size_t>(shape_numel(spec.shape)) * dtype_size(spec.dtype);
        header[spec.name] = {{"dtype", std::string(dtype_safetensors_name(spec.dtype))},
                             {"shape", spec.shape},
                             {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned

    const std::string tmp = path + ".tmp";
    auto fail = [&](Status s) {
        std::error_code ignored;
        fs::remove(tmp, ignored);
        return s;
    };
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) return Status(ErrorCode::IO_ERROR, str_cat(tmp, ": cannot create: ", std::strerror(errno)));
        unsigned char len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((uint64_t{text.size()} >> (8 * i)) & 0xff);
        out.write(reinterpret_cast<const char*>(len), 8);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        for (size_t i = 0; i < specs.size() && out; ++i) {
            Result<Tensor> t = fill(i);
            if (!t.ok()) {
                out.close();
                return fail(t.status());
            }
            const Tensor c = t->contiguous();
            SD3_ASSERT(c.device().is_cpu() && c.dtype() == specs[i].dtype && c.shape() == specs[i].shape,
                       "tensor ", specs[i].name, " filled as ", c.describe());
            out.write(static_cast<const char*>(c.raw()), static_cast<std::streamsize>(c.nbytes()));
        }
        out.flush();
        if (!out) {
            out.close();
            return fail(Status(ErrorCode::IO_ERROR, str_cat(path, ": write failed (is the disk full?); nothing was replaced")));
        }
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        const int rc = ::fsync(fd);
        ::close(fd);
        if (rc != 0) return fail(Status(ErrorCode::IO_ERROR, str_cat(path, ": could not sync to disk: ", std::strerror(errno))));
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) return fail(Status(ErrorCode::IO_ERROR, str_cat(path, ": cannot move the finished file into place: ", ec.message())));
    return {};
}

Status write_safetensors(const std::string& path, const NamedTensors& tensors,
                         const std::map<std::string, std::string>& metadata) {
    std::vector<TensorSpec> specs;
    for (const auto& [name, t] : tensors) {
        SD3_ASSERT(t.device().is_cpu(), "write_safetensors takes CPU tensors; ", name, " is on ", t.device().str());
        specs.push_back({name, t.dtype(), t.shape()});
    }
    return write_safetensors_streamed(path, specs, metadata, [&](size_t i) -> Result<Tensor> { return tensors[i].second; });
}

Result<NamedTensors> read_all_safetensors(const std::string& path) {
    SD3_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
    NamedTensors out;
    for (const TensorInfo& info : file.tensors()) out.emplace_back(info.name, file.get(info).clone());
    return out;
}

// --- sharded sets -------------------------------------------------------------------------------------------

Result<WeightSet> WeightSet::open(const std::string& path, const std::vector<std::string>& stems) {
    std::vector<std::string> shard_paths;
    std::string chosen = path;
    if (fs::is_directory(path)) {
        chosen.clear();
        for (const std::string& stem : stems) {
            for (const std::string& name : {stem + ".safetensors", stem + ".safetensors.index.json"}) {
                if (fs::exists(fs::path(path) / name)) {
                    if (!chosen.empty())
                        return Status(ErrorCode::INVALID_ARGUMENT,
                                      str_cat(path, ": holds both ", fs::path(chosen).filename().string(), " and ", name,
                                              "; keep one"));
                    chosen = (fs::path(path) / name).string();
                }
            }
        }
        if (chosen.empty()) {
            std::string expected;
            for (const std::string& stem : stems) expected += (expected.empty() ? "" : " or ") + stem + ".safetensors";
            return Status(ErrorCode::NOT_FOUND, str_cat(path, ": no weights found (expected ", expected, ")"));
        }
    }
    if (chosen.ends_with(".index.json")) {
        std::ifstream in(chosen);
        if (!in) return Status(ErrorCode::NOT_FOUND, str_cat(chosen, ": cannot open"));
        json index = json::parse(in, nullptr, false);
        if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
            return Status(ErrorCode::CORRUPT_FILE, str_cat(chosen, ": not a valid shard index (needs a \"weight_map\" object)"));
        std::set<std::string> shards;
        for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
            if (!it.value().is_string())
                return Status(ErrorCode::CORRUPT_FILE, str_cat(chosen, ": weight_map entry \"", it.key(), "\" is not a file name"));
            shards.insert(it.value().get<std::string>());
        }
        for (const std::string& s : shards) shard_paths.push_back((fs::path(chosen).parent_path() / s).string());
        WeightSet set;
        for (const std::string& s : shard_paths) {
            SD3_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(s));
            set.files_.push_back(std::move(f));
        }
        for (size_t fi = 0; fi < set.files_.size(); ++fi)
            for (size_t ti = 0; ti < set.files_[fi].tensors().size(); ++ti) {
                const std::string& name = set.files_[fi].tensors()[ti].name;
                if (!set.index_.emplace(name, std::make_pair(fi, ti)).second)
                    return Status(ErrorCode::CORRUPT_FILE, str_cat(chosen, ": tensor \"", name, "\" is in two shards"));
            }
        for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
            auto found = set.index_.find(it.key());
            const std::string shard = (fs::path(chosen).parent_path() / it.value().get<std::string>()).string();
            if (found == set.index_.end() || set.files_[found->second.first].path() != shard)
                return Status(ErrorCode::CORRUPT_FILE,
                              str_cat(chosen, ": lists \"", it.key(), "\" in ", it.value().get<std::string>(), " but that shard does not hold it"));
        }
        if (set.index_.size() != index["weight_map"].size())
            return Status(ErrorCode::CORRUPT_FILE, str_cat(chosen, ": the shards hold tensors the index does not list"));
        for (const auto& [name, loc] : set.index_) set.names_.push_back(name);
        return set;
    }
    WeightSet set;
    SD3_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(chosen));
    set.files_.push_back(std::move(f));
    for (size_t ti = 0; ti < set.files_[0].tensors().size(); ++ti)
        set.index_.emplace(set.files_[0].tensors()[ti].name, std::make_pair(size_t{0}, ti));
    for (const auto& [name, loc] : set.index_) set.names_.push_back(name);
    return set;
}

const TensorInfo* WeightSet::find(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) return nullptr;
    return &files_[it->second.first].tensors()[it->second.second];
}

Result<Tensor> WeightSet::get(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
        const std::string where = files_.size() == 1 ? files_[0].path() : "the weight shards";
        return Status(ErrorCode::NOT_FOUND, str_cat(where, ": no tensor named \"", name, "\""));
    }
    const SafetensorsFile& f = files_[it->second.first];
    return f.get(f.tensors()[it->second.second]);
}

const std::map<std::string, std::string>& WeightSet::metadata() const {
    static const std::map<std::string, std::string> kEmpty;
    return files_.empty() ? kEmpty : files_[0].metadata();
}

size_t WeightSet::total_bytes() const {
    size_t n = 0;
    for (const auto& f : files_)
        for (const auto& t : f.tensors()) n += t.end - t.begin;
    return n;
}

}  // namespace sd3
