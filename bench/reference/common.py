"""Shared pieces of the reference side of the benchmark (PyTorch + diffusers + peft): device timing and peak
memory, the results file, and the reference training script's LoRA setup and flow-matching step
(shared/research/reference-training.md §3.5, §4.1), so every workload measures the same step."""
import argparse
import json
import os
import platform
import time

import torch

BF16 = torch.bfloat16


def base_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="diffusers SD3 folder (sd3tune make-model writes one)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu to try the script on a tiny model")
    p.add_argument("--out", required=True, help="JSON file of the results")
    return p


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device):
    """Peak bytes held in live tensors since the last reset (torch.cuda.max_memory_allocated); the caching
    allocator's reserved pool on top of it is reported separately as peak_reserved_bytes. None off CUDA."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def peak_reserved_bytes(device):
    return torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class Timer:
    """Wall time of a block with the device drained on both ends, so queued kernels count where they ran."""

    def __init__(self, device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def write_results(path, results, device):
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for mod in ("diffusers", "transformers", "peft", "bitsandbytes"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"env": env, **results}, f, indent=2)
    print(json.dumps(results, indent=2))


def has_bitsandbytes():
    try:
        import bitsandbytes  # noqa: F401
        return True
    except Exception:  # absent, or present without a binary for this CUDA
        return False


def add_lora(transformer, rank):
    """The reference script's adapter: rank r, alpha r, gaussian init, on the attention projections (§4.1)."""
    from peft import LoraConfig
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return [p for p in transformer.parameters() if p.requires_grad]


class FlowMatchingStep:
    """One optimizer update of the reference script (§3.5): logit-normal timesteps from the training sigma table,
    noisy latents, the transformer under bf16 autocast (accelerate's mixed_precision=bf16), the preconditioned
    x0 loss in fp32, backward, global-norm clipping at 1.0, AdamW step."""

    def __init__(self, transformer, params, scheduler, device, lr=1e-4):
        from diffusers.training_utils import compute_density_for_timestep_sampling
        self.density = compute_density_for_timestep_sampling
        self.transformer, self.params, self.device = transformer, params, device
        self.timesteps = scheduler.timesteps.to(device)
        self.sigmas = scheduler.sigmas.to(device)
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)

    def __call__(self, latents, embeds, pooled):
        b = latents.shape[0]
        u = self.density(weighting_scheme="logit_normal", batch_size=b, logit_mean=0.0, logit_std=1.0)
        idx = (u * 1000).long().to(self.device)
        timesteps = self.timesteps[idx]
        sigmas = self.sigmas[idx].to(latents.dtype).reshape(b, 1, 1, 1)
        noisy = sigmas * torch.randn_like(latents) + (1.0 - sigmas) * latents
        with torch.autocast(self.device.type, dtype=BF16):
            pred = self.transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds,
                                    pooled_projections=pooled, return_dict=False)[0]
        pred = pred.float() * (-sigmas) + noisy  # logit_normal weighting is 1
        loss = ((pred - latents.float()) ** 2).reshape(b, -1).mean(1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def load_transformer(model, device):
    from diffusers import SD3Transformer2DModel
    t = SD3Transformer2DModel.from_pretrained(model, subfolder="transformer", dtype=BF16)
    t.requires_grad_(False)
    return t.to(device)


def load_scheduler(model):
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler")


def load_t5(model, t5_dtype, device):
    """T5-XXL as the reference stack loads it: bf16, or through bitsandbytes (LLM.int8 as the reference script's
    8-bit T5, or NF4), which quantizes while moving the weights to the GPU."""
    from transformers import BitsAndBytesConfig, T5EncoderModel
    kw = {"subfolder": "text_encoder_3", "dtype": BF16}
    if t5_dtype == "bf16":
        return T5EncoderModel.from_pretrained(model, **kw).to(device)
    if t5_dtype == "int8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    elif t5_dtype == "nf4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=BF16)
    else:
        raise ValueError(f"unknown T5 dtype {t5_dtype}")
    return T5EncoderModel.from_pretrained(model, quantization_config=q, device_map={"": str(device)}, **kw)


def reference_t5_dtype(wanted, device):
    """The T5 dtype the reference can use here: the quantized ones need bitsandbytes on a CUDA device."""
    if wanted == "bf16" or (device.type == "cuda" and has_bitsandbytes()):
        return wanted, None
    return "bf16", f"T5 {wanted} needs bitsandbytes on CUDA, not present: the reference ran T5 in bf16"


def text_pipeline(model, t5, device):
    """A StableDiffusion3Pipeline holding only the tokenizers and text encoders, for encode_prompt."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection
    clip_l = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder", dtype=BF16).to(device)
    clip_g = CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", dtype=BF16).to(device)
    return StableDiffusion3Pipeline.from_pretrained(model, transformer=None, vae=None, text_encoder=clip_l,
                                                    text_encoder_2=clip_g, text_encoder_3=t5, dtype=BF16)


def free(device):
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
