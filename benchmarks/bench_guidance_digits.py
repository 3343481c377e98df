"""Every guidance method on the digits, at the same sampler cost for the main model, over several seeds.

    python benchmarks/bench_guidance_digits.py --model_path MAIN.pt --early_guide_path MAIN_AT_1_8.pt \\
        --small_guide_path SMALL.pt --classifier_path CLASSIFIER.pt --out_dir OUT

(benchmarks/guidance_digits.sh trains the four networks and runs this.) Each run samples 36 images of every
digit with Heun, 18 steps = 35 evaluations of the main model (D clipped, as the scripts), from noise streams
seed * 100000 + i, and judges them with the digits judge: recognized fraction, Fréchet distance, precision and
recall against the held-out real digits. Results are kept per run in OUT/guidance_digits.json (a rerun resumes);
the report goes to OUT/RESULTS_guidance_digits.md and the plot (FD against recognized fraction, one curve per
method) to OUT/guidance_digits.png, sample grids to OUT/grid_<run>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "datasets")]

from digits_judge import DigitsJudge  # noqa: E402
from seed_summary import finish_plot, load_results, mean_std, pass_header  # noqa: E402

from guided_diffusion.loading.checkpoint_flags import checkpoint_args  # noqa: E402
from guided_diffusion.processes.denoiser import Denoiser  # noqa: E402
from guided_diffusion.cli.fileio import atomic_write  # noqa: E402
from guided_diffusion.guidance.compose import Guidance, Interval, classifier_cond_fn  # noqa: E402
from guided_diffusion.sampling.rng import SampleRNG  # noqa: E402
from guided_diffusion.sampling.writer import save_grid, to_uint8  # noqa: E402
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sampler  # noqa: E402
from guided_diffusion.loading.loader import load_module_weights, model_fn_for  # noqa: E402
from guided_diffusion.script_util import (  # noqa: E402
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    null_label,
)

INTERVAL = "0.3,5"  # the middle noise levels, where Kynkaenniemi et al. found guidance helps
# (run name, method (the plot's curve), guidance flags as the scripts take them)
RUNS = [
    ("unguided", "unguided", {}),
    ("classifier 0.5", "classifier", {"classifier_scale": 0.5}),
    ("classifier 1", "classifier", {"classifier_scale": 1.0}),
    ("classifier 3", "classifier", {"classifier_scale": 3.0}),
    (f"classifier 1.5 in ({INTERVAL}]", "classifier, interval",
     {"classifier_scale": 1.5, "classifier_interval": INTERVAL}),
    (f"classifier 3 in ({INTERVAL}]", "classifier, interval", {"classifier_scale": 3.0, "classifier_interval": INTERVAL}),
    (f"classifier 6 in ({INTERVAL}]", "classifier, interval", {"classifier_scale": 6.0, "classifier_interval": INTERVAL}),
    ("cfg 1.25", "CFG", {"cfg_scale": 1.25}),
    ("cfg 1.5", "CFG", {"cfg_scale": 1.5}),
    ("cfg 2", "CFG", {"cfg_scale": 2.0}),
    ("cfg 3", "CFG", {"cfg_scale": 3.0}),
    (f"cfg 2 in ({INTERVAL}]", "CFG, interval", {"cfg_scale": 2.0, "cfg_interval": INTERVAL}),
    (f"cfg 3 in ({INTERVAL}]", "CFG, interval", {"cfg_scale": 3.0, "cfg_interval": INTERVAL}),
    (f"cfg 5 in ({INTERVAL}]", "CFG, interval", {"cfg_scale": 5.0, "cfg_interval": INTERVAL}),
    ("autoguide early 1.2", "autoguidance, 1/8 steps", {"guide": "early", "guide_scale": 1.2}),
    ("autoguide early 1.5", "autoguidance, 1/8 steps", {"guide": "early", "guide_scale": 1.5}),
    ("autoguide early 2.5", "autoguidance, 1/8 steps", {"guide": "early", "guide_scale": 2.5}),
    ("autoguide small 1.5", "autoguidance, smaller model", {"guide": "small", "guide_scale": 1.5}),
    ("autoguide small 2", "autoguidance, smaller model", {"guide": "small", "guide_scale": 2.0}),
    ("autoguide small 2.5", "autoguidance, smaller model", {"guide": "small", "guide_scale": 2.5}),
    ("autoguide small 3", "autoguidance, smaller model", {"guide": "small", "guide_scale": 3.0}),
    (f"autoguide early 2 + cfg 2 in ({INTERVAL}]", "combined",
     {"guide": "early", "guide_scale": 2.0, "cfg_scale": 2.0, "cfg_interval": INTERVAL}),
    (f"autoguide small 2 + classifier 1.5 in ({INTERVAL}]", "combined",
     {"guide": "small", "guide_scale": 2.0, "classifier_scale": 1.5, "classifier_interval": INTERVAL}),
]
METRICS = ("recognized", "fd", "precision", "recall")


def load_model(path: str):
    """(model_fn, diffusion, flags) of a checkpoint trained here (its args.json)."""
    flags = model_and_diffusion_defaults()
    flags.update({k: v for k, v in checkpoint_args(path).items() if k in flags})
    flags["timestep_respacing"] = ""
    model, diffusion = create_model_and_diffusion(**flags)
    load_module_weights(model, path, "model_path")
    return model_fn_for(model, flags["class_cond"]), diffusion, flags


def load_classifier(path: str) -> torch.nn.Module:
    flags = classifier_defaults()
    flags.update({k: v for k, v in checkpoint_args(path).items() if k in flags})
    return load_module_weights(create_classifier(**flags), path, "classifier_path")


class Counted:
    """A network function that counts the images it is evaluated on."""

    def __init__(self, fn):
        self.fn, self.images = fn, 0

    def __call__(self, x, t, **kwargs):
        self.images += len(x)
        return self.fn(x, t, **kwargs)


class Bench:
    """The networks, and one run = one guidance on one seed."""

    def __init__(self, args):
        model_fn, self.diffusion, self.flags = load_model(args.model_path)
        self.model_fn = Counted(model_fn)
        self.guides, self.guide_fns = {}, {}
        for name, path in (("early", args.early_guide_path), ("small", args.small_guide_path)):
            fn, diffusion, _ = load_model(path)
            self.guide_fns[name] = Counted(fn)
            self.guides[name] = Denoiser(diffusion, self.guide_fns[name])
        self.classifier = Counted(load_classifier(args.classifier_path))
        self.per_digit = args.per_digit
        self.options = SamplerOptions(sampler="heun", steps=18, clip_denoised=True)

    def guidance(self, flags: dict) -> Guidance:
        return Guidance(
            cfg_scale=flags.get("cfg_scale", 1.0),
            null_label=null_label(self.flags["num_classes"], self.flags["class_dropout_prob"]),
            cfg_interval=Interval.parse(flags.get("cfg_interval", ""), "cfg_interval"),
            guide=self.guides.get(flags.get("guide")), guide_scale=flags.get("guide_scale", 1.0),
            cond_fn=classifier_cond_fn(self.classifier, flags["classifier_scale"]) if "classifier_scale" in flags
            else None,
            classifier_interval=Interval.parse(flags.get("classifier_interval", ""), "classifier_interval"))

    def passes(self, flags: dict) -> dict:
        """Network evaluations per image of one run: the main network (null-label passes included), the guide
        and the classifier (a forward and a backward pass each), counted on one image."""
        counters = [self.model_fn, *self.guide_fns.values(), self.classifier]
        for counter in counters:
            counter.images = 0
        with torch.no_grad():
            run_sampler(self.diffusion, self.model_fn, (1, 3, 16, 16), {"y": torch.tensor([3])}, SampleRNG([0]),
                        self.options, self.guidance(flags))
        return {"main": self.model_fn.images, "guide": sum(f.images for f in self.guide_fns.values()),
                "classifier": self.classifier.images}

    def sample(self, flags: dict, seed: int, batch: int = 120) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images and their requested digits (0-9 cycled)."""
        count = 10 * self.per_digit
        labels = torch.arange(count) % 10
        guidance = self.guidance(flags)
        images = []
        for start in range(0, count, batch):
            index = range(start, min(start + batch, count))
            rng = SampleRNG([seed * 100000 + i for i in index])
            with torch.no_grad():
                x = run_sampler(self.diffusion, self.model_fn, (len(index), 3, 16, 16), {"y": labels[list(index)]},
                                rng, self.options, guidance)
            images.append(to_uint8(x))
        return np.concatenate(images), labels.numpy()


