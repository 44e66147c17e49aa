// Image I/O: PNG/JPEG/WebP decoding of generated files (every PNG color type, EXIF orientation, alpha dropped),
// PNG round trips with text chunks, the float conversions, and errors that name the file and the problem.
#include <gtest/gtest.h>

#include <png.h>
#include <webp/encode.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <jpeglib.h>

#include "io/image.h"

using namespace sd3;
namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("sd3_test_image_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    return (dir / name).string();
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}
std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A deterministic test picture with distinct values per pixel and channel.
Image pattern(int w, int h) {
    Image im = Image::blank(w, h);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            uint8_t* p = im.at(x, y);
            p[0] = static_cast<uint8_t>(x * 37 + y * 11);
            p[1] = static_cast<uint8_t>(x * 5 + y * 53 + 7);
            p[2] = static_cast<uint8_t>(x * y + 100);
        }
    return im;
}

// Writes a PNG of any color type / bit depth with libpng directly; `rows` are the raw bytes per row.
void write_raw_png(const std::string& path, int w, int h, int color_type, int depth,
                   const std::vector<std::vector<uint8_t>>& rows, const std::vector<png_color>& palette = {},
                   const std::vector<uint8_t>& exif = {}) {
    FILE* fp = std::fopen(path.c_str(), "wb");
    ASSERT_NE(fp, nullptr);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png_create_info_struct(png);
    ASSERT_EQ(setjmp(png_jmpbuf(png)), 0);
    png_init_io(png, fp);
    png_set_IHDR(png, info, w, h, depth, color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (!palette.empty()) png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
    if (!exif.empty()) png_set_eXIf_1(png, info, static_cast<png_uint_32>(exif.size()), const_cast<uint8_t*>(exif.data()));
    png_write_info(png, info);
    for (const auto& r : rows) png_write_row(png, r.data());
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    std::fclose(fp);
}

// TIFF-structured EXIF (little endian) holding only Orientation = v.
std::vector<uint8_t> exif_with_orientation(int v, bool with_prefix) {
    const uint8_t tiff[] = {'I', 'I', 42, 0, 8, 0, 0, 0,                       // header, IFD0 at 8
                            1, 0,                                               // one entry
                            0x12, 0x01, 3, 0, 1, 0, 0, 0, static_cast<uint8_t>(v), 0, 0, 0,  // Orientation SHORT
                            0, 0, 0, 0};                                        // no next IFD
    std::vector<uint8_t> b(std::begin(tiff), std::end(tiff));
    if (with_prefix) b.insert(b.begin(), {'E', 'x', 'i', 'f', 0, 0});
    return b;
}

std::vector<uint8_t> encode_jpeg(const Image& im, int quality, const std::vector<uint8_t>& app1 = {}) {
    jpeg_compress_struct c;
    jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char* buf = nullptr;
    unsigned long size = 0;
    jpeg_mem_dest(&c, &buf, &size);
    c.image_width = im.width;
    c.image_height = im.height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    if (!app1.empty()) jpeg_write_marker(&c, JPEG_APP0 + 1, app1.data(), static_cast<unsigned>(app1.size()));
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = const_cast<uint8_t*>(im.at(0, c.next_scanline));
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    std::vector<uint8_t> out(buf, buf + size);
    std::free(buf);
    return out;
}

// Smooth picture for lossy codecs (JPEG blocks of one color survive compression nearly unchanged).
Image quadrants(int w, int h) {
    Image im = Image::blank(w, h);
    const uint8_t colors[4][3] = {{220, 30, 30}, {30, 200, 40}, {20, 40, 210}, {240, 240, 30}};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) std::memcpy(im.at(x, y), colors[(y >= h / 2) * 2 + (x >= w / 2)], 3);
    return im;
}

int max_abs_diff(const uint8_t* a, const uint8_t* b) {
    int m = 0;
    for (int c = 0; c < 3; ++c) m = std::max(m, std::abs(int(a[c]) - int(b[c])));
    return m;
}

}  // namespace

TEST(Image, PngRoundTripWithTextChunks) {
    const std::string path = temp_path("rt.png");
    const Image im = pattern(13, 7);
    const ImageText text = {{"prompt", "a photo of sks dog"},
                            {"negative_prompt", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"},  // UTF-8 -> iTXt
                            {"seed", "42"}};
    ASSERT_TRUE(write_png(path, im, text).ok());
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    auto back = read_image(path);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->width, 13);
    EXPECT_EQ(back->height, 7);
    EXPECT_EQ(back->pixels, im.pixels);
    auto got = read_png_text(path);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(*got, text);
}

TEST(Image, PngTextKeyMustBeValid) {
    const Status s = write_png(temp_path("badkey.png"), pattern(2, 2), {{"", "x"}});
    EXPECT_EQ(s.code(), ErrorCode::INVALID_ARGUMENT);
}

