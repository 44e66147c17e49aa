// The training images and their captions (reference-training.md 3.3): an --instance_data_dir of PNG/JPEG/WebP
// files, captions from a `.txt` beside each image or from metadata.jsonl / metadata.csv (--image_column,
// --caption_column), empty captions falling back to --instance_prompt, --repeats; prior-preservation class images;
// unreadable or too small images reported by name and skipped (or an error with --strict). Preprocessing (resize,
// crop, flip) happens once per image here; the epoch order is a seeded permutation per epoch.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "train/image_transforms.h"
#include "train/train_rng.h"

namespace sd3::train {

struct DatasetOptions {
    std::string instance_data_dir;
    std::string instance_prompt;
    std::string image_column = "image";  // metadata column with the file name ("file_name" also accepted)
    std::string caption_column;          // metadata column with the caption (default: "caption", then "text")
    int repeats = 1;
    int resolution = 512;
    bool center_crop = false;
    bool random_flip = false;
    int min_image_size = 8;  // images whose shorter side is smaller are "too small"
    bool strict = false;     // unreadable / too small images stop the run instead of being skipped
    // prior preservation
    bool with_prior_preservation = false;
    std::string class_data_dir;
    std::string class_prompt;
    int num_class_images = 100;
};

struct ImageEntry {
    std::string path;
    std::string caption;  // the prompt used for this image (fallbacks applied)
};

// Decodes an image file to 8-bit RGB (io/image.h's read_image, EXIF orientation applied).
using ImageDecoder = std::function<Result<RgbImage>(const std::string& path)>;

// Image files of a folder (png, jpg, jpeg, webp; sorted by name) with their captions.
Result<std::vector<ImageEntry>> list_instance_images(const DatasetOptions& o);
// Class images of --class_data_dir (no captions: every one gets --class_prompt). A missing folder is empty.
Result<std::vector<ImageEntry>> list_class_images(const DatasetOptions& o);

// One preprocessed image: the crop window is fixed once (as the reference does); `flipped` is its mirror image,
// used when --random_flip draws a flip for the sample.
struct PreparedImage {
    ImageEntry entry;
    bool is_class = false;
    Tensor pixels;          // [3, R, R] in [-1, 1]
    Tensor pixels_flipped;  // [3, R, R], defined only with random_flip (instance images)
};

struct PreparedDataset {
    std::vector<PreparedImage> instance;  // each source image once (repeats are applied by the sampler)
    std::vector<PreparedImage> class_images;
    std::vector<std::string> skipped;     // "path: reason"
};

// Decodes and preprocesses every image. `crop_seed` seeds the random crops (ignored with center_crop).
Result<PreparedDataset> prepare_dataset(const DatasetOptions& o, const std::vector<ImageEntry>& instance,
                                        const std::vector<ImageEntry>& class_images, const ImageDecoder& decode,
                                        uint64_t crop_seed);
// Resize + crop (+ flip) of one decoded image, as prepare_dataset does.
PreparedImage prepare_image(const RgbImage& img, const ImageEntry& entry, const DatasetOptions& o, bool is_class,
                            TrainRng* crop_rng);

// Sample index space: instance images repeated --repeats times (each image's copies consecutive, as the
// reference lists them); with prior preservation the length is max(instances, class images) and the class image
// of sample i is i mod count.
struct SampleRef {
    int instance = -1;  // index into PreparedDataset::instance
    int class_image = -1;
};
int64_t dataset_length(const DatasetOptions& o, int64_t num_instance, int64_t num_class);
SampleRef sample_at(const DatasetOptions& o, int64_t index, int64_t num_instance, int64_t num_class);

// The shuffled order of epoch `epoch` (a fresh permutation per epoch, like DataLoader(shuffle=True)), a function of
// (seed, epoch) only, so a resumed run sees the same order.
std::vector<int64_t> epoch_permutation(uint64_t seed, int64_t epoch, int64_t length);

}  // namespace sd3::train
