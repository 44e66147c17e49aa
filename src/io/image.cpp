// PNG (libpng), JPEG (libjpeg) and WebP (libwebp) decoding to 8-bit RGB with EXIF orientation, PNG writing with
// text chunks, and the float conversions of diffusers' VaeImageProcessor. libpng and libjpeg report errors by
// longjmp, so each decoder keeps every C++ object outside the function that calls setjmp.
#include "io/image.h"

#include <png.h>
#include <webp/decode.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>
#include <jerror.h>

#include "core/check.h"

namespace sd3 {

Image Image::blank(int width, int height) {
    Image im;
    im.width = width;
    im.height = height;
    im.pixels.assign(static_cast<size_t>(width) * height * 3, 0);
    return im;
}

const char* image_format_name(ImageFormat f) {
    switch (f) {
        case ImageFormat::PNG: return "PNG";
        case ImageFormat::JPEG: return "JPEG";
        case ImageFormat::WEBP: return "WebP";
        case ImageFormat::UNKNOWN: break;
    }
    return "unknown";
}

ImageFormat detect_image_format(const uint8_t* d, size_t n) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    if (n >= 8 && std::memcmp(d, png_sig, 8) == 0) return ImageFormat::PNG;
    if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) return ImageFormat::JPEG;
    if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return ImageFormat::WEBP;
    return ImageFormat::UNKNOWN;
}

namespace {

// ---- EXIF orientation -----------------------------------------------------------------------------------------

// The Orientation tag (0x0112) of IFD0 in TIFF-structured EXIF data; 1 when absent or unreadable.
int exif_orientation(const uint8_t* d, size_t n) {
    if (n >= 6 && std::memcmp(d, "Exif\0\0", 6) == 0) {
        d += 6;
        n -= 6;
    }
    if (n < 8) return 1;
    const bool le = d[0] == 'I' && d[1] == 'I';
    if (!le && !(d[0] == 'M' && d[1] == 'M')) return 1;
    auto u16 = [&](size_t o) -> uint32_t { return le ? d[o] | (d[o + 1] << 8) : (d[o] << 8) | d[o + 1]; };
    auto u32 = [&](size_t o) -> uint32_t { return le ? u16(o) | (u16(o + 2) << 16) : (u16(o) << 16) | u16(o + 2); };
    if (u16(2) != 42) return 1;
    const size_t ifd = u32(4);
    if (ifd + 2 > n) return 1;
    const uint32_t count = u16(ifd);
    for (uint32_t i = 0; i < count; ++i) {
        const size_t e = ifd + 2 + 12 * static_cast<size_t>(i);
        if (e + 12 > n) break;
        if (u16(e) == 0x0112 && u16(e + 2) == 3) {  // SHORT
            const uint32_t v = u16(e + 8);
            return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
        }
    }
    return 1;
}

// PIL.ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
// 7 transverse, 8 rotate 90 counter-clockwise.
Image apply_orientation(const Image& src, int orientation) {
    if (orientation <= 1 || orientation > 8) return src;
    const int W = src.width, H = src.height;
    const bool swap = orientation >= 5;
    Image dst = Image::blank(swap ? H : W, swap ? W : H);
    for (int y = 0; y < dst.height; ++y) {
        for (int x = 0; x < dst.width; ++x) {
            int sx = x, sy = y;
            switch (orientation) {
                case 2: sx = W - 1 - x; break;
                case 3: sx = W - 1 - x; sy = H - 1 - y; break;
                case 4: sy = H - 1 - y; break;
                case 5: sx = y; sy = x; break;
                case 6: sx = y; sy = H - 1 - x; break;
                case 7: sx = W - 1 - y; sy = H - 1 - x; break;
                case 8: sx = W - 1 - y; sy = x; break;
            }
            std::memcpy(dst.at(x, y), src.at(sx, sy), 3);
        }
    }
    return dst;
}

// ---- PNG ------------------------------------------------------------------------------------------------------

struct PngReadState {
    const uint8_t* data;
    size_t size;
    size_t pos;
    char message[256];
};

void png_read_from_memory(png_structp png, png_bytep out, png_size_t n) {
    auto* s = static_cast<PngReadState*>(png_get_io_ptr(png));
    if (s->pos + n > s->size) png_error(png, "the file ends early (truncated)");
    std::memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

void png_error_to_state(png_structp png, png_const_charp msg) {
    auto* s = static_cast<PngReadState*>(png_get_error_ptr(png));
    std::snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}
void png_warning_ignore(png_structp, png_const_charp) {}

// Decodes into `pixels` (already sized by a first call that only reads the header when pixels is null).
// Returns 0 on success, 1 on a libpng error (message in state).
int png_decode_raw(PngReadState* state, uint32_t* width, uint32_t* height, uint8_t* pixels, size_t pixels_size,
                   int* orientation) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, state, png_error_to_state, png_warning_ignore);
    if (!png) return 2;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        return 2;
    }
    png_bytep* volatile rows = nullptr;
    if (setjmp(png_jmpbuf(png))) {
        std::free(rows);
        png_destroy_read_struct(&png, &info, nullptr);
        return 1;
    }
    png_set_read_fn(png, state, png_read_from_memory);
    png_read_info(png, info);
    *width = png_get_image_width(png, info);
    *height = png_get_image_height(png, info);
    if (!pixels) {
        png_destroy_read_struct(&png, &info, nullptr);
        return 0;
    }
    const int color = png_get_color_type(png, info);
    png_set_expand(png);  // palette -> RGB, gray < 8 bits -> 8 bits, tRNS -> alpha
    png_set_strip_16(png);  // the high byte, as PIL does for 16-bit RGB
    png_set_strip_alpha(png);
    if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != static_cast<size_t>(*width) * 3 ||
        pixels_size != static_cast<size_t>(*width) * *height * 3)
        png_error(png, "unexpected row layout after conversion to RGB");
    rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * *height));
    if (!rows) png_error(png, "out of memory");
    for (uint32_t y = 0; y < *height; ++y) rows[y] = pixels + static_cast<size_t>(y) * *width * 3;
    png_read_image(png, rows);
    png_read_end(png, info);
