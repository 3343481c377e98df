"""Choose the EMA length after training: combine the power-function EMA snapshots of a run trained with
--phema_stds into the EMA of any relative width (post-hoc EMA, Karras et al. 2024, Section 3).

    python scripts/reconstruct_ema.py --run_dir runs/image_train-... --sigma_rel 0.05,0.07,0.10 [--step N]
    python scripts/reconstruct_ema.py --run_dir runs/image_train-... --ema_rate 0.9999 [--step N]

Writes phema_recon_{sigma_rel}_{step}.pt per requested width into the run folder, beside its args.json, so every
sampling script loads it like any checkpoint of the run. --ema_rate asks for the width closest to a classic EMA of
that rate at that step (sigma_rel = 1 / ((1 - rate) step)).
"""

import argparse
import os

import numpy as np
import torch

from guided_diffusion.cli import run as cli
from guided_diffusion.training import phema
from guided_diffusion.loading.checkpoint import load_state_dict, save_state_dict


def main(argv: list[str] | None = None) -> None:
    parser = cli.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="a training run's log folder")
    parser.add_argument("--sigma_rel", default="", help="relative EMA widths, e.g. 0.05,0.07,0.10")
    parser.add_argument("--ema_rate", type=float, help="the width of a classic EMA of this rate instead")
    parser.add_argument("--step", type=int, help="the snapshot step to reconstruct at (default: the last)")
    args = parser.parse_args(argv)
    index = phema.read_index(args.run_dir)
    if not index:
        raise ValueError(f"--run_dir {args.run_dir}: no power-function EMA snapshots (phema.json); train with "
                         "--phema_stds 0.05,0.10")
    steps = sorted({entry["step"] for entry in index.values()})
    step = steps[-1] if args.step is None else args.step
    if step not in steps:
        raise ValueError(f"--step {step}: snapshots exist at steps {', '.join(map(str, steps))}")
    if (args.ema_rate is None) == (not args.sigma_rel):
        raise ValueError("give either --sigma_rel or --ema_rate")
    if args.ema_rate is not None:
        if not 0 < args.ema_rate < 1:
            raise ValueError(f"--ema_rate {args.ema_rate}: must lie in (0, 1)")
        stds = [phema.classic_ema_std(args.ema_rate, step)]
        if stds[0] > 0.28:
            raise ValueError(f"--ema_rate {args.ema_rate} at step {step} is an EMA of relative width {stds[0]:.3f}, "
                             "wider than power-function EMAs reach (0.28): use a later --step or a larger rate")
    else:
        try:
            stds = [float(s) for s in args.sigma_rel.split(",")]
        except ValueError:
            raise ValueError(f"--sigma_rel {args.sigma_rel!r}: expected widths like 0.05,0.07") from None
    if any(not 0 < s <= 0.28 for s in stds):
        raise ValueError(f"--sigma_rel {','.join(map(str, stds))}: each width must lie in (0, 0.28]")

    inputs = sorted((name, e) for name, e in index.items() if e["step"] <= step)
    nimg = next(e["nimg"] for e in index.values() if e["step"] == step)
    coefficients = phema.solve_posthoc_coefficients([e["nimg"] for _, e in inputs], [e["std"] for _, e in inputs],
                                                    nimg, stds)
    outputs = [None] * len(stds)
    for (name, _), row in zip(inputs, coefficients):
        state = load_state_dict(os.path.join(args.run_dir, name))
        for j, weight in enumerate(row):
            if outputs[j] is None:
                outputs[j] = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
            for k, v in state.items():
                outputs[j][k] += float(weight) * v.float()
    for std, state, column in zip(stds, outputs, coefficients.T):
        path = os.path.join(args.run_dir, f"phema_recon_{std:.3f}_{step:06d}.pt")
        save_state_dict(state, path)
        print(f"sigma_rel {std:.4f} at step {step}: {path} (from {len(inputs)} snapshots, largest coefficient "
              f"{float(np.abs(column).max()):.3f})")


if __name__ == "__main__":
    cli.run(main)
