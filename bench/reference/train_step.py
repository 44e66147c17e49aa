"""Workloads 1 and 2 on the reference side: the LoRA training step of the reference script on random latents and
text embeddings of the real shapes (77 CLIP + 77 T5 = 154 context tokens), with gradient checkpointing on and
off in one process (the transformer is loaded once; the adapter's optimizer is rebuilt and the peak counter reset
between the modes). Per mode: median seconds per update after warm-up, images/s, peak GPU memory."""
import gc

import torch

from common import (BF16, FlowMatchingStep, Timer, add_lora, base_parser, load_scheduler, load_transformer, median,
                    peak_bytes, peak_reserved_bytes, reset_peak, sync, write_results)


def main():
    p = base_parser(__doc__)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--context-tokens", type=int, default=154)
    p.add_argument("--steps", type=int, default=10, help="timed updates")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first (allocator, cuBLAS/cuDNN plans)")
    p.add_argument("--modes", default="checkpointing,no_checkpointing")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    transformer = load_transformer(args.model, device)
    params = add_lora(transformer, args.rank)
    scheduler = load_scheduler(args.model)
    cfg = transformer.config
    lat = args.resolution // 8
    latents = torch.randn(args.batch, cfg.in_channels, lat, lat, device=device, dtype=BF16)
    embeds = torch.randn(args.batch, args.context_tokens, cfg.joint_attention_dim, device=device, dtype=BF16)
    pooled = torch.randn(args.batch, cfg.pooled_projection_dim, device=device, dtype=BF16)

    results = {"workload": "train_step", "resolution": args.resolution, "batch": args.batch, "rank": args.rank,
               "context_tokens": args.context_tokens, "steps": args.steps, "warmup": args.warmup,
               "lora_parameters": sum(q.numel() for q in params), "modes": {}}
    for mode in args.modes.split(","):
        if mode == "checkpointing":
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
        transformer.train()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        reset_peak(device)
        step = FlowMatchingStep(transformer, params, scheduler, device)
        times = []
        for i in range(args.warmup + args.steps):
            with Timer(device) as t:
                loss = step(latents, embeds, pooled)
            if i >= args.warmup:
                times.append(t.seconds)
        sync(device)
        s = median(times)
        results["modes"][mode] = {"seconds_per_update": s, "images_per_second": args.batch / s,
                                  "step_seconds": times, "peak_gpu_bytes": peak_bytes(device),
                                  "peak_reserved_bytes": peak_reserved_bytes(device), "last_loss": float(loss)}
        del step
    write_results(args.out, results, device)


if __name__ == "__main__":
    main()