#ifdef PNG_eXIf_SUPPORTED
    png_uint_32 exif_len = 0;
    png_bytep exif = nullptr;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif) *orientation = exif_orientation(exif, exif_len);
#endif
    std::free(rows);
    rows = nullptr;
    png_destroy_read_struct(&png, &info, nullptr);
    return 0;
}

Result<Image> decode_png(const uint8_t* data, size_t size, const std::string& name, int* orientation) {
    PngReadState state{data, size, 0, {0}};
    uint32_t w = 0, h = 0;
    int rc = png_decode_raw(&state, &w, &h, nullptr, 0, orientation);
    if (rc == 0 && (w == 0 || h == 0 || static_cast<uint64_t>(w) * h > (1ull << 28)))
        return make_error(ErrorCode::UNSUPPORTED, name, ": PNG of ", w, "x", h, " pixels is empty or too large");
    Image im;
    if (rc == 0) {
        im = Image::blank(static_cast<int>(w), static_cast<int>(h));
        state.pos = 0;
        rc = png_decode_raw(&state, &w, &h, im.pixels.data(), im.pixels.size(), orientation);
    }
    if (rc == 2) return make_error(ErrorCode::OUT_OF_MEMORY, name, ": libpng could not allocate its structures");
    if (rc != 0) return make_error(ErrorCode::CORRUPT_FILE, name, ": corrupt PNG: ", state.message);
    return im;
}

// ---- JPEG -----------------------------------------------------------------------------------------------------

struct JpegError {
    jpeg_error_mgr mgr;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
    auto* err = reinterpret_cast<JpegError*>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}
