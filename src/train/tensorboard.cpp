// Hand-encoded TensorBoard event records; see tensorboard.h.
#include "train/tensorboard.h"

#include <chrono>
#include <cstring>
#include <filesystem>

namespace sd3::train {

uint32_t crc32c(const uint8_t* data, size_t n) {
    static uint32_t table[256];
    static bool init = false;
    if (!init) {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;  // Castagnoli, reflected
            table[i] = c;
        }
        init = true;
    }
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
    return crc ^ 0xffffffffu;
}

uint32_t masked_crc32c(const uint8_t* data, size_t n) {
    const uint32_t c = crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

namespace {

struct Proto {
    std::vector<uint8_t> b;
    void varint(uint64_t v) {
        while (v >= 0x80) {
            b.push_back(static_cast<uint8_t>(v | 0x80));
            v >>= 7;
        }
        b.push_back(static_cast<uint8_t>(v));
    }
    void key(int field, int wire) { varint(static_cast<uint64_t>(field) << 3 | wire); }
    void f64(int field, double v) {
        key(field, 1);
        uint8_t x[8];
        std::memcpy(x, &v, 8);
        b.insert(b.end(), x, x + 8);
    }
    void f32(int field, float v) {
        key(field, 5);
        uint8_t x[4];
        std::memcpy(x, &v, 4);
        b.insert(b.end(), x, x + 4);
    }
    void i64(int field, int64_t v) {
        key(field, 0);
        varint(static_cast<uint64_t>(v));
    }
    void bytes(int field, const void* d, size_t n) {
        key(field, 2);
        varint(n);
        const auto* p = static_cast<const uint8_t*>(d);
        b.insert(b.end(), p, p + n);
    }
    void str(int field, const std::string& s) { bytes(field, s.data(), s.size()); }
    void msg(int field, const Proto& m) { bytes(field, m.b.data(), m.b.size()); }
};

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

std::vector<uint8_t> TensorBoardWriter::frame(const std::vector<uint8_t>& payload) {
    std::vector<uint8_t> out;
    const uint64_t len = payload.size();
    uint8_t lb[8];
    std::memcpy(lb, &len, 8);  // little-endian hosts only (x86-64, aarch64)
    out.insert(out.end(), lb, lb + 8);
    const uint32_t lc = masked_crc32c(lb, 8);
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&lc), reinterpret_cast<const uint8_t*>(&lc) + 4);
    out.insert(out.end(), payload.begin(), payload.end());
    const uint32_t dc = masked_crc32c(payload.data(), payload.size());
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&dc), reinterpret_cast<const uint8_t*>(&dc) + 4);
    return out;
}

Result<TensorBoardWriter> TensorBoardWriter::open(const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::IO_ERROR, "cannot create ", dir, ": ", ec.message());
    TensorBoardWriter w;
    w.path_ = (std::filesystem::path(dir) /
               str_cat("events.out.tfevents.", static_cast<int64_t>(now_seconds()), ".sd3tune"))
                  .string();
    w.f_ = std::fopen(w.path_.c_str(), "wb");
    if (!w.f_) return make_error(ErrorCode::IO_ERROR, "cannot write ", w.path_);
    Proto e;
    e.f64(1, now_seconds());
    e.str(3, "brain.Event:2");
    SD3_TRY(w.write_event(e.b));
    return w;
}

TensorBoardWriter& TensorBoardWriter::operator=(TensorBoardWriter&& o) noexcept {
    if (this != &o) {
        if (f_) std::fclose(f_);
        f_ = o.f_;
        path_ = std::move(o.path_);
        o.f_ = nullptr;
    }
    return *this;
}

TensorBoardWriter::~TensorBoardWriter() {
    if (f_) std::fclose(f_);
}

Status TensorBoardWriter::write_event(const std::vector<uint8_t>& event) {
    const std::vector<uint8_t> rec = frame(event);
    if (std::fwrite(rec.data(), 1, rec.size(), f_) != rec.size() || std::fflush(f_) != 0)
        return make_error(ErrorCode::IO_ERROR, "cannot write ", path_);
    return {};
}

Status TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
    Proto v, s, e;
    v.str(1, tag);
    v.f32(2, static_cast<float>(value));
    s.msg(1, v);
    e.f64(1, now_seconds());
    e.i64(2, step);
    e.msg(5, s);
    return write_event(e.b);
}

Status TensorBoardWriter::image(const std::string& tag, const std::vector<uint8_t>& png, int width, int height,
                                int64_t step) {
    Proto img, v, s, e;
    img.i64(1, height);
    img.i64(2, width);
    img.i64(3, 3);
    img.bytes(4, png.data(), png.size());
    v.str(1, tag);
    v.msg(4, img);
    s.msg(1, v);
    e.f64(1, now_seconds());
    e.i64(2, step);
    e.msg(5, s);
    return write_event(e.b);
}

}  // namespace sd3::train
