"""Summarize a digits judge results.json whose set names are GROUP@SEED: per group, the mean and standard
deviation over seeds of every metric, and FD as the paired difference to the first group (same seeds).

    python benchmarks/seed_summary.py runs/.../judge/results.json [--column "guidance scale"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def load_results(path: str) -> dict:
    """The results a benchmark saved so far (empty on the first pass), so a rerun resumes."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def pass_header(began: float) -> str:
    """The machine, torch and this pass's minutes: the first sentence of a RESULTS file."""
    import torch

    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}; this pass "
            f"{(time.time() - began) / 60:.1f} min.")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def finish_plot(fig, ax, path: str, xlabel: str, ylabel: str, legend_size: int = 8) -> None:
    """Label, legend and grid the axes, then write the figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from guided_diffusion.cli.fileio import atomic_write

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def summarize(results: dict) -> dict[str, dict]:
    """{group: {metric: (mean, std), "fd_diff": (mean, std), "seeds": n}} in the order groups first appear."""
    groups: dict[str, dict[str, dict]] = {}
    for name, metrics in results.items():
        group, sep, seed = name.rpartition("@")
        if not sep:
            raise SystemExit(f"set name {name!r} is not GROUP@SEED")
        groups.setdefault(group, {})[seed] = metrics
    first = next(iter(groups.values()))
    out = {}
    for group, by_seed in groups.items():
        row = {"seeds": len(by_seed)}
        for key in ("recognized", "fd", "precision", "recall"):
            values = [m[key] for m in by_seed.values()]
            row[key] = mean_std(values)
        diffs = [m["fd"] - first[seed]["fd"] for seed, m in by_seed.items() if seed in first]
        row["fd_diff"] = mean_std(diffs)
        out[group] = row
    return out


def table(summary: dict, column: str) -> str:
    first = next(iter(summary))
    lines = [f"| {column} | recognized | FD | FD - FD at {first} (paired) | precision | recall | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for group, r in summary.items():
        lines.append(f"| {group} | {100 * r['recognized'][0]:.1f} ± {100 * r['recognized'][1]:.1f}% | "
                     f"{r['fd'][0]:.1f} ± {r['fd'][1]:.1f} | {r['fd_diff'][0]:+.1f} ± {r['fd_diff'][1]:.1f} | "
                     f"{r['precision'][0]:.3f} ± {r['precision'][1]:.3f} | {r['recall'][0]:.3f} ± {r['recall'][1]:.3f} | "
                     f"{r['seeds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="results.json of datasets/digits_judge.py")
    parser.add_argument("--column", default="group")
    args = parser.parse_args()
    with open(args.results) as f:
        print(table(summarize(json.load(f)), args.column))


if __name__ == "__main__":
    main()