void jpeg_no_output(j_common_ptr) {}
// Warnings are ignored except a premature end of data, which libjpeg papers over with gray; PIL refuses such
// files ("image file is truncated"), and so do we.
void jpeg_emit_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        auto* err = reinterpret_cast<JpegError*>(cinfo->err);
        std::snprintf(err->message, sizeof err->message, "the file ends early (truncated)");
        longjmp(err->jump, 1);
    }
}

// 0 success; 1 corrupt (message); 3 CMYK/YCCK (unsupported). With pixels null, only reads the header.
int jpeg_decode_raw(const uint8_t* data, size_t size, JpegError* err, uint32_t* width, uint32_t* height,
                    uint8_t* pixels, int* orientation) {
    jpeg_decompress_struct cinfo;
    cinfo.err = jpeg_std_error(&err->mgr);
    err->mgr.error_exit = jpeg_error_exit;
    err->mgr.output_message = jpeg_no_output;
    err->mgr.emit_message = jpeg_emit_message;
    if (setjmp(err->jump)) {
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return 3;
    }
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0)
            *orientation = exif_orientation(m->data, m->data_length);
    *width = cinfo.image_width;
    *height = cinfo.image_height;
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3 || cinfo.output_width != *width || cinfo.output_height != *height) {
        std::snprintf(err->message, sizeof err->message, "unexpected output layout");
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + static_cast<size_t>(cinfo.output_scanline) * *width * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

Result<Image> decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int* orientation) {
    JpegError err{};
    uint32_t w = 0, h = 0;
    int rc = jpeg_decode_raw(data, size, &err, &w, &h, nullptr, orientation);
    Image im;
    if (rc == 0) {
        if (w == 0 || h == 0 || static_cast<uint64_t>(w) * h > (1ull << 28))
            return make_error(ErrorCode::UNSUPPORTED, name, ": JPEG of ", w, "x", h, " pixels is empty or too large");
        im = Image::blank(static_cast<int>(w), static_cast<int>(h));
        rc = jpeg_decode_raw(data, size, &err, &w, &h, im.pixels.data(), orientation);
    }
    if (rc == 3)
        return make_error(ErrorCode::UNSUPPORTED, name,
                          ": CMYK JPEG is not supported; convert the image to RGB (e.g. with an image editor)");
    if (rc != 0) return make_error(ErrorCode::CORRUPT_FILE, name, ": corrupt JPEG: ", err.message);
    return im;
}

// ---- WebP -----------------------------------------------------------------------------------------------------

Result<Image> decode_webp(const uint8_t* data, size_t size, const std::string& name) {
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, size, &features) != VP8_STATUS_OK)
        return make_error(ErrorCode::CORRUPT_FILE, name, ": corrupt WebP (its header cannot be read)");
    if (features.has_animation)
        return make_error(ErrorCode::UNSUPPORTED, name, ": animated WebP is not supported; use a still image");
    if (features.width <= 0 || features.height <= 0)
        return make_error(ErrorCode::CORRUPT_FILE, name, ": WebP with an empty image");
    Image im = Image::blank(features.width, features.height);
    // RGB output drops alpha without compositing, as PIL's convert("RGB").
    if (!WebPDecodeRGBInto(data, size, im.pixels.data(), im.pixels.size(), im.width * 3))
        return make_error(ErrorCode::CORRUPT_FILE, name, ": corrupt WebP (decoding failed)");
    return im;
}

}  // namespace

// ---- reading --------------------------------------------------------------------------------------------------

