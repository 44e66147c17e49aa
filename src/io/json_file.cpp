// read_json_file.
#include "io/json_file.h"

#include <cerrno>
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

}  // namespace sd3