TEST(Image, PngColorTypesBecomeRgb) {
    // gray 8-bit
    const std::string gray = temp_path("gray.png");
    write_raw_png(gray, 3, 1, PNG_COLOR_TYPE_GRAY, 8, {{0, 128, 255}});
    auto g = read_image(gray);
    ASSERT_TRUE(g.ok()) << g.status().message();
    EXPECT_EQ(g->pixels, (std::vector<uint8_t>{0, 0, 0, 128, 128, 128, 255, 255, 255}));
    // gray 1-bit expands to 0/255
    const std::string gray1 = temp_path("gray1.png");
    write_raw_png(gray1, 3, 1, PNG_COLOR_TYPE_GRAY, 1, {{0b10100000}});
    auto g1 = read_image(gray1);
    ASSERT_TRUE(g1.ok());
    EXPECT_EQ(g1->pixels, (std::vector<uint8_t>{255, 255, 255, 0, 0, 0, 255, 255, 255}));
    // RGBA: alpha dropped without compositing
    const std::string rgba = temp_path("rgba.png");
    write_raw_png(rgba, 2, 1, PNG_COLOR_TYPE_RGBA, 8, {{10, 20, 30, 0, 40, 50, 60, 128}});
    auto a = read_image(rgba);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->pixels, (std::vector<uint8_t>{10, 20, 30, 40, 50, 60}));
    // 16-bit RGB keeps the high byte
    const std::string rgb16 = temp_path("rgb16.png");
    write_raw_png(rgb16, 1, 1, PNG_COLOR_TYPE_RGB, 16, {{0xab, 0x12, 0x01, 0xff, 0xff, 0x00}});
    auto s = read_image(rgb16);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->pixels, (std::vector<uint8_t>{0xab, 0x01, 0xff}));
    // palette
    const std::string pal = temp_path("pal.png");
    write_raw_png(pal, 2, 1, PNG_COLOR_TYPE_PALETTE, 8, {{1, 0}}, {{1, 2, 3}, {200, 100, 50}});
    auto p = read_image(pal);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->pixels, (std::vector<uint8_t>{200, 100, 50, 1, 2, 3}));
}

TEST(Image, ExifOrientationIsApplied) {
    // 3x2 picture; orientation 6 (rotate 90 degrees clockwise) makes it 2x3 with the bottom-left pixel on top-left.
    const Image im = pattern(3, 2);
    std::vector<std::vector<uint8_t>> rows;
    for (int y = 0; y < 2; ++y) rows.emplace_back(im.at(0, y), im.at(0, y) + 9);
    const std::string path = temp_path("exif6.png");
    write_raw_png(path, 3, 2, PNG_COLOR_TYPE_RGB, 8, rows, {}, exif_with_orientation(6, false));
    auto r = read_image(path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_EQ(r->width, 2);
    ASSERT_EQ(r->height, 3);
    for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 2; ++x) EXPECT_EQ(max_abs_diff(r->at(x, y), im.at(y, 1 - x)), 0) << x << "," << y;
    // Orientation 8 (counter-clockwise) maps the top-right pixel to the top-left; 3 rotates by 180 degrees.
    write_raw_png(path, 3, 2, PNG_COLOR_TYPE_RGB, 8, rows, {}, exif_with_orientation(8, false));
    r = read_image(path);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(max_abs_diff(r->at(0, 0), im.at(2, 0)), 0);
    EXPECT_EQ(max_abs_diff(r->at(1, 2), im.at(0, 1)), 0);
    write_raw_png(path, 3, 2, PNG_COLOR_TYPE_RGB, 8, rows, {}, exif_with_orientation(3, false));
    r = read_image(path);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(max_abs_diff(r->at(0, 0), im.at(2, 1)), 0);
    // ... and can be switched off.
    ImageReadOptions keep;
    keep.apply_exif_orientation = false;
    r = read_image(path, keep);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->pixels, im.pixels);
}

TEST(Image, JpegDecodesWithOrientation) {
    const Image im = quadrants(32, 16);
    const std::string path = temp_path("q.jpg");
    write_bytes(path, encode_jpeg(im, 95));
    auto r = read_image(path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_EQ(r->width, 32);
    ASSERT_EQ(r->height, 16);
    // Lossy: the centers of the one-color quadrants come back within a few levels.
    for (auto [x, y] : {std::pair{4, 4}, {27, 4}, {4, 11}, {27, 11}}) EXPECT_LE(max_abs_diff(r->at(x, y), im.at(x, y)), 6);
    write_bytes(path, encode_jpeg(im, 95, exif_with_orientation(6, true)));
    r = read_image(path);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->width, 16);
    ASSERT_EQ(r->height, 32);
    // Clockwise: the source's bottom-left quadrant is now top-left, its top-left now top-right.
    EXPECT_LE(max_abs_diff(r->at(3, 3), im.at(4, 12)), 6);
    EXPECT_LE(max_abs_diff(r->at(12, 3), im.at(4, 3)), 6);
}