Result<Image> decode_image(const uint8_t* data, size_t size, const std::string& name, const ImageReadOptions& opt) {
    if (size == 0) return make_error(ErrorCode::CORRUPT_FILE, name, ": the file is empty");
    const ImageFormat format = detect_image_format(data, size);
    if (format == ImageFormat::UNKNOWN) {
        if (size < 12)
            return make_error(ErrorCode::CORRUPT_FILE, name, ": only ", size, " bytes, too small to be an image");
        return make_error(ErrorCode::UNSUPPORTED, name,
                          ": not a PNG, JPEG or WebP file (by its content); convert it to one of these formats");
    }
    int orientation = 1;
    Result<Image> decoded = format == ImageFormat::PNG    ? decode_png(data, size, name, &orientation)
                            : format == ImageFormat::JPEG ? decode_jpeg(data, size, name, &orientation)
                                                          : decode_webp(data, size, name);
    if (!decoded.ok()) return decoded.status();
    Image im = std::move(decoded).value();
    if (opt.apply_exif_orientation && orientation != 1) im = apply_orientation(im, orientation);
    if (im.width < opt.min_width || im.height < opt.min_height)
        return make_error(ErrorCode::INVALID_ARGUMENT, name, ": the image is ", im.width, "x", im.height,
                          " pixels, too small (at least ", opt.min_width, "x", opt.min_height, " needed)");
    return im;
}

Result<Image> read_image(const std::string& path, const ImageReadOptions& options) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return make_error(ErrorCode::NOT_FOUND, path, ": no such image file");
    if (std::filesystem::is_directory(path, ec))
        return make_error(ErrorCode::INVALID_ARGUMENT, path, ": is a folder, not an image file");
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error(ErrorCode::IO_ERROR, path, ": cannot open for reading: ", std::strerror(errno));
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return make_error(ErrorCode::IO_ERROR, path, ": read error");
    return decode_image(bytes.data(), bytes.size(), path, options);
}

// ---- PNG writing and text -------------------------------------------------------------------------------------

namespace {

bool is_ascii(const std::string& s) {
    for (unsigned char c : s)
        if (c >= 0x80) return false;
    return true;
}

std::string latin1_to_utf8(const char* s, size_t n) {
    std::string out;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            out += static_cast<char>(c);
        } else {
            out += static_cast<char>(0xc0 | (c >> 6));
            out += static_cast<char>(0x80 | (c & 0x3f));
        }
    }
    return out;
}

struct PngWriteState {
    char message[256];
};

void png_write_error(png_structp png, png_const_charp msg) {
    auto* s = static_cast<PngWriteState*>(png_get_error_ptr(png));
    std::snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}

