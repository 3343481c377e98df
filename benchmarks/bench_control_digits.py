"""Separate semantic and control conditioning on the digits: sample every arm of benchmarks/control_digits.sh and
judge it, plus the leak test.

    python benchmarks/bench_control_digits.py --runs_dir runs/control_digits --out_dir OUT

Each arm's EMA (0.995) samples 36 images of every digit with Heun, 18 steps, CFG 2, the default control (the whole
image, not flipped, source size 16), from noise streams seed * 100000 + i, over --seeds; judged by the digits judge
(recognized, FD, precision, recall) and by the share of samples with ink (gray > 96) in the leftmost or rightmost
column, which real digits rarely have (1.7% of the test split) and crops that cut a digit do. Leak test (arms with
controls, first seed): the same noise with size 8 instead of 16; the share of samples whose recognized digit
changes. Results in OUT/control_digits.json (a rerun resumes); report OUT/RESULTS_control_digits.md, plot
OUT/control_digits.png, grids OUT/grid_<arm>_size<s>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "datasets")]

from bench_edm_recipes_digits import load_denoiser, sample_digits, trained_steps  # noqa: E402
from digits_features import real_images  # noqa: E402
from digits_judge import DigitsJudge  # noqa: E402
from seed_summary import finish_plot, load_results, mean_std, pass_header  # noqa: E402

from guided_diffusion.loading.checkpoint_flags import checkpoint_args  # noqa: E402
from guided_diffusion.networks.control import parse_control  # noqa: E402
from guided_diffusion.cli.fileio import atomic_write  # noqa: E402
from guided_diffusion.guidance.compose import Guidance  # noqa: E402
from guided_diffusion.sampling.writer import save_grid  # noqa: E402
from guided_diffusion.sampling.dispatch import SamplerOptions  # noqa: E402

ARMS = {"a": "no control conditioning", "b": "controls summed into the class embedding",
        "c": "separate, gated controls", "d": "separate, gated controls + class attention"}
METRICS = ("recognized", "fd", "precision", "recall", "side_ink")


def side_ink(images: np.ndarray, threshold: float = 96) -> float:
    """Share of uint8 NHWC images with ink in their leftmost or rightmost column."""
    gray = images.astype(np.float64).mean(axis=3)
    return float((np.maximum(gray[:, :, 0].max(1), gray[:, :, -1].max(1)) > threshold).mean())


def sample(denoiser, has_control: bool, size: int, seed: int, per_digit: int) -> tuple:
    rows = {"control": torch.tensor(parse_control(f"size={size}", 16))} if has_control else None
    return sample_digits(denoiser, SamplerOptions(sampler="heun", steps=18, clip_denoised=False),
                         Guidance(cfg_scale=2.0, null_label=10), seed, per_digit, rows)


def run(args, judge: DigitsJudge, results_path: str) -> dict:
    results = load_results(results_path)
    seeds = [int(s) for s in args.seeds.split(",")]
    for arm in ARMS:
        run_dir = os.path.join(args.runs_dir, arm)
        path = os.path.join(run_dir, f"ema_0.995_{trained_steps(run_dir):06d}.pt")
        has_control = bool(checkpoint_args(path).get("control_cond"))
        jobs = [(16, s) for s in seeds] + ([(8, seeds[0])] if has_control else [])
        denoiser = None
        for size, seed in jobs:
            key = f"{arm} size {size} seed {seed}"
            if key in results:
                continue
            if denoiser is None:
                denoiser, _ = load_denoiser(path)
            began = time.perf_counter()
            images, labels = sample(denoiser, has_control, size, seed, args.per_digit)
            metrics = judge.measure(images, labels, key)
            results[key] = {k: metrics[k] for k in METRICS if k in metrics} | {
                "side_ink": side_ink(images), "read": judge.read_digits(images).tolist(),
                "seconds": time.perf_counter() - began}
            if seed == seeds[0]:
                save_grid(images[:100], os.path.join(args.out_dir, f"grid_{arm}_size{size}.png"), columns=10)
            r = results[key]
            print(f"{key:18s}: recognized {r['recognized']:.3f} FD {r['fd']:6.1f} P {r['precision']:.3f} "
                  f"R {r['recall']:.3f} side ink {r['side_ink']:.3f} ({r['seconds']:.0f} s)", flush=True)
            raw = json.dumps(results).encode()
            atomic_write(results_path, lambda f: f.write(raw))
    return results


def report(results: dict, seeds: list[int], runs_dir: str) -> tuple[str, list[dict]]:
    real, _ = real_images("test")
    lines = [f"| arm | steps | recognized | FD | precision | recall | side ink (real: {side_ink(real):.3f}) | "
             "recognized digit changes, size 8 vs 16 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for arm, name in ARMS.items():
        per_seed = [results[f"{arm} size 16 seed {s}"] for s in seeds if f"{arm} size 16 seed {s}" in results]
        if len(per_seed) < len(seeds):
            continue
        row = {"arm": arm, "name": name}
        for key in METRICS:
            row[key], row[f"{key}_std"] = mean_std([m[key] for m in per_seed])
        small = results.get(f"{arm} size 8 seed {seeds[0]}")
        base = results[f"{arm} size 16 seed {seeds[0]}"]
        row["leak"] = None if small is None else float(np.mean(np.array(small["read"]) != np.array(base["read"])))
        rows.append(row)
        leak = "—" if row["leak"] is None else f"{row['leak']:.3f}"
        lines.append(f"| ({arm}) {name} | {trained_steps(os.path.join(runs_dir, arm))} | {row['recognized']:.3f} ± "
                     f"{row['recognized_std']:.3f} | {row['fd']:.1f} ± {row['fd_std']:.1f} | {row['precision']:.3f} ± "
                     f"{row['precision_std']:.3f} | {row['recall']:.3f} ± {row['recall_std']:.3f} | "
                     f"{row['side_ink']:.3f} ± {row['side_ink_std']:.3f} | {leak} |")
    return "\n".join(lines), rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        ax.errorbar([r["side_ink"]], [r["fd"]], xerr=[r["side_ink_std"]], yerr=[r["fd_std"]], marker="o", capsize=3,
                    linestyle="none", label=f"({r['arm']}) {r['name']}")
    finish_plot(fig, ax, path, "share of samples with ink in the side columns",
                "Fréchet distance to the real test digits", legend_size=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per_digit", type=int, default=36)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    began = time.time()
    results = run(args, DigitsJudge(verbose=False), os.path.join(args.out_dir, "control_digits.json"))
    seeds = [int(s) for s in args.seeds.split(",")]
    table, rows = report(results, seeds, args.runs_dir)
    text = (f"{pass_header(began)} {10 * args.per_digit} images per run (digits 0-9 cycled), Heun 18 "
            f"steps, CFG 2, control: whole image, size 16; seeds {args.seeds}; mean ± std over seeds.\n\n{table}\n")
    atomic_write(os.path.join(args.out_dir, "RESULTS_control_digits.md"), lambda f: f.write(text.encode()))
    plot(rows, os.path.join(args.out_dir, "control_digits.png"))
    print(text)


if __name__ == "__main__":
    main()
