"""What a training run keeps between processes and restarts: checkpoint file names and steps, the newest complete
checkpoint set ("auto"), every rank's RNG state, the parsed EMA flags and args.json."""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import torch

from guided_diffusion import dist_util
from guided_diffusion.cli.fileio import atomic_write

_STEP_RE = re.compile(r"(?:model|opt|ema_[0-9.]+_)(\d+)\.pt$")


def parse_resume_step_from_filename(filename: str) -> int:
    """The step in model{N}.pt, ema_{rate}_{N}.pt or opt{N}.pt (0 for other names)."""
    match = _STEP_RE.search(os.path.basename(filename))
    return int(match.group(1)) if match else 0


def parse_phema_stds(text: str) -> list[float]:
    """--phema_stds "0.05,0.10": relative widths (sigma_rel) of power-function EMAs, each in (0, 0.28]."""
    if not text:
        return []
    try:
        stds = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--phema_stds {text!r}: expected comma-separated widths like 0.05,0.10") from None
    if not stds or any(not 0 < s <= 0.28 for s in stds):
        raise ValueError(f"--phema_stds {text!r}: each width must lie in (0, 0.28]")
    if len({f"{s:.3f}" for s in stds}) != len(stds):
        raise ValueError(f"--phema_stds {text!r}: widths must differ in their first three decimals (file names)")
    return stds


def parse_ema_rates(ema_rate) -> list[float]:
    """EMA rates from "0.9999,0.999" (or a float, or a list)."""
    if isinstance(ema_rate, (int, float)):
        rates = [float(ema_rate)]
    elif isinstance(ema_rate, str):
        try:
            rates = [float(x) for x in ema_rate.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--ema_rate {ema_rate!r}: expected comma-separated rates like 0.9999,0.999") from None
    else:
        rates = [float(x) for x in ema_rate]
    if not all(0 <= r < 1 for r in rates):  # also refuses nan
        raise ValueError(f"--ema_rate {ema_rate!r}: each rate must lie in [0, 1)")
    return rates


def _complete_steps(folder: str, ema_rates: list[float]) -> list[int]:
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    steps = {parse_resume_step_from_filename(n) for n in names if n.startswith("model") and n.endswith(".pt")}
    return sorted(
        s for s in steps
        if f"opt{s:06d}.pt" in names and all(f"ema_{r}_{s:06d}.pt" in names for r in ema_rates)
    )


def find_resume_checkpoint(spec: str, log_dir: str, ema_rates: list[float] = ()) -> str:
    """The checkpoint to resume from: "" (none), a path, or "auto" = the newest complete set in log_dir."""
    if not spec:
        return ""
    if spec == "auto":
        steps = _complete_steps(log_dir, list(ema_rates))
        saved = _complete_steps(log_dir, [])  # model and optimizer written: the save finished (EMAs come first)
        if saved and (not steps or saved[-1] > steps[-1]):
            missing = next(f"ema_{r}_{saved[-1]:06d}.pt" for r in ema_rates
                           if not os.path.exists(os.path.join(log_dir, f"ema_{r}_{saved[-1]:06d}.pt")))
            raise ValueError(f"--resume_checkpoint auto: {log_dir} holds model{saved[-1]:06d}.pt without {missing}, "
                             "so its run kept other EMAs: resume with its --ema_rate, or use another --log_dir")
        return os.path.join(log_dir, f"model{steps[-1]:06d}.pt") if steps else ""
    if "://" not in spec and not os.path.exists(spec):
        raise FileNotFoundError(f"--resume_checkpoint not found: {spec}")
    return spec


def capture_rng_state() -> dict:
    """This process's torch, CUDA, numpy and Python RNG states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo capture_rng_state."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_args_json(args: dict, folder: str) -> None:
    """Save the full set of flags as folder/args.json (rank 0), for sampling scripts to read back."""
    if dist_util.get_rank() == 0:
        data = json.dumps(args, indent=1, sort_keys=True).encode()
        atomic_write(os.path.join(folder, "args.json"), lambda f: f.write(data))
