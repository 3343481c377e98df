"""ADM's, EDM's and EDM2's training recipes on the digits, sampled at equal cost, over several seeds.

    python benchmarks/bench_edm_recipes_digits.py --runs_dir runs/edm_recipes_digits --sigma_rels 0.05,0.10,... \\
        --out_dir OUT

(benchmarks/edm_recipes_digits.sh trains the runs adm, adm-edm and edm2 and reconstructs their EMAs.) Every
checkpoint samples 36 images of every digit with Heun, 18 steps = 35 evaluations (D unclipped for the sigma-space
networks as EDM samples them, clipped for the ADM network as the scripts do), without and with CFG, from noise
streams seed * 100000 + i, and is judged by the digits judge. Checkpoints: each run's classic EMA (0.995) and its
post-hoc EMA reconstructions: the EDM2 run's at every --sigma_rels (with CFG on the first seed only), the ADM runs'
at 0.05, 0.10 and 0.20. Results per run in OUT/edm_recipes_digits.json (a rerun
resumes); report OUT/RESULTS_edm_recipes_digits.md, plot OUT/edm_recipes_sigma_rel.png, grids OUT/grid_*.png.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "datasets")]

from digits_judge import DigitsJudge  # noqa: E402
from seed_summary import finish_plot, load_results, mean_std, pass_header  # noqa: E402

from guided_diffusion.networks import sigma_space  # noqa: E402
from guided_diffusion.loading.checkpoint_flags import checkpoint_args  # noqa: E402
from guided_diffusion.cli.fileio import atomic_write  # noqa: E402
from guided_diffusion.guidance.compose import Guidance  # noqa: E402
from guided_diffusion.sampling.rng import SampleRNG  # noqa: E402
from guided_diffusion.sampling.writer import save_grid, to_uint8  # noqa: E402
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sigma_sampler  # noqa: E402
from guided_diffusion.loading.loader import load_model  # noqa: E402
from guided_diffusion.script_util import create_model_and_diffusion  # noqa: E402

ARMS = ("adm", "adm-edm", "edm2")
SWEEP_ARM = "edm2"  # the run whose EMA length is swept over every --sigma_rels; the others get ADM_SIGMA_RELS
ADM_SIGMA_RELS = (0.05, 0.10, 0.20)
CFG_SCALES = (1.0, 2.0)
METRICS = ("recognized", "fd", "precision", "recall")


def load_denoiser(path: str):
    """(D(x; sigma), whether it predicts in sigma space) of a checkpoint trained here, from its args.json."""
    architecture = sigma_space.architecture_defaults()
    flags = argparse.Namespace(**{**architecture, **{k: v for k, v in checkpoint_args(path).items()
                                                     if k in architecture}, "timestep_respacing": ""})
    loaded = load_model(create_model_and_diffusion, flags, architecture, path, "model_path")
    return loaded.denoiser, not loaded.timesteps


def trained_steps(run_dir: str) -> int:
    """The step count a run trained (its last model file)."""
    return max(int(os.path.basename(f)[5:11]) for f in glob.glob(os.path.join(run_dir, "model*.pt")))


def checkpoints(runs_dir: str, arm: str, sigma_rels: list[float]) -> dict[str, str]:
    """{label: path}: the classic EMA and the reconstructions of one run."""
    folder = os.path.join(runs_dir, arm)
    out = {"ema 0.995": sorted(glob.glob(os.path.join(folder, "ema_0.995_*.pt")))[-1]}
    for std in sigma_rels:
        out[f"sigma_rel {std:.3f}"] = sorted(glob.glob(os.path.join(folder, f"phema_recon_{std:.3f}_*.pt")))[-1]
    return out


def sample_digits(denoiser, options: SamplerOptions, guidance: Guidance, seed: int, per_digit: int,
                  rows: dict[str, torch.Tensor] | None = None, batch: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """10 * per_digit 16x16 images asking for digits 0-9 in turn, sample i from seed * 100000 + i; `rows`: more
    conditioning, one row shared by every sample. Returns (uint8 NHWC images, labels)."""
    count = 10 * per_digit
    labels = torch.arange(count) % 10
    images = []
    for start in range(0, count, batch):
        index = list(range(start, min(start + batch, count)))
        kwargs = {"y": labels[index], **{k: v.expand(len(index), -1) for k, v in (rows or {}).items()}}
        with torch.no_grad():
            x = run_sigma_sampler(denoiser, (len(index), 3, 16, 16), kwargs,
                                  SampleRNG([seed * 100000 + i for i in index]), options, guidance)
        images.append(to_uint8(x))
    return np.concatenate(images), labels.numpy()


def sample(denoiser, sigma_space: bool, cfg: float, seed: int, per_digit: int) -> tuple:
    options = SamplerOptions(sampler="heun", steps=18, clip_denoised=not sigma_space)
    return sample_digits(denoiser, options, Guidance(cfg_scale=cfg, null_label=10), seed, per_digit)


def run(args, judge: DigitsJudge, results_path: str) -> dict:
    results = load_results(results_path)
    seeds = [int(s) for s in args.seeds.split(",")]
    sigma_rels = [float(s) for s in args.sigma_rels.split(",")]
    for arm in ARMS:
        for label, path in checkpoints(args.runs_dir, arm, sigma_rels if arm == SWEEP_ARM else ADM_SIGMA_RELS).items():
            denoiser = None
            for cfg in CFG_SCALES:
                name = f"{arm} | {label} | cfg {cfg:g}"
                row = results.setdefault(name, {"arm": arm, "checkpoint": label, "cfg": cfg, "per_seed": {}})
                # The EDM2 sweep with CFG on the first seed only (time on 2 cores); everything else on every seed.
                sweep_cfg = arm == SWEEP_ARM and label != "ema 0.995" and cfg != 1
                for seed in seeds[:1] if sweep_cfg else seeds:
                    if str(seed) in row["per_seed"]:
                        continue
                    if denoiser is None:
                        denoiser, sigma_space = load_denoiser(path)
                    began = time.perf_counter()
                    images, labels = sample(denoiser, sigma_space, cfg, seed, args.per_digit)
                    seconds = time.perf_counter() - began
                    metrics = judge.measure(images, labels, f"{name} seed {seed}")
                    row["per_seed"][str(seed)] = {k: metrics[k] for k in METRICS} | {"seconds": seconds}
                    if seed == seeds[0] and label == "ema 0.995":
                        save_grid(images[:100], os.path.join(args.out_dir, f"grid_{arm}_cfg{cfg:g}.png"), columns=10)
                    print(f"{name:40s} seed {seed}: recognized {metrics['recognized']:.3f} FD {metrics['fd']:6.1f} "
                          f"P {metrics['precision']:.3f} R {metrics['recall']:.3f} ({seconds:.0f} s)", flush=True)
                    raw = json.dumps(results, indent=1).encode()
                    atomic_write(results_path, lambda f: f.write(raw))
    return results


def summary(results: dict, seeds: list[int]) -> list[dict]:
    """Mean and std over the seeds each row was sampled on (n: how many)."""
    rows = []
    for name, row in results.items():
        per_seed = [row["per_seed"][str(s)] for s in seeds if str(s) in row["per_seed"]]
        if not per_seed:
            continue
        out = {"name": name, "arm": row["arm"], "checkpoint": row["checkpoint"], "cfg": row["cfg"],
               "n": len(per_seed)}
        for key in (*METRICS, "seconds"):
            out[key], out[f"{key}_std"] = mean_std([m[key] for m in per_seed])
        rows.append(out)
    return rows


def _line(r: dict, first: str) -> str:
    return (f"| {first} | {r['n']} | {r['recognized']:.3f} ± {r['recognized_std']:.3f} | {r['fd']:.1f} ± "
            f"{r['fd_std']:.1f} | {r['precision']:.3f} ± {r['precision_std']:.3f} | {r['recall']:.3f} ± "
            f"{r['recall_std']:.3f} |")


def tables(rows: list[dict], steps: dict) -> str:
    head = "| {} | seeds | recognized | FD | precision | recall |\n|---|---:|---:|---:|---:|---:|"
    lines = ["Recipes (classic EMA 0.995, and each run's best post-hoc length by mean FD — chosen on the same seeds, "
             "so slightly optimistic):", "", head.format("recipe, EMA, CFG")]
    for cfg in CFG_SCALES:
        for arm in ARMS:
            mine = [r for r in rows if r["arm"] == arm and r["cfg"] == cfg]
            if not mine:
                continue
            classic = next(r for r in mine if r["checkpoint"] == "ema 0.995")
            best = min((r for r in mine if r["checkpoint"] != "ema 0.995"), key=lambda r: r["fd"])
            lines.append(_line(classic, f"{arm} ({steps.get(arm, '?')} steps), ema 0.995, cfg {cfg:g}"))
            lines.append(_line(best, f"{arm}, {best['checkpoint']}, cfg {cfg:g}"))
    lines += ["", "FD against the post-hoc EMA length (every run, without and with CFG):", "",
              head.format("recipe, sigma_rel, CFG")]
    for r in sorted(rows, key=lambda r: (r["arm"], r["cfg"], r["checkpoint"])):
        if r["checkpoint"] != "ema 0.995":
            lines.append(_line(r, f"{r['arm']}, {r['checkpoint'].split()[-1]}, cfg {r['cfg']:g}"))
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for arm in ARMS:
        for cfg in CFG_SCALES:
            curve = sorted((r for r in rows if r["arm"] == arm and r["cfg"] == cfg and r["checkpoint"] != "ema 0.995"),
                           key=lambda r: float(r["checkpoint"].split()[-1]))
            if curve:
                ax.errorbar([float(r["checkpoint"].split()[-1]) for r in curve], [r["fd"] for r in curve],
                            yerr=[r["fd_std"] for r in curve], marker="o", capsize=3,
                            linestyle="-" if cfg == 1 else "--", label=f"{arm}, cfg {cfg:g}")
    ax.set_xscale("log")
    finish_plot(fig, ax, path, "post-hoc EMA length sigma_rel", "Fréchet distance to the real test digits",
                legend_size=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--sigma_rels", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per_digit", type=int, default=36)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    began = time.time()
    results = run(args, DigitsJudge(verbose=False), os.path.join(args.out_dir, "edm_recipes_digits.json"))
    rows = summary(results, [int(s) for s in args.seeds.split(",")])
    steps = {arm: trained_steps(os.path.join(args.runs_dir, arm)) for arm in ARMS}
    text = (f"{pass_header(began)} {10 * args.per_digit} images per run (digits 0-9 cycled), "
            f"Heun 18 steps (35 evaluations; CFG doubles the batch), seeds {args.seeds}; mean ± std over seeds.\n\n"
            f"{tables(rows, steps)}\n")
    atomic_write(os.path.join(args.out_dir, "RESULTS_edm_recipes_digits.md"), lambda f: f.write(text.encode()))
    plot(rows, os.path.join(args.out_dir, "edm_recipes_sigma_rel.png"))
    print(text)


if __name__ == "__main__":
    main()
