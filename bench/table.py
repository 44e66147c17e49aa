"""Turns the benchmark's per-process JSON files into results.json and table.md: both sides, their ratio, the
issue-8 target and whether it is met. Run after every workload so a run cut short still leaves its table.
Inputs in --json-dir: env.json (GPU, commit, settings), <run>.json written by each process, <run>.status (its
exit code, or why it did not run). A missing number is shown as "—" with the reason in the notes."""
import argparse
import json
import os

GIB = 2 ** 30


def get(runs, run, path):
    """A value from run's JSON by dotted path, or None; None too for a GPU peak measured on the CPU (a dry run)."""
    v = runs.get(run, {}).get("data")
    if path.endswith("peak_gpu_bytes") and isinstance(v, dict) and v.get("device") == "cpu":
        return None
    for key in path.split("."):
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    return v


def per_100(runs, run, steps):
    """Wall seconds of the run had it made 100 updates instead of `steps`: the fixed costs (loading, caching,
    validation, saving) once, each missing update at the run's median time per update."""
    wall, update = get(runs, run, "wall_seconds"), get(runs, run, "seconds_per_update")
    if wall is None or update is None or not steps:
        return None
    return wall + (100 - steps) * update


def rows(runs, env):
    """(workload, metric, unit, reference, sd3tune, target) per line; target is (kind, number) or None:
    "ratio>=" (sd3tune/reference at least), "ratio<=" (at most), "max<=" / "max<" (sd3tune's own value)."""
    out = []
    gib = lambda v: None if v is None else v / GIB
    for res, batch, target in (("512", 4, 4.0), ("1024", 1, 3.0)):
        ref, name = f"ref_train{res}", f"train {res}², batch {batch}"
        for mode, label, tgt in (("checkpointing", "checkpointing", ("ratio>=", target)),
                                 ("no_checkpointing", "no checkpointing", None)):
            sd3 = f"sd3_train{res}_{'ckpt' if mode == 'checkpointing' else 'nockpt'}"
            out.append((f"{name}, {label}", "throughput", "img/s", get(runs, ref, f"modes.{mode}.images_per_second"),
                        get(runs, sd3, "images_per_second"), tgt))
            out.append((f"{name}, {label}", "peak GPU memory", "GiB",
                        gib(get(runs, ref, f"modes.{mode}.peak_gpu_bytes")),
                        gib(get(runs, sd3, "train_peak_gpu_bytes")), None))
        # The same with cuDNN's attention backward that sums with atomics, as PyTorch's does: faster, not
        # bit-reproducible (sd3tune's default is the deterministic one, the row above).
        label = f"{name}, checkpointing, --attention-backward atomic"
        sd3 = f"sd3_train{res}_ckpt_atomic"
        out.append((label, "throughput", "img/s", get(runs, ref, "modes.checkpointing.images_per_second"),
                    get(runs, sd3, "images_per_second"), ("ratio>=", target)))
        out.append((label, "peak GPU memory", "GiB", gib(get(runs, ref, "modes.checkpointing.peak_gpu_bytes")),
                    gib(get(runs, sd3, "train_peak_gpu_bytes")), None))
        # sd3tune's checkpointing recomputes only what memory forces; under a --max-vram that leaves room for no
        # kept block it recomputes them all, as the reference does.
        label = f"{name}, checkpointing, every block recomputed (--max-vram {env.get('recompute_max_vram_gib', 0):g})"
        sd3 = f"sd3_train{res}_recompute"
        out.append((label, "throughput", "img/s", get(runs, ref, "modes.checkpointing.images_per_second"),
                    get(runs, sd3, "images_per_second"), None))
        out.append((label, "peak GPU memory", "GiB", gib(get(runs, ref, "modes.checkpointing.peak_gpu_bytes")),
                    gib(get(runs, sd3, "train_peak_gpu_bytes")), None))
        # The bound of checkpointing counts every block's forward twice: set against the run that recomputes all.
        for mode, sd3 in (("checkpointing", f"sd3_train{res}_recompute"), ("no_checkpointing", f"sd3_train{res}_nockpt")):
            bound = get(runs, f"ref_bound{res}", f"modes.{mode}.seconds_per_update")
            mine = get(runs, sd3, "seconds_per_update")
            out.append((f"{name}, {mode.replace('_', ' ')}: kernel bound", "time per update",
                        "s", bound, mine, ("share", None)))
    whole_steps = env.get("whole_steps")
    base_q = env.get("base_dtype", "int8")
    for res, limits in (("1024", (6.0, 4.0)), ("512", (5.0, 3.5))):
        ref = f"ref_whole{res}"
        for base, limit in (("bf16", limits[0]), (base_q, limits[1])):
            sd3 = f"sd3_whole{res}_{base}"
            op = "max<=" if res == "1024" else "max<"
            label = f"whole run {res}², base {base}, T5 int8"
            max_vram = env.get("whole_max_vram_gib" if base == "bf16" else "quant_max_vram_gib")
            if max_vram:
                label += f", --max-vram {max_vram:g}"
            ref_t5 = get(runs, ref, "t5_dtype")
            if base == "bf16" and ref_t5 not in (None, "int8"):
                label += f" (reference: T5 {ref_t5})"
            ref_peak = gib(get(runs, ref, "peak_gpu_bytes")) if base == "bf16" else None
            ref_100 = per_100(runs, ref, get(runs, ref, "steps")) if base == "bf16" else None
            out.append((label, "peak GPU memory", "GiB", ref_peak, gib(get(runs, sd3, "peak_gpu_bytes")), (op, limit)))
            out.append((label, "wall time per 100 steps", "s", ref_100, per_100(runs, sd3, whole_steps), None))
    # Both sides after an untimed two-step warm-up call (the reference script's default, sd3tune's --warmup-steps).
    out.append(("generate 1024², 28 steps, CFG 7", "time per image", "s",
                get(runs, "ref_generate", "seconds_per_image"), get(runs, "sd3_generate", "seconds_per_image"),
                ("ratio<=", 0.6)))
    for part, key in (("sampling", "sampling_seconds_per_image"), ("VAE decode", "decode_seconds_per_image")):
        out.append(("generate 1024², 28 steps, CFG 7", f"of which {part}", "s", None,
                    get(runs, "sd3_generate", key), None))
    out.append(("generate 1024², 28 steps, CFG 7, first image of a fresh process (no warm-up)", "time per image", "s",
                None, get(runs, "sd3_generate_cold", "seconds_per_image"), None))
    out.append(("generate 1024², 28 steps, CFG 7", "peak GPU memory (sd3tune: T5 int8)", "GiB",
                gib(get(runs, "ref_generate", "peak_gpu_bytes")), gib(get(runs, "sd3_generate", "peak_gpu_bytes")),
                ("max<", 6.0)))
    # Blocks streamed from host memory: sd3tune's own rows (the reference script has no such mode); the baseline
    # is an earlier sd3tune build carried with the bundle, when there is one.
    label = f"train 1024², batch 1, checkpointing, blocks streamed (--max-vram {env.get('stream_max_vram_gib', 0):g})"
    for run, suffix in (("sd3_stream1024", ""), ("sd3_stream1024_baseline", ", earlier build")):
        if run in runs:
            out.append((label + suffix, "throughput", "img/s", None, get(runs, run, "images_per_second"), None))
            out.append((label + suffix, "peak GPU memory", "GiB", None, gib(get(runs, run, "train_peak_gpu_bytes")),
                        None))
    n = get(runs, "ref_t5", "captions") or env.get("captions")
    for dtype in ("int8", "bf16", "nf4"):
        label = f"prompt encoding, {n} captions × 256 tokens, T5 {dtype}"
        out.append((label, "time", "s", get(runs, "ref_t5", f"dtypes.{dtype}.seconds"),
                    get(runs, f"sd3_t5_{dtype}", "seconds"), None))
        out.append((label, "peak GPU memory", "GiB", gib(get(runs, "ref_t5", f"dtypes.{dtype}.peak_gpu_bytes")),
                    gib(get(runs, f"sd3_t5_{dtype}", "peak_gpu_bytes")), None))
    return out


