"""Which sampler gives the best image distribution for a given number of network evaluations, on the digits.

    python benchmarks/bench_samplers_digits.py --model_path runs/quickstart/diffusion/ema_0.995_002500.pt

Samples the main job's unconditional digits model (bash quickstart.sh trains it) with DDPM-250, DDIM and the
EDM-style samplers (Euler, Heun, DPM-Solver++(2M) on the Karras schedule, rho 7, D clipped as the scripts do)
at about 10, 20, 35, 50 and 100 network evaluations, 360 images per run (the size of the real test split),
for several seeds (image i of seed s uses noise stream s * 100000 + i), and judges every run with the digits
judge (datasets/digits_judge.py): Fréchet distance, precision and recall against the held-out real digits.
Writes RESULTS_samplers_digits.md (mean and standard deviation over seeds) and samplers_digits_fd.png
(FD against evaluations) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "datasets")]

from bench_samplers_network import Network, options_for  # noqa: E402
from digits_judge import DigitsJudge  # noqa: E402
from seed_summary import finish_plot, mean_std  # noqa: E402

from guided_diffusion.cli.fileio import atomic_write  # noqa: E402
from guided_diffusion.sampling.writer import to_uint8  # noqa: E402
from guided_diffusion.sampling.dispatch import SamplerOptions  # noqa: E402

# (sampler, steps): DDPM and DDIM step through respaced timesteps; Heun takes 2 steps - 1 evaluations.
RUNS = [("ddpm", 250)] + [("ddim", n) for n in (10, 20, 25, 35, 50, 100)] + \
       [("euler", n) for n in (10, 20, 35, 50, 100)] + [("heun", n) for n in (6, 10, 18, 25, 50)] + \
       [("dpmpp_2m", n) for n in (10, 20, 35, 50, 100)]
METRICS = ("fd", "precision", "recall")


def run(net: Network, judge: DigitsJudge, seeds: list[int], runs=RUNS) -> list[dict]:
    """Every run on every seed: NFE and the judge's metrics per seed."""
    rows = []
    for name, steps in runs:
        if name == "ddpm":
            options, respacing = SamplerOptions(sampler="ddpm"), str(steps)
        else:
            options, respacing = options_for(name, steps, clip_denoised=True)
        row = {"sampler": name, "steps": steps, "per_seed": []}
        for seed in seeds:
            net.calls = 0
            began = time.perf_counter()
            samples = to_uint8(net.sample(options, respacing, seed=seed * 100000).float())
            metrics = judge.measure(samples, None, f"{name}-{steps} seed {seed}")
            row["nfe"] = net.calls
            row["per_seed"].append({k: metrics[k] for k in METRICS} | {"seconds": time.perf_counter() - began})
        for key in METRICS:
            values = [m[key] for m in row["per_seed"]]
            row[key], row[f"{key}_std"] = mean_std(values)
        print(f"{name:9s} steps {steps:4d} nfe {row['nfe']:4d}  FD {row['fd']:7.2f} ± {row['fd_std']:5.2f}  "
              f"P {row['precision']:.3f}  R {row['recall']:.3f}", flush=True)
        rows.append(row)
    return rows


def paired_difference(row: dict, baseline: dict) -> tuple[float, float]:
    """Mean and standard deviation over seeds of FD(row) - FD(baseline): both runs start from the same noise,
    so this difference varies far less from seed to seed than either FD."""
    diffs = [a["fd"] - b["fd"] for a, b in zip(row["per_seed"], baseline["per_seed"])]
    return mean_std(diffs)


def table(rows: list[dict], baseline: tuple[str, int] = ("dpmpp_2m", 100)) -> str:
    """Markdown table sorted by NFE; FD also as the paired difference to the baseline run (default the most
    accurate ODE solve, which starts from the same noise as every other ODE sampler), else the first run."""
    base = next((r for r in rows if (r["sampler"], r["steps"]) == baseline), rows[0])
    lines = [f"| sampler | steps | NFE | FD (mean ± std over seeds) | FD - FD of {base['sampler']}-{base['steps']} "
             "(paired) | precision | recall |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["nfe"], r["fd"])):
        diff, diff_std = paired_difference(r, base)
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['fd']:.1f} ± {r['fd_std']:.1f} | "
                     f"{diff:+.1f} ± {diff_std:.1f} | {r['precision']:.3f} ± {r['precision_std']:.3f} | "
                     f"{r['recall']:.3f} ± {r['recall_std']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        ax.errorbar([r["nfe"] for r in mine], [r["fd"] for r in mine], yerr=[r["fd_std"] for r in mine],
                    marker="o", capsize=3, label=name, linestyle="-" if len(mine) > 1 else "none")
    ax.set_xscale("log")
    finish_plot(fig, ax, path, "network evaluations per image", "Fréchet distance to the real test digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="the main job's diffusion checkpoint")
    parser.add_argument("--num_samples", type=int, default=360)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--minutes", type=float, help="with --from_json: the run's duration, for the report")
    parser.add_argument("--from_json", action="store_true", help="rewrite the report and plot from the "
                        "samplers_digits.json of an earlier run in --out instead of sampling")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    began = time.time()
    if args.from_json:
        with open(os.path.join(args.out, "samplers_digits.json")) as f:
            rows = json.load(f)
        minutes = args.minutes or float("nan")
    else:
        if not os.path.isfile(args.model_path):
            raise SystemExit(f"--model_path {args.model_path}: no such file (bash quickstart.sh trains one)")
        rows = run(Network(args.model_path, args.num_samples), DigitsJudge(), seeds)
        minutes = (time.time() - began) / 60
    command = (f"python benchmarks/bench_samplers_digits.py --model_path {args.model_path} "
               f"--num_samples {args.num_samples} --seeds {args.seeds}")
    text = (f"Command: `{command}` on {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
            f"python {sys.version.split()[0]}; {minutes:.1f} min. {args.num_samples} images per run, seeds "
            f"{args.seeds}; FD, precision and recall against the 360 real test digits (datasets/digits_judge.py).\n\n"
            f"{table(rows)}\n")
    atomic_write(os.path.join(args.out, "RESULTS_samplers_digits.md"), lambda f: f.write(text.encode()))
    raw = json.dumps(rows, indent=1).encode()
    atomic_write(os.path.join(args.out, "samplers_digits.json"), lambda f: f.write(raw))
    plot(rows, os.path.join(args.out, "samplers_digits_fd.png"))
    print(text)


if __name__ == "__main__":
    main()