// 0 ok, 1 libpng error, 2 allocation failure.
int png_encode_raw(FILE* fp, PngWriteState* state, const Image& im, png_text* texts, int n_texts) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, state, png_write_error, png_warning_ignore);
    if (!png) return 2;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, nullptr);
        return 2;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return 1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, static_cast<png_uint_32>(im.width), static_cast<png_uint_32>(im.height), 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_texts > 0) png_set_text(png, info, texts, n_texts);
    png_write_info(png, info);
    for (int y = 0; y < im.height; ++y)
        png_write_row(png, const_cast<png_bytep>(im.pixels.data() + static_cast<size_t>(y) * im.width * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

}  // namespace

Status write_png(const std::string& path, const Image& im, const ImageText& text) {
    SD3_ASSERT(im.width > 0 && im.height > 0 && im.pixels.size() == static_cast<size_t>(im.width) * im.height * 3,
               "malformed Image");
    std::vector<png_text> texts(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        const auto& [key, value] = text[i];
        if (key.empty() || key.size() > 79 || !is_ascii(key))
            return make_error(ErrorCode::INVALID_ARGUMENT, path, ": PNG text key '", key,
                              "' must be 1-79 ASCII characters");
        png_text& t = texts[i];
        std::memset(&t, 0, sizeof t);
        t.key = const_cast<char*>(key.c_str());
        t.text = const_cast<char*>(value.c_str());
        if (is_ascii(value)) {
            t.compression = PNG_TEXT_COMPRESSION_NONE;
            t.text_length = value.size();
        } else {  // UTF-8 needs iTXt
            t.compression = PNG_ITXT_COMPRESSION_NONE;
            t.itxt_length = value.size();
            t.lang = const_cast<char*>("");
            t.lang_key = const_cast<char*>("");
        }
    }
    const std::string tmp = path + ".tmp";
    FILE* fp = std::fopen(tmp.c_str(), "wb");
    if (!fp) return make_error(ErrorCode::IO_ERROR, path, ": cannot open for writing: ", std::strerror(errno));
    PngWriteState state{{0}};
    const int rc = png_encode_raw(fp, &state, im, texts.data(), static_cast<int>(texts.size()));
    const bool flushed = std::fflush(fp) == 0;
    const bool closed = std::fclose(fp) == 0;
    std::error_code ec;
    if (rc != 0 || !flushed || !closed) {
        std::filesystem::remove(tmp, ec);
        if (rc == 2) return make_error(ErrorCode::OUT_OF_MEMORY, path, ": libpng could not allocate its structures");
        if (rc == 1) return make_error(ErrorCode::IO_ERROR, path, ": writing the PNG failed: ", state.message);
        return make_error(ErrorCode::IO_ERROR, path, ": writing failed (disk full?)");
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        return make_error(ErrorCode::IO_ERROR, path, ": cannot move the finished file into place: ", ec.message());
    }
    return {};
}

namespace {
// 0 ok, 1 error; collects the text chunks before and after the image data.
int png_text_raw(PngReadState* state, ImageText* out) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, state, png_error_to_state, png_warning_ignore);
    if (!png) return 1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        return 1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        return 1;
    }
    png_set_read_fn(png, state, png_read_from_memory);
    png_read_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
    png_textp texts = nullptr;
    const int n = png_get_text(png, info, &texts, nullptr);
    for (int i = 0; i < n; ++i) {
        const png_text& t = texts[i];
        const bool itxt = t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
        std::string value = itxt ? std::string(t.text, t.itxt_length) : latin1_to_utf8(t.text, t.text_length);
        out->emplace_back(t.key, std::move(value));
    }
    png_destroy_read_struct(&png, &info, nullptr);
    return 0;
}
}  // namespace

Result<ImageText> read_png_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error(ErrorCode::NOT_FOUND, path, ": cannot open: ", std::strerror(errno));
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (detect_image_format(bytes.data(), bytes.size()) != ImageFormat::PNG)
        return make_error(ErrorCode::INVALID_ARGUMENT, path, ": not a PNG file");
    PngReadState state{bytes.data(), bytes.size(), 0, {0}};
    ImageText text;
    if (png_text_raw(&state, &text) != 0)
        return make_error(ErrorCode::CORRUPT_FILE, path, ": corrupt PNG: ", state.message);
    return text;
}

// ---- float conversions ----------------------------------------------------------------------------------------

Tensor image_to_tensor(const Image& im) {
    Tensor t = Tensor::empty({3, im.height, im.width}, DType::F32);  // [3, H, W]
    float* out = t.data<float>();
    const size_t plane = static_cast<size_t>(im.width) * im.height;
    for (size_t p = 0; p < plane; ++p)
        for (int c = 0; c < 3; ++c) out[c * plane + p] = static_cast<float>(im.pixels[p * 3 + c]) / 255.0f;
    return t;
}

Image image_from_tensor(const Tensor& chw_in) {
    SD3_ASSERT(chw_in.dim() == 3 && chw_in.size(0) == 3, "image_from_tensor wants [3, H, W], got ",
               shape_str(chw_in.shape()));
    const Tensor chw = chw_in.to(DType::F32).contiguous();
    Image im = Image::blank(static_cast<int>(chw.size(2)), static_cast<int>(chw.size(1)));
    const float* in = chw.data<float>();
    const size_t plane = static_cast<size_t>(im.width) * im.height;
    for (size_t p = 0; p < plane; ++p) {
        for (int c = 0; c < 3; ++c) {
            float v = in[c * plane + p];
            v = std::isnan(v) ? 0.0f : std::min(1.0f, std::max(0.0f, v));
            // numpy's round: half to even, which nearbyint does in the default rounding mode.
            im.pixels[p * 3 + c] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));
        }
    }
    return im;
}

}  // namespace sd3