TEST(Image, WebpLosslessRoundTrip) {
    const Image im = pattern(9, 5);
    uint8_t* out = nullptr;
    const size_t n = WebPEncodeLosslessRGB(im.pixels.data(), im.width, im.height, im.width * 3, &out);
    ASSERT_GT(n, 0u);
    const std::string path = temp_path("l.webp");
    write_bytes(path, std::vector<uint8_t>(out, out + n));
    WebPFree(out);
    auto r = read_image(path);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->width, 9);
    EXPECT_EQ(r->pixels, im.pixels);
}

TEST(Image, ErrorsNameTheFileAndTheProblem) {
    const std::string missing = temp_path("missing.png");
    auto r = read_image(missing);
    EXPECT_EQ(r.status().code(), ErrorCode::NOT_FOUND);
    EXPECT_NE(r.status().message().find("missing.png"), std::string::npos);

    const std::string empty = temp_path("empty.png");
    write_bytes(empty, {});
    r = read_image(empty);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE);
    EXPECT_NE(r.status().message().find("empty"), std::string::npos);

    const std::string tiny = temp_path("tiny.bin");
    write_bytes(tiny, {1, 2, 3});
    r = read_image(tiny);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE);
    EXPECT_NE(r.status().message().find("too small"), std::string::npos);

    const std::string text = temp_path("notes.txt");
    write_bytes(text, std::vector<uint8_t>(100, 'a'));
    r = read_image(text);
    EXPECT_EQ(r.status().code(), ErrorCode::UNSUPPORTED);
    EXPECT_NE(r.status().message().find("notes.txt"), std::string::npos);

    // A PNG cut in half, and one with a damaged data chunk.
    const std::string good = temp_path("good.png");
    ASSERT_TRUE(write_png(good, pattern(40, 40)).ok());
    std::vector<uint8_t> bytes = read_bytes(good);
    const std::string cut = temp_path("cut.png");
    write_bytes(cut, std::vector<uint8_t>(bytes.begin(), bytes.begin() + bytes.size() / 2));
    r = read_image(cut);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE) << r.status().message();
    EXPECT_NE(r.status().message().find("cut.png"), std::string::npos);
    for (size_t i = 60; i < 90; ++i) bytes[i] ^= 0x5a;
    const std::string broken = temp_path("broken.png");
    write_bytes(broken, bytes);
    r = read_image(broken);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE) << r.status().message();

    // A truncated JPEG is refused rather than filled with gray.
    std::vector<uint8_t> jpg = encode_jpeg(quadrants(64, 64), 90);
    const std::string cutjpg = temp_path("cut.jpg");
    write_bytes(cutjpg, std::vector<uint8_t>(jpg.begin(), jpg.begin() + jpg.size() * 2 / 3));
    r = read_image(cutjpg);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE) << r.status().message();
    EXPECT_NE(r.status().message().find("truncated"), std::string::npos);

    // A WebP header with nothing behind it.
    const std::string badwebp = temp_path("bad.webp");
    write_bytes(badwebp, {'R', 'I', 'F', 'F', 4, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P', '8', ' '});
    r = read_image(badwebp);
    EXPECT_EQ(r.status().code(), ErrorCode::CORRUPT_FILE);

    // Too small for the caller's needs.
    ImageReadOptions big;
    big.min_width = big.min_height = 64;
    r = read_image(good, big);
    EXPECT_EQ(r.status().code(), ErrorCode::INVALID_ARGUMENT);
    EXPECT_NE(r.status().message().find("40x40"), std::string::npos);
}

TEST(Image, TensorConversions) {
    const Image im = pattern(5, 4);
    const Tensor t = image_to_tensor(im);  // [3, 4, 5]
    ASSERT_EQ(t.shape(), (Shape{3, 4, 5}));
    EXPECT_FLOAT_EQ(t.item_at({1, 2, 3}), im.at(3, 2)[1] / 255.0f);
    EXPECT_EQ(image_from_tensor(t).pixels, im.pixels);  // x/255*255 rounds back to x

    // Clamping and numpy's round-half-to-even: find a float whose product with 255 is exactly 2.5.
    float v = 2.5f / 255.0f;
    for (int i = 0; i < 8 && v * 255.0f != 2.5f; ++i) v = std::nextafter(v, v * 255.0f < 2.5f ? 1.0f : 0.0f);
    ASSERT_EQ(v * 255.0f, 2.5f);
    Tensor x = Tensor::from_vector({3, 1, 4}, {v, -0.3f, 1.7f, 0.5f, 0, 0, 0, 0, 0, 0, 0, 0});
    const Image out = image_from_tensor(x);
    EXPECT_EQ(out.at(0, 0)[0], 2);    // 2.5 -> 2 (half to even)
    EXPECT_EQ(out.at(1, 0)[0], 0);    // clamped below
    EXPECT_EQ(out.at(2, 0)[0], 255);  // clamped above
    EXPECT_EQ(out.at(3, 0)[0], 128);  // 127.5 -> 128
}
