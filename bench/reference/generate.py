"""Workload 4 on the reference side: StableDiffusion3Pipeline in bf16 (T5 in bf16 unless --t5-dtype asks for a
bitsandbytes one), text to one image at 1024², 28 steps, CFG 7.0. seconds_per_image is sampling + VAE decoding
from prompt embeddings encoded beforehand (timed apart as encode_seconds), as sd3tune's metric is; a short untimed
call first takes the one-off costs (cuBLAS/cuDNN plans, allocator growth) out of it. The peak covers the process."""
import time

import torch

from common import BF16, Timer, base_parser, load_t5, peak_bytes, reference_t5_dtype, write_results


def main():
    p = base_parser(__doc__)
    p.add_argument("--prompt", default="a photo of sks dog in a bucket")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed first call (0: none)")
    p.add_argument("--t5-dtype", default="bf16")
    p.add_argument("--image", help="also save the image here")
    args = p.parse_args()
    device = torch.device(args.device)
    t5_dtype, note = reference_t5_dtype(args.t5_dtype, device)

    from diffusers import StableDiffusion3Pipeline
    t0 = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(args.model, text_encoder_3=load_t5(args.model, t5_dtype, device),
                                                    dtype=BF16).to(device)
    load_seconds = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    with Timer(device) as enc, torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(prompt=args.prompt, prompt_2=None, prompt_3=None, device=device,
                                                      do_classifier_free_guidance=args.cfg > 1)
    call = dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=npooled, height=args.size, width=args.size, guidance_scale=args.cfg)
    if args.warmup_steps:
        pipe(num_inference_steps=args.warmup_steps, **call)
    with Timer(device) as t:
        image = pipe(num_inference_steps=args.steps, generator=torch.Generator(device).manual_seed(0), **call).images[0]
    if args.image:
        image.save(args.image)
    write_results(args.out, {"workload": "generate", "size": args.size, "steps": args.steps, "cfg": args.cfg,
                             "t5_dtype": t5_dtype, "notes": [note] if note else [], "seconds_per_image": t.seconds,
                             "encode_seconds": enc.seconds, "load_seconds": load_seconds,
                             "peak_gpu_bytes": peak_bytes(device)}, device)


if __name__ == "__main__":
    main()
