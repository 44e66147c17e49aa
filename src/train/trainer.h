// The training run (reference-training.md 3.1 order of operations, with the fixes of section 8): class images,
// data preparation, the cache phase (prompt encodings and latent distributions, encoders freed before the
// transformer loads), the epoch loop with gradient accumulation, clipping, the optimizer and LR schedule,
// checkpoints, validation images, the JSONL and TensorBoard logs, and the final LoRA file. Printing is the caller's
// (TrainCallbacks); the library only logs.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "train/components.h"
#include "train/dataset.h"
#include "train/train_options.h"

namespace sd3::train {

struct StepReport {
    int64_t step = 0;       // optimizer updates done (1-based after the update)
    int64_t max_steps = 0;
    int64_t epoch = 0;
    double loss = 0;        // mean of the update's micro-batch losses
    double lr = 0;          // the learning rate this update used
    double grad_norm = 0;   // before clipping
    double seconds = 0;     // wall time of this update
    // Where the host's time went, summed over the update's micro-batches. On a GPU the phases queue work and return,
    // and the host waits for the device only where numbers come back: in `report`.
    struct Phases {
        double batch = 0;      // drawing noise and timesteps, assembling and staging the micro-batch
        double step = 0;       // queuing the forward, the loss and the backward (one graph launch once recorded)
        double optimizer = 0;  // clipping, the learning rate and the optimizer step
        double report = 0;     // waiting for an update's loss and gradient norm, then logging and checkpoints
    } phases;
};

struct TrainCallbacks {
    std::function<void(const std::string& message)> on_phase;  // "caching latents 3/12", ...
    std::function<void(const StepReport&)> on_step;
    // After the cache phase (encoders and VAE released), before the transformer is loaded.
    std::function<void()> on_cache_done;
    // Return true to stop right after this update (simulates an interruption; no final save).
    std::function<bool(int64_t global_step)> stop_after;
};

struct TrainResult {
    int64_t global_step = 0;
    bool interrupted = false;
    std::vector<double> losses;  // per update, this run only
    std::string lora_path;       // the final LoRA file ("" when interrupted)
    int64_t resumed_from = -1;   // checkpoint step, or -1
};

// The numbers of the run (reference-training.md 3.7).
struct RunLength {
    int64_t dataset_length = 0, batches_per_epoch = 0, updates_per_epoch = 0, max_train_steps = 0, num_epochs = 0;
};
RunLength compute_run_length(const TrainOptions& o, int64_t dataset_length);

Result<TrainResult> run_training(const TrainOptions& o, TrainComponents& components, const ImageDecoder& decode,
                                 const TrainCallbacks& callbacks = {});

}  // namespace sd3::train
