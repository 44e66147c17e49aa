"""Adds up an Nsight Compute raw CSV (`ncu --metrics gpu__time_duration.sum --csv --page raw`): GPU time per
kernel name, its launches, its share, and the time per unit (a training update, a denoising step, a decode), as a
Markdown table on stdout. With capture limited to whole units (SD3_PROFILE_UPDATE, SD3_PROFILE_STEP or
SD3_PROFILE_DECODE, and ncu --profile-from-start off), nothing else is in the totals."""
import argparse
import collections
import csv
import re

UNIT_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def short_name(name):
    """The kernel's function name without its template arguments and parameter list."""
    name = re.sub(r"\(.*\)$", "", name)
    depth, out = 0, []
    for ch in name:
        depth += ch == "<"
        if depth == 0:
            out.append(ch)
        depth -= ch == ">"
    return "".join(out).replace("void ", "").strip() or name


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("csv_file")
    p.add_argument("--units", type=int, required=True, help="units (updates, steps, decodes) the capture holds")
    p.add_argument("--unit", default="update", help="what one unit is, for the headings")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    # ncu writes its own messages (==PROF==) before the table: start at the header row.
    lines = open(args.csv_file, newline="").read().splitlines()
    start = next(i for i, line in enumerate(lines) if '"Kernel Name"' in line)
    rows = list(csv.DictReader(lines[start:]))
    metric = "gpu__time_duration.sum"
    units = rows[0] if rows and not rows[0].get("ID") else {}
    scale = UNIT_NS.get(units.get(metric, "nsecond"), 1.0)
    total, launches = collections.Counter(), collections.Counter()
    for r in rows:
        if not r.get("ID") or not r.get(metric):
            continue
        name = short_name(r["Kernel Name"])
        total[name] += float(r[metric].replace(",", "")) * scale
        launches[name] += 1
    all_ns = sum(total.values())
    n, u = args.units, args.unit
    print(f"GPU time in kernels: {all_ns / 1e6:.1f} ms over {sum(launches.values())} launches; "
          f"per {u} {all_ns / n / 1e6:.1f} ms and {sum(launches.values()) / n:.0f} launches "
          f"(compare with the run's seconds per {u}: the difference is time the GPU waited).\n")
    print(f"| kernel | launches per {u} | ms per {u} | share |")
    print("| --- | --- | --- | --- |")
    for name, ns in total.most_common(args.top):
        print(f"| `{name}` | {launches[name] / n:.0f} | {ns / n / 1e6:.2f} | {100 * ns / all_ns:.1f}% |")


if __name__ == "__main__":
    main()
