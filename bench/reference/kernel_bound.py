"""The lower bound of a training step: the time of its big kernels alone, timed one shape at a time with torch
(cuBLAS GEMMs through F.linear and matmul, flash attention through scaled_dot_product_attention) at the shapes
the MMDiT runs for a batch, from the model folder's transformer config. Per linear layer of the frozen base:
the forward GEMM and the input-gradient GEMM of backward (no weight gradient: only the LoRA trains, its GEMMs
are rank-4 slivers and left out). Per joint block: attention forward and backward over image + text tokens.
With gradient checkpointing the forward runs twice. Norms, activations, adaLN, LoRA and the optimizer are left
out, so the sum is a floor no implementation of the same math goes below."""
import json
import os
from collections import Counter

import torch
import torch.nn.functional as F

from common import BF16, base_parser, median, write_results


def linear_shapes(cfg, batch, image_tokens, text_tokens):
    """Counter of (rows, in, out, needs_input_grad) over every linear the transformer applies to token rows."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    m_img, m_txt = batch * image_tokens, batch * text_tokens
    p = cfg["patch_size"]
    # The patch embedding and the context embedder read the step's inputs, which need no gradient.
    shapes = Counter({(m_img, cfg["in_channels"] * p * p, d, False): 1,
                      (m_txt, cfg["joint_attention_dim"], d, False): 1,
                      (m_img, d, p * p * cfg["out_channels"], True): 1})
    for i in range(cfg["num_layers"]):
        shapes[(m_img, d, d, True)] += 4  # to_q, to_k, to_v, to_out.0
        shapes[(m_img, d, 4 * d, True)] += 1
        shapes[(m_img, 4 * d, d, True)] += 1
        shapes[(m_txt, d, d, True)] += 3  # add_q_proj, add_k_proj, add_v_proj
        if i < cfg["num_layers"] - 1:  # the last block's context stream ends at its keys and values
            shapes[(m_txt, d, d, True)] += 1  # to_add_out
            shapes[(m_txt, d, 4 * d, True)] += 1
            shapes[(m_txt, 4 * d, d, True)] += 1
    return shapes


def time_cuda(fn, iters):
    """Median of per-call times between CUDA events after warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return median(times)


def time_cpu(fn, iters):
    import time
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def attention_times(device, batch, heads, seq, head_dim, timer):
    """Forward and backward seconds of one joint attention; on CUDA the faster of flash and cuDNN's kernels."""
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=device, dtype=BF16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(batch, heads, seq, head_dim, device=device, dtype=BF16)

    def measure():
        fwd = timer(lambda: F.scaled_dot_product_attention(q, k, v))
        both = timer(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad))
        return fwd, max(both - fwd, 0.0)

    if device.type != "cuda":
        return {"default": measure()}
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                out[name] = measure()
        except RuntimeError as e:  # a backend this build or GPU lacks
            print(f"{name} attention unavailable: {e}")
    return out


def main():
    p = base_parser(__doc__)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context-tokens", type=int, default=154)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    with open(os.path.join(args.model, "transformer", "config.json")) as f:
        cfg = json.load(f)
    timer = (lambda fn: time_cuda(fn, args.iters)) if device.type == "cuda" else (lambda fn: time_cpu(fn, args.iters))
    image_tokens = (args.resolution // 8 // cfg["patch_size"]) ** 2
    gemm_fwd = gemm_bwd = 0.0
    layers = []
    for (m, k, n, input_grad), count in sorted(linear_shapes(cfg, args.batch, image_tokens,
                                                                 args.context_tokens).items()):
        x = torch.randn(m, k, device=device, dtype=BF16)
        w = torch.randn(n, k, device=device, dtype=BF16)
        dy = torch.randn(m, n, device=device, dtype=BF16)
        f = timer(lambda: F.linear(x, w))
        b = timer(lambda: dy @ w) if input_grad else 0.0
        gemm_fwd += count * f
        gemm_bwd += count * b
        layers.append({"rows": m, "in": k, "out": n, "count": count, "forward_s": f, "input_grad_s": b,
                       "tflops_forward": 2 * m * k * n / f / 1e12})
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    attn = attention_times(device, args.batch, heads, image_tokens + args.context_tokens, head_dim, timer)
    best = min(attn, key=lambda name: sum(attn[name]))
    attn_fwd, attn_bwd = (cfg["num_layers"] * s for s in attn[best])
    forward, backward = gemm_fwd + attn_fwd, gemm_bwd + attn_bwd
    bound = {"checkpointing": 2 * forward + backward, "no_checkpointing": forward + backward}
    write_results(args.out, {
        "workload": "kernel_bound", "resolution": args.resolution, "batch": args.batch,
        "context_tokens": args.context_tokens, "image_tokens": image_tokens,
        "gemm_forward_s": gemm_fwd, "gemm_input_grad_s": gemm_bwd, "attention_backend": best,
        "attention_per_block_s": {k: {"forward": v[0], "backward": v[1]} for k, v in attn.items()},
        "attention_forward_s": attn_fwd, "attention_backward_s": attn_bwd,
        "modes": {mode: {"seconds_per_update": s, "images_per_second": args.batch / s} for mode, s in bound.items()},
        "layers": layers}, device)


if __name__ == "__main__":
    main()
