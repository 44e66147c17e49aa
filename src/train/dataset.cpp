// Listing, captions and preprocessing of the training images; see dataset.h.
#include "train/dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/log.h"

namespace sd3::train {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool is_image_name(const fs::path& p) {
    const std::string e = lower(p.extension().string());
    return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".webp";
}

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

Result<std::string> read_text(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f) return make_error(ErrorCode::IO_ERROR, "cannot read ", p.string());
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// RFC 4180 CSV: quoted fields with "" escapes, commas and newlines inside quotes.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
    std::vector<std::vector<std::string>> rows(1);
    std::string field;
    bool quoted = false, any = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (quoted) {
            if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
            else if (c == '"') quoted = false;
            else field += c;
        } else if (c == '"') {
            quoted = true;
            any = true;
        } else if (c == ',') {
            rows.back().push_back(field);
            field.clear();
        } else if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
            rows.back().push_back(field);
            field.clear();
            rows.emplace_back();
        } else {
            field += c;
            any = true;
        }
    }
    if (!field.empty() || !rows.back().empty()) rows.back().push_back(field);
    (void)any;
    while (!rows.empty() && (rows.back().empty() || (rows.back().size() == 1 && rows.back()[0].empty())))
        rows.pop_back();
    return rows;
}

// file name -> caption from metadata.jsonl or metadata.csv (Hugging Face imagefolder convention).
Result<std::map<std::string, std::string>> read_metadata(const fs::path& dir, const DatasetOptions& o, bool* found) {
    std::map<std::string, std::string> out;
    *found = false;
    const std::vector<std::string> name_cols = {o.image_column, "file_name"};
    std::vector<std::string> cap_cols = o.caption_column.empty() ? std::vector<std::string>{"caption", "text"}
                                                                   : std::vector<std::string>{o.caption_column};
    const fs::path jsonl = dir / "metadata.jsonl", csv = dir / "metadata.csv";
    if (fs::exists(jsonl)) {
        *found = true;
        SD3_ASSIGN_OR_RETURN(std::string text, read_text(jsonl));
        std::istringstream is(text);
        std::string line;
        int n = 0;
        while (std::getline(is, line)) {
            ++n;
            if (trim(line).empty()) continue;
            nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded() || !j.is_object())
                return make_error(ErrorCode::CORRUPT_FILE, jsonl.string(), " line ", n, " is not a JSON object");
            std::string name, cap;
            for (const auto& c : name_cols)
                if (j.contains(c) && j[c].is_string()) { name = j[c]; break; }
            if (name.empty())
                return make_error(ErrorCode::INVALID_ARGUMENT, jsonl.string(), " line ", n, " has no '", o.image_column,
                                  "' or 'file_name' column (set --image_column)");
            bool have_cap = false;
            for (const auto& c : cap_cols)
                if (j.contains(c) && j[c].is_string()) { cap = j[c]; have_cap = true; break; }
            if (!have_cap && !o.caption_column.empty())
                return make_error(ErrorCode::INVALID_ARGUMENT, jsonl.string(), " line ", n, " has no column '",
                                  o.caption_column, "' (check --caption_column)");
            out[fs::path(name).filename().string()] = cap;
        }
    } else if (fs::exists(csv)) {
        *found = true;
        SD3_ASSIGN_OR_RETURN(std::string text, read_text(csv));
        const auto rows = parse_csv(text);
        if (rows.empty()) return out;
        int name_i = -1, cap_i = -1;
        for (int i = 0; i < static_cast<int>(rows[0].size()); ++i) {
            const std::string h = trim(rows[0][i]);
            if (name_i < 0 && std::find(name_cols.begin(), name_cols.end(), h) != name_cols.end()) name_i = i;
            for (const auto& c : cap_cols)
                if (cap_i < 0 && h == c) cap_i = i;
        }
        if (name_i < 0)
            return make_error(ErrorCode::INVALID_ARGUMENT, csv.string(), " has no '", o.image_column,
                              "' or 'file_name' column (set --image_column)");
        if (cap_i < 0 && !o.caption_column.empty())
            return make_error(ErrorCode::INVALID_ARGUMENT, csv.string(), " has no column '", o.caption_column,
                              "' (check --caption_column)");
        for (size_t r = 1; r < rows.size(); ++r) {
            if (name_i >= static_cast<int>(rows[r].size())) continue;
            out[fs::path(rows[r][name_i]).filename().string()] =
                cap_i >= 0 && cap_i < static_cast<int>(rows[r].size()) ? rows[r][cap_i] : "";
        }
    }
    return out;
}