def slug(name: str) -> str:
    """A file-name form of a run name: "cfg 3 in (0.3,5]" -> "cfg_3_in_0.3_5"."""
    return re.sub(r"[^0-9A-Za-z.]+", "_", name).strip("_")


def run(bench: Bench, judge: DigitsJudge, seeds: list[int], results_path: str, out_dir: str) -> dict:
    """Every run on every seed, resuming from results_path; returns {run name: {per_seed: [...]}}."""
    results = load_results(results_path)
    for name, method, flags in RUNS:
        row = results.setdefault(name, {"method": method, "flags": flags, "per_seed": {}})
        row["passes"] = bench.passes(flags)
        for seed in seeds:
            if str(seed) in row["per_seed"]:
                continue
            began = time.perf_counter()
            images, labels = bench.sample(flags, seed)
            seconds = time.perf_counter() - began
            metrics = judge.measure(images, labels, f"{name} seed {seed}")
            row["per_seed"][str(seed)] = {k: metrics[k] for k in METRICS} | {"seconds": seconds}
            if seed == seeds[0]:
                save_grid(images[:100], os.path.join(out_dir, f"grid_{slug(name)}.png"), columns=10)
            print(f"{name:38s} seed {seed}: recognized {metrics['recognized']:.3f} FD {metrics['fd']:6.1f} "
                  f"P {metrics['precision']:.3f} R {metrics['recall']:.3f} ({seconds:.0f} s)", flush=True)
            raw = json.dumps(results, indent=1).encode()
            atomic_write(results_path, lambda f: f.write(raw))
    return results


