// TensorBoard event files written directly (no TensorFlow): the TFRecord framing (uint64 length, masked CRC-32C
// of the length, payload, masked CRC-32C of the payload; mask = rotr(crc, 15) + 0xa282ead8) around Event protocol
// buffers encoded by hand: Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5},
// Summary{value=1}, Summary.Value{tag=1, simple_value=2 float, image=4}, Summary.Image{height=1, width=2,
// colorspace=3, encoded_image_string=4}. docs/training.md describes it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/status.h"

namespace sd3::train {

uint32_t crc32c(const uint8_t* data, size_t n);
uint32_t masked_crc32c(const uint8_t* data, size_t n);

class TensorBoardWriter {
  public:
    // Creates <dir>/events.out.tfevents.<seconds>.sd3tune and writes the file-version record.
    static Result<TensorBoardWriter> open(const std::string& dir);
    TensorBoardWriter() = default;
    TensorBoardWriter(TensorBoardWriter&& o) noexcept : f_(o.f_), path_(std::move(o.path_)) { o.f_ = nullptr; }
    TensorBoardWriter& operator=(TensorBoardWriter&& o) noexcept;
    ~TensorBoardWriter();

    Status scalar(const std::string& tag, double value, int64_t step);
    // An already encoded PNG.
    Status image(const std::string& tag, const std::vector<uint8_t>& png, int width, int height, int64_t step);
    const std::string& path() const { return path_; }

    // Encodes one record (exposed for tests).
    static std::vector<uint8_t> frame(const std::vector<uint8_t>& payload);

  private:
    Status write_event(const std::vector<uint8_t>& event);
    FILE* f_ = nullptr;
    std::string path_;
};

}  // namespace sd3::train
