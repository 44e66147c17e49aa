#!/usr/bin/env python3
"""Reference values for sd3tune's training components (tests/data/train/reference.safetensors).

Needs torch, diffusers, prodigyopt, safetensors (pip). Writes:
  lr.<name>: the learning rate of optimizer updates 1..T+3 for diffusers.optimization.get_scheduler schedules
             (base lr 1e-4 on a torch AdamW with the LR passed per param group, as the reference script does);
  qmap.signed / qmap.unsigned: bitsandbytes' create_dynamic_map (0.43.1 algorithm) computed with torch float32;
  adamw.*: 5 torch.optim.AdamW steps (lr 1e-4, betas 0.9/0.999, wd 1e-4, eps 1e-8) on two tensors;
  resize.<case>.{in,out}: PIL Image.resize(BILINEAR) of random 8-bit RGB images to torchvision Resize's size;
  prodigy.*: 5 prodigyopt.Prodigy steps with the reference script's arguments (lr 1.0, wd 1e-4, decouple,
             bias correction, safeguard warmup) on the same tensors and gradients.
"""
import os, sys
import torch
from safetensors.torch import save_file
from diffusers.optimization import get_scheduler
import prodigyopt

out = {}

# --- learning-rate schedules -----------------------------------------------------------------------------
cases = [("constant", 0, 20, 1, 1.0), ("constant_with_warmup", 5, 20, 1, 1.0), ("linear", 5, 20, 1, 1.0),
         ("linear", 0, 13, 1, 1.0), ("cosine", 5, 20, 1, 1.0), ("cosine", 0, 17, 3, 1.0),
         ("cosine_with_restarts", 4, 30, 3, 1.0), ("cosine_with_restarts", 0, 25, 1, 1.0),
         ("polynomial", 5, 20, 1, 1.0), ("polynomial", 3, 20, 1, 2.0)]
for name, W, T, cycles, power in cases:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1e-4}])
    sch = get_scheduler(name, optimizer=opt, num_warmup_steps=W, num_training_steps=T, num_cycles=cycles, power=power)
    lrs = []
    for k in range(T + 3):
        lrs.append(opt.param_groups[0]["lr"])  # the LR the next optimizer.step() uses
        opt.step(); sch.step()
    out[f"lr.{name}.w{W}.t{T}.c{cycles}.p{power}"] = torch.tensor(lrs, dtype=torch.float64)

# --- bitsandbytes dynamic quantization maps (create_dynamic_map, max_exponent_bits=7, total_bits=8) --------
def dynamic_map(signed):
    data = []
    for i in range(7):
        n = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = torch.linspace(0.1, 1, n)
        means = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-6 + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32)
out["qmap.signed"] = dynamic_map(True)
out["qmap.unsigned"] = dynamic_map(False)

# --- AdamW and Prodigy, several steps -----------------------------------------------------------------------
g = torch.Generator().manual_seed(7)
shapes = [(4, 32), (32, 4)]
p_init = [torch.randn(s, generator=g) * 0.25 for s in shapes]
p_init[1].zero_()  # like a LoRA B matrix
grads = [[torch.randn(s, generator=g) * 0.01 for s in shapes] for _ in range(5)]
for i, t in enumerate(p_init):
    out[f"init.{i}"] = t.clone()
for k in range(5):
    for i in range(len(shapes)):
        out[f"grad.{k}.{i}"] = grads[k][i].clone()

def run(make):
    ps = [torch.nn.Parameter(t.clone()) for t in p_init]
    opt = make(ps)
    res = []
    for k in range(5):
        for p, gr in zip(ps, grads[k]):
            p.grad = gr.clone()
        opt.step()
        res.append([p.detach().clone() for p in ps])
    return res

for k, ps in enumerate(run(lambda ps: torch.optim.AdamW(ps, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8))):
    for i, t in enumerate(ps):
        out[f"adamw.{k}.{i}"] = t
for k, ps in enumerate(run(lambda ps: prodigyopt.Prodigy(ps, lr=1.0, betas=(0.9, 0.999), beta3=None, weight_decay=1e-4,
                                                         eps=1e-8, decouple=True, use_bias_correction=True,
                                                         safeguard_warmup=True))):
    for i, t in enumerate(ps):
        out[f"prodigy.{k}.{i}"] = t

# --- PIL resize (torchvision Resize on PIL images = Image.resize(BILINEAR)) --------------------------------
import numpy as np
from PIL import Image
rs = np.random.RandomState(3)
for name, (w, h), size in [("down", (37, 23), 16), ("up", (7, 5), 16), ("tall", (30, 71), 24), ("square", (40, 40), 16),
                           ("strong_down", (203, 97), 20)]:
    arr = rs.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    arr[: h // 2, : w // 3] = [250, 10, 128]  # flat regions and edges, not only noise
    img = Image.fromarray(arr, "RGB")
    short, long_ = min(w, h), max(w, h)
    new_long = int(size * long_ / short)
    nw, nh = (new_long, size) if w >= h else (size, new_long)
    out[f"resize.{name}.in"] = torch.from_numpy(arr.copy())
    out[f"resize.{name}.out"] = torch.from_numpy(np.asarray(img.resize((nw, nh), Image.BILINEAR)).copy())

dst = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "train",
                                                         "reference.safetensors")
save_file({k: v.contiguous() for k, v in out.items()}, dst)
print("wrote", dst, len(out), "tensors")