def summary(results: dict, seeds: list[int]) -> list[dict]:
    """Mean and std over seeds of every metric, and the paired FD difference to the unguided run."""
    base = results["unguided"]["per_seed"]
    order = [name for name, _, _ in RUNS]
    rows = []
    for name, row in sorted(results.items(), key=lambda item: order.index(item[0]) if item[0] in order else 1e9):
        per_seed = [row["per_seed"][str(s)] for s in seeds if str(s) in row["per_seed"]]
        if len(per_seed) < len(seeds):
            continue
        out = {"name": name, "method": row["method"], "passes": row.get("passes")}
        for key in (*METRICS, "seconds"):
            out[key], out[f"{key}_std"] = mean_std([m[key] for m in per_seed])
        out["dfd"], out["dfd_std"] = mean_std([row["per_seed"][str(s)]["fd"] - base[str(s)]["fd"] for s in seeds])
        rows.append(out)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| run | recognized | FD | FD − unguided (paired) | precision | recall | passes / image: model + guide "
             "+ classifier |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["passes"] or {}
        passes = " + ".join(str(p.get(k, "?")) for k in ("main", "guide", "classifier"))
        lines.append(f"| {r['name']} | {r['recognized']:.3f} ± {r['recognized_std']:.3f} | {r['fd']:.1f} ± "
                     f"{r['fd_std']:.1f} | {r['dfd']:+.1f} ± {r['dfd_std']:.1f} | {r['precision']:.3f} ± "
                     f"{r['precision_std']:.3f} | {r['recall']:.3f} ± {r['recall_std']:.3f} | {passes} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in rows if r["name"] == "unguided")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot([base["recognized"]], [base["fd"]], marker="s", color="black", linestyle="none", label="unguided")
    for method in dict.fromkeys(r["method"] for r in rows if r["name"] != "unguided"):
        mine = [r for r in rows if r["method"] == method]
        sweep = method != "combined"  # a scale sweep, drawn as a curve from the unguided model
        curve = [base, *mine] if sweep else mine
        ax.errorbar([r["recognized"] for r in curve], [r["fd"] for r in curve], yerr=[r["dfd_std"] for r in curve],
                    marker="o" if sweep else "*", markersize=5 if sweep else 10, capsize=3, label=method,
                    linestyle="-" if sweep else "none")
    ax.set_title("error bars: spread over seeds of the paired FD difference to unguided", fontsize=8)
    finish_plot(fig, ax, path, "fraction recognized as the requested digit", "Fréchet distance to the real test digits",
                legend_size=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag in ("model_path", "early_guide_path", "small_guide_path", "classifier_path", "out_dir"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per_digit", type=int, default=36)
    args = parser.parse_args()
    for flag in ("model_path", "early_guide_path", "small_guide_path", "classifier_path"):
        if not os.path.isfile(getattr(args, flag)):
            raise SystemExit(f"--{flag} {getattr(args, flag)}: no such file (benchmarks/guidance_digits.sh trains it)")
    os.makedirs(args.out_dir, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    began = time.time()
    results = run(Bench(args), DigitsJudge(verbose=False), seeds,
                  os.path.join(args.out_dir, "guidance_digits.json"), args.out_dir)
    rows = summary(results, seeds)
    text = (f"{pass_header(began)} {10 * args.per_digit} images per run (digits 0-9 cycled), "
            f"Heun 18 steps (35 evaluations of the main model), seeds {args.seeds}; mean ± std over seeds.\n\n"
            f"{table(rows)}\n")
    atomic_write(os.path.join(args.out_dir, "RESULTS_guidance_digits.md"), lambda f: f.write(text.encode()))
    plot(rows, os.path.join(args.out_dir, "guidance_digits.png"))
    print(text)


if __name__ == "__main__":
    main()