def judge(ref, mine, target):
    """(ratio, target text, status) of one line."""
    ratio = mine / ref if ref and mine is not None else None
    if target is None:
        return ratio, "", ""
    kind, x = target
    if kind == "share":  # the bound's time over sd3tune's: the fraction of the floor it reaches
        return (ref / mine if ref and mine else None), "", ""
    text = {"ratio>=": f"≥ {x:g}×", "ratio<=": f"≤ {x:g}×", "max<=": f"≤ {x:g} GiB",
            "max<": f"< {x:g} GiB"}[kind]
    value = mine if kind.startswith("max") else ratio
    if value is None:
        return ratio, text, "no data"
    ok = {"ratio>=": value >= x, "ratio<=": value <= x, "max<=": value <= x, "max<": value < x}[kind]
    return ratio, text, "met" if ok else "missed"


def fmt(v, unit=""):
    if v is None:
        return "—"
    return f"{v:.3g}" if unit != "GiB" else f"{v:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json-dir", required=True)
    p.add_argument("--out", required=True, help="folder for results.json and table.md")
    args = p.parse_args()
    runs, env = {}, {}
    for name in sorted(os.listdir(args.json_dir)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(args.json_dir, name)
        if name == "env.json":
            env = json.load(open(path))
        elif ext == ".json":
            try:
                runs.setdefault(stem, {})["data"] = json.load(open(path))
            except ValueError as e:
                runs.setdefault(stem, {})["error"] = f"unreadable JSON: {e}"
        elif ext == ".status":
            runs.setdefault(stem, {})["status"] = open(path).read().strip()

    table, lines = [], []
    for workload, metric, unit, ref, mine, target in rows(runs, env):
        ratio, target_text, status = judge(ref, mine, target)
        table.append({"workload": workload, "metric": metric, "unit": unit, "reference": ref, "sd3tune": mine,
                      "ratio": ratio, "target": target_text, "status": status})
        share = target and target[0] == "share"
        ratio_text = "—" if ratio is None else (f"{100 * ratio:.0f}% of the bound" if share else f"{ratio:.2f}×")
        lines.append(f"| {workload} | {metric} ({unit}) | {fmt(ref, unit)} | {fmt(mine, unit)} | {ratio_text} | "
                     f"{target_text} | {status} |")
    notes = []
    for run, r in sorted(runs.items()):
        status = r.get("status", "")
        if status and status != "0":
            notes.append(f"`{run}`: {status if not status.isdigit() else f'exit code {status}'} (logs/{run}.log)")
        if r.get("error"):
            notes.append(f"`{run}`: {r['error']}")
        for note in (r.get("data") or {}).get("notes", []):
            notes.append(f"`{run}`: {note}")

    md = [f"GPU: {env.get('gpu', '?')} · sd3tune commit: {env.get('commit', '?')} · reference: "
          f"torch {env.get('torch', '?')}, diffusers {env.get('diffusers', '?')}, "
          f"transformers {env.get('transformers', '?')}, peft {env.get('peft', '?')}, "
          f"bitsandbytes {env.get('bitsandbytes') or 'absent'} · {env.get('started', '')}",
          "", "ratio = sd3tune / reference; for the kernel bound, the bound's time as a share of sd3tune's.", "",
          "| workload | metric | reference | sd3tune | ratio | target | status |",
          "| --- | --- | --- | --- | --- | --- | --- |", *lines]
    if notes:
        md += ["", "Notes:", *[f"- {n}" for n in notes]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"env": env, "rows": table, "runs": runs}, f, indent=2)
    print("\n".join(md))


if __name__ == "__main__":
    main()
