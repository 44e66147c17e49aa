// read_json_file.
#include "io/json_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace sd3 {

Result<nlohmann::json> read_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) {
        const ErrorCode code = errno == ENOENT ? ErrorCode::NOT_FOUND : ErrorCode::IO_ERROR;
        return make_error(code, path, ": cannot open: ", std::strerror(errno));
    }
    nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return make_error(ErrorCode::CORRUPT_FILE, path, ": not valid JSON");
    return j;
}

Status write_text_atomic(const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) return make_error(ErrorCode::IO_ERROR, "cannot write ", tmp, ": ", std::strerror(errno));
        f << text;
        if (!f.flush()) return make_error(ErrorCode::IO_ERROR, "cannot write ", tmp, " (disk full?)");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        return make_error(ErrorCode::IO_ERROR, "cannot rename ", tmp, " to ", path, ": ", std::strerror(errno));
    return {};
}

}  // namespace sd3