std::vector<fs::path> image_files(const fs::path& dir) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file() && is_image_name(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace

Result<std::vector<ImageEntry>> list_instance_images(const DatasetOptions& o) {
    if (o.instance_data_dir.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "no --instance_data_dir given: name the folder of training images");
    const fs::path dir(o.instance_data_dir);
    if (!fs::is_directory(dir))
        return make_error(ErrorCode::NOT_FOUND, "--instance_data_dir ", dir.string(), " is not a folder");
    bool has_meta = false;
    SD3_ASSIGN_OR_RETURN(auto meta, read_metadata(dir, o, &has_meta));
    std::vector<ImageEntry> out;
    for (const fs::path& p : image_files(dir)) {
        std::string caption;
        fs::path txt = p;
        txt.replace_extension(".txt");
        if (fs::exists(txt)) {
            SD3_ASSIGN_OR_RETURN(std::string t, read_text(txt));
            caption = trim(t);
        } else if (has_meta) {
            auto it = meta.find(p.filename().string());
            if (it != meta.end()) caption = trim(it->second);
        }
        if (caption.empty()) caption = o.instance_prompt;
        if (caption.empty())
            return make_error(ErrorCode::INVALID_ARGUMENT, p.string(),
                              " has no caption (no .txt beside it, no metadata entry) and no --instance_prompt is set");
        out.push_back({p.string(), caption});
    }
    if (out.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "no images (png, jpg, jpeg, webp) in ", dir.string());
    return out;
}

Result<std::vector<ImageEntry>> list_class_images(const DatasetOptions& o) {
    std::vector<ImageEntry> out;
    if (!o.with_prior_preservation) return out;
    const fs::path dir(o.class_data_dir);
    if (!fs::exists(dir)) return out;
    if (!fs::is_directory(dir))
        return make_error(ErrorCode::INVALID_ARGUMENT, "--class_data_dir ", dir.string(), " is not a folder");
    for (const fs::path& p : image_files(dir)) out.push_back({p.string(), o.class_prompt});
    return out;
}

PreparedImage prepare_image(const RgbImage& img, const ImageEntry& entry, const DatasetOptions& o, bool is_class,
                            TrainRng* crop_rng) {
    int w, h;
    resized_size(img.width, img.height, o.resolution, &w, &h);
    const RgbImage r = resize_bilinear(img, w, h);
    int top, left;
    if (o.center_crop || !crop_rng) {
        center_crop_offsets(r.width, r.height, o.resolution, &top, &left);
    } else {  // RandomCrop.get_params: i ~ U{0..h-s}, j ~ U{0..w-s}
        top = static_cast<int>(crop_rng->uniform_int(0, r.height - o.resolution));
        left = static_cast<int>(crop_rng->uniform_int(0, r.width - o.resolution));
    }
    const RgbImage c = crop(r, top, left, o.resolution);
    PreparedImage p;
    p.entry = entry;
    p.is_class = is_class;
    p.pixels = to_normalized_tensor(c);
    if (o.random_flip && !is_class) p.pixels_flipped = to_normalized_tensor(flip_horizontal(c));
    return p;
}

Result<PreparedDataset> prepare_dataset(const DatasetOptions& o, const std::vector<ImageEntry>& instance,
                                        const std::vector<ImageEntry>& class_images, const ImageDecoder& decode,
                                        uint64_t crop_seed) {
    PreparedDataset out;
    TrainRng crop_rng = TrainRng::for_purpose(crop_seed, "crop");
    auto run = [&](const std::vector<ImageEntry>& list, bool is_class, std::vector<PreparedImage>& dst) -> Status {
        for (const ImageEntry& e : list) {
            Result<RgbImage> img = decode(e.path);
            std::string problem;
            if (!img.ok()) problem = img.status().message();
            else if (std::min(img->width, img->height) < o.min_image_size)
                problem = str_cat("too small (", img->width, "x", img->height, ", the shorter side must be at least ",
                                  o.min_image_size, " pixels)");
            if (!problem.empty()) {
                if (o.strict)
                    return make_error(ErrorCode::INVALID_ARGUMENT, e.path, ": ", problem,
                                      " (remove the file, or run without --strict to skip it)");
                log_warn("skipping ", e.path, ": ", problem);
                out.skipped.push_back(str_cat(e.path, ": ", problem));
                continue;
            }
            dst.push_back(prepare_image(*img, e, o, is_class, &crop_rng));
        }
        return {};
    };
    SD3_TRY(run(instance, false, out.instance));
    SD3_TRY(run(class_images, true, out.class_images));
    if (out.instance.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "none of the ", instance.size(),
                          " training images could be used (see the messages above)");
    if (o.with_prior_preservation && out.class_images.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "prior preservation needs class images but none are usable in ",
                          o.class_data_dir);
    return out;
}

int64_t dataset_length(const DatasetOptions& o, int64_t num_instance, int64_t num_class) {
    const int64_t inst = num_instance * std::max(1, o.repeats);
    return o.with_prior_preservation ? std::max(inst, num_class) : inst;
}

SampleRef sample_at(const DatasetOptions& o, int64_t index, int64_t num_instance, int64_t num_class) {
    SampleRef s;
    const int64_t inst = num_instance * std::max(1, o.repeats);
    s.instance = static_cast<int>((index % inst) / std::max(1, o.repeats));
    if (o.with_prior_preservation && num_class > 0) s.class_image = static_cast<int>(index % num_class);
    return s;
}

std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t length) {
    std::vector<int64_t> p(length);
    for (int64_t i = 0; i < length; ++i) p[i] = i;
    TrainRng rng = TrainRng::for_purpose(seed, str_cat("order.", epoch));
    for (int64_t i = length - 1; i > 0; --i) std::swap(p[i], p[rng.uniform_int(0, i)]);  // Fisher-Yates
    return p;
}

}  // namespace sd3::train
