"""Workload 5 on the reference side: SD3 prompt encoding (CLIP-L, CLIP-G and T5-XXL, max_sequence_length 256,
no negative prompt) of a captions file in batches, per T5 dtype, as `sd3tune encode-prompt --prompts-file` does
it. Per dtype: load time, encoding time of all captions (after one untimed batch), and the peak GPU memory of that
dtype alone (the previous encoders are freed and the counter reset). int8 and nf4 need bitsandbytes; without it
they are skipped with a note."""
import time

import torch

from common import Timer, base_parser, free, load_t5, peak_bytes, reference_t5_dtype, reset_peak, text_pipeline, \
    write_results


def main():
    p = base_parser(__doc__)
    p.add_argument("--captions", required=True, help="text file, one caption a line")
    p.add_argument("--dtypes", default="int8,bf16,nf4")
    p.add_argument("--max-sequence-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="captions per encoder call (sd3tune's batch)")
    args = p.parse_args()
    device = torch.device(args.device)
    captions = [line.strip() for line in open(args.captions) if line.strip()]
    results = {"workload": "t5_encode", "captions": len(captions), "max_sequence_length": args.max_sequence_length,
               "batch": args.batch, "dtypes": {}, "notes": []}
    for dtype in args.dtypes.split(","):
        usable, note = reference_t5_dtype(dtype, device)
        if usable != dtype:
            results["notes"].append(f"{dtype} skipped: {note.split(':')[0]}")
            continue
        free(device)
        reset_peak(device)
        t0 = time.perf_counter()
        text = text_pipeline(args.model, load_t5(args.model, dtype, device), device)
        load_seconds = time.perf_counter() - t0
        encode = lambda batch: text.encode_prompt(prompt=batch, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=args.max_sequence_length)
        with torch.no_grad():
            encode(captions[:args.batch])
            with Timer(device) as t:
                for i in range(0, len(captions), args.batch):
                    encode(captions[i:i + args.batch])
        results["dtypes"][dtype] = {"seconds": t.seconds, "load_seconds": load_seconds,
                                    "peak_gpu_bytes": peak_bytes(device)}
        text = None  # the next dtype's peak starts without these encoders
    write_results(args.out, results, device)


if __name__ == "__main__":
    main()
