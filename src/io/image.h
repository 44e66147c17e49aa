// Images on disk: reading PNG, JPEG and WebP into 8-bit RGB (as PIL's `exif_transpose(img).convert("RGB")` does for
// the reference's datasets), writing PNG with text chunks (prompt, seed, settings), and the conversions between
// 8-bit images and float tensors that diffusers' VaeImageProcessor does. Errors name the file and the problem.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

// 8-bit RGB, rows top to bottom, pixels interleaved: pixels[(y * width + x) * 3 + c].
struct Image {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> pixels;

    static Image blank(int width, int height);  // black
    uint8_t* at(int x, int y) { return pixels.data() + (static_cast<size_t>(y) * width + x) * 3; }
    const uint8_t* at(int x, int y) const { return pixels.data() + (static_cast<size_t>(y) * width + x) * 3; }
};

enum class ImageFormat { PNG, JPEG, WEBP, UNKNOWN };
const char* image_format_name(ImageFormat f);
// By content (magic bytes), never by extension.
ImageFormat detect_image_format(const uint8_t* data, size_t size);

struct ImageReadOptions {
    int min_width = 1;   // smaller images are an INVALID_ARGUMENT error naming the file and both sizes
    int min_height = 1;
    bool apply_exif_orientation = true;  // PIL.ImageOps.exif_transpose, as the reference's DreamBooth dataset
};

// Reads a PNG, JPEG or WebP file. Grayscale, palette and 16-bit PNGs become 8-bit RGB (16-bit keeps the high byte);
// alpha is dropped (PIL's convert("RGB") does not composite). Animated WebP and CMYK JPEG are UNSUPPORTED.
Result<Image> read_image(const std::string& path, const ImageReadOptions& options = {});
Result<Image> decode_image(const uint8_t* data, size_t size, const std::string& name_for_errors,
                           const ImageReadOptions& options = {});

// Text chunks written into / read from a PNG, in order. ASCII/Latin-1 values become tEXt; others become iTXt (UTF-8).
using ImageText = std::vector<std::pair<std::string, std::string>>;

// Writes an 8-bit RGB PNG atomically (a temporary file renamed into place). Keys must be 1-79 Latin-1 characters.
Status write_png(const std::string& path, const Image& image, const ImageText& text = {});
Result<ImageText> read_png_text(const std::string& path);

// Image -> float tensor [3, H, W] in [0, 1] (x / 255).
Tensor image_to_tensor(const Image& image);
// float tensor [3, H, W] (any range) -> Image: clamp to [0, 1], then (x * 255) rounded half to even, as diffusers'
// postprocess + numpy_to_pil do.
Image image_from_tensor(const Tensor& chw);

}  // namespace sd3
