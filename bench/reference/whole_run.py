"""Workload 3 on the reference side: the whole training run as the reference DreamBooth LoRA script does it
(shared/research/reference-training.md §3.1): load the three text encoders (T5 in 8 bits through bitsandbytes
where it is installed), the VAE (fp32) and the transformer (bf16) onto the GPU; add the LoRA; encode the instance
prompt once and free the text encoders; train (VAE-encoding each batch every step, as the script does); save the
LoRA; then one validation image (28 steps, CFG 7, at the training resolution) from a pipeline with the text
encoders reloaded and the live LoRA. Reports each phase's time and peak GPU memory and the peak over the run."""
import os

import numpy as np
import torch
from PIL import Image

from common import (BF16, FlowMatchingStep, Timer, add_lora, base_parser, free, load_scheduler, load_t5,
                    load_transformer, median, peak_bytes, reference_t5_dtype, reset_peak, text_pipeline, write_results)


def load_images(folder, resolution):
    """Resize the short side to the resolution (bilinear), center crop, scale to [-1, 1] (§3.3)."""
    out = []
    for name in sorted(os.listdir(folder)):
        im = Image.open(os.path.join(folder, name)).convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        out.append(x)
    return torch.stack(out)


def main():
    p = base_parser(__doc__)
    p.add_argument("--images", required=True, help="folder of training images")
    p.add_argument("--prompt", default="a photo of sks dog")
    p.add_argument("--validation-prompt", default="a photo of sks dog in a bucket")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2, help="updates left out of the median")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--t5-dtype", default="int8", help="int8 (the reference script's), nf4 or bf16")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--validation-steps", type=int, default=28)
    p.add_argument("--output-dir", default="/tmp/ref-whole-run")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    t5_dtype, note = reference_t5_dtype(args.t5_dtype, device)
    results = {"workload": "whole_run", "resolution": args.resolution, "batch": args.batch, "steps": args.steps,
               "t5_dtype": t5_dtype, "gradient_checkpointing": not args.no_checkpointing,
               "notes": [note] if note else []}

    with Timer(device) as wall:
        # Cache phase: every model on the GPU at once, as the script loads them, then the prompt embedding.
        with Timer(device) as cache:
            text = text_pipeline(args.model, load_t5(args.model, t5_dtype, device), device)
            from diffusers import AutoencoderKL
            vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae", dtype=BF16).to(device, torch.float32)
            vae.requires_grad_(False)
            transformer = load_transformer(args.model, device)
            if not args.no_checkpointing:
                transformer.enable_gradient_checkpointing()
            params = add_lora(transformer, args.rank)
            step = FlowMatchingStep(transformer, params, load_scheduler(args.model), device)
            pixels = load_images(args.images, args.resolution)
            with torch.no_grad():
                embeds, _, pooled, _ = text.encode_prompt(prompt=args.prompt, prompt_2=None, prompt_3=None,
                                                          device=device, do_classifier_free_guidance=False,
                                                          max_sequence_length=77)
            del text
            free(device)
        results["cache_seconds"], results["cache_peak_gpu_bytes"] = cache.seconds, peak_bytes(device)
        reset_peak(device)

        transformer.train()
        sf = vae.config.scaling_factor
        gen = torch.Generator().manual_seed(0)
        times = []
        with Timer(device) as train:
            for i in range(args.steps):
                idx = torch.randperm(len(pixels), generator=gen)[: args.batch]
                with Timer(device) as t:
                    with torch.no_grad():
                        x0 = vae.encode(pixels[idx].to(device)).latent_dist.sample() * sf  # the seed's: no shift
                    b = x0.shape[0]
                    step(x0.to(BF16), embeds.repeat(b, 1, 1), pooled.repeat(b, 1))
                times.append(t.seconds)
            from diffusers import StableDiffusion3Pipeline
            from peft.utils import get_peft_model_state_dict
            StableDiffusion3Pipeline.save_lora_weights(args.output_dir,
                                                       transformer_lora_layers=get_peft_model_state_dict(transformer))
        s = median(times[args.warmup:] or times)
        results.update(train_seconds=train.seconds, seconds_per_update=s, images_per_second=args.batch / s,
                       step_seconds=times, train_peak_gpu_bytes=peak_bytes(device))
        del step
        free(device)
        reset_peak(device)

        # Validation: the text encoders come back; the VAE decodes in bf16 (the upstream fix of the fp32 VAE's
        # dtype clash with bf16 latents).
        with Timer(device) as val:
            transformer.eval()
            text = text_pipeline(args.model, load_t5(args.model, t5_dtype, device), device)
            pipe = StableDiffusion3Pipeline.from_pipe(text, transformer=transformer, vae=vae.to(BF16))
            pipe(prompt=args.validation_prompt, num_inference_steps=args.validation_steps, guidance_scale=7.0,
                 height=args.resolution, width=args.resolution,
                 generator=torch.Generator(device).manual_seed(0)).images[0].save(
                     os.path.join(args.output_dir, "validation.png"))
        results["validation_seconds"], results["validation_peak_gpu_bytes"] = val.seconds, peak_bytes(device)
    results["wall_seconds"] = wall.seconds
    phases = [results[f"{k}_peak_gpu_bytes"] for k in ("cache", "train", "validation")]
    results["peak_gpu_bytes"] = None if None in phases else max(phases)
    write_results(args.out, results, device)


if __name__ == "__main__":
    main()
