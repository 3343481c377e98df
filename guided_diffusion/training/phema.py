"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", Section 3 and Appendix C).

A power-function EMA of the training weights averages step t' with weight proportional to t'^gamma up to the
current time t (counted in images); its relative width is sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2
(gamma + 3))). Snapshots of two such EMAs taken during training can be combined linearly into the EMA of any other
width at any snapshot time: the coefficients solve the least-squares fit of the target profile by the stored
profiles, a linear system in their inner products, which have a closed form.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from guided_diffusion.loading.checkpoint import save_state_dict
from guided_diffusion.cli.fileio import atomic_write, read_json


def exp_to_std(exp) -> np.ndarray:
    """sigma_rel of the power-function profile with exponent gamma."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def std_to_exp(std) -> np.ndarray:
    """The exponent gamma of the profile of width sigma_rel: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2 (exp_to_std inverted)."""
    std = np.float64(std)
    inverse_squares = std.reshape(-1) ** -2
    roots = [np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max() for s in inverse_squares]
    return np.float64(roots).reshape(std.shape)


def power_function_beta(std, t_next, t_delta) -> np.ndarray:
    """The EMA decay of one training step that keeps a power-function profile of width std: the average at
    t_next (images) is beta * average + (1 - beta) * weights, beta = (1 - t_delta / t_next)^(gamma + 1)."""
    return (1 - np.float64(t_delta) / np.float64(t_next)) ** (std_to_exp(std) + 1)


def power_function_correlation(a_ofs, a_std, b_ofs, b_std) -> np.ndarray:
    """Inner product of two normalized power-function profiles (times a_ofs, b_ofs; widths a_std, b_std):
    (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) max(t_a, t_b)) times (t_a / t_b)^g_b if t_a < t_b, else (t_b / t_a)^g_a."""
    a_exp, b_exp = std_to_exp(a_std), std_to_exp(b_std)
    a_ofs, b_ofs = np.float64(a_ofs), np.float64(b_ofs)
    ratio = np.where(a_ofs < b_ofs, (a_ofs / b_ofs) ** b_exp, (b_ofs / a_ofs) ** a_exp)
    return (a_exp + 1) * (b_exp + 1) * ratio / ((a_exp + b_exp + 1) * np.maximum(a_ofs, b_ofs))


def solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std) -> np.ndarray:
    """The [in, out] matrix whose column j combines the stored EMAs (times in_ofs, widths in_std) into the EMA of
    time out_ofs[j] and width out_std[j]: least squares on the profiles, columns summing to 1."""
    in_ofs, in_std = (np.float64(v).reshape(-1) for v in np.broadcast_arrays(in_ofs, in_std))
    out_ofs, out_std = (np.float64(v).reshape(-1) for v in np.broadcast_arrays(out_ofs, out_std))
    gram = power_function_correlation(in_ofs[:, None], in_std[:, None], in_ofs[None, :], in_std[None, :])
    target = power_function_correlation(in_ofs[:, None], in_std[:, None], out_ofs[None, :], out_std[None, :])
    coefficients = np.linalg.solve(gram, target)
    return coefficients / coefficients.sum(axis=0)


def classic_ema_std(rate: float, steps: int) -> float:
    """sigma_rel of a classic EMA with decay `rate` per step after `steps` steps: its exponential profile has a
    standard deviation of about 1 / (1 - rate) steps (EDM2 Appendix C compares the two this way)."""
    return float(1 / ((1 - rate) * steps))


class PowerFunctionEMA:
    """Power-function EMAs of a list of float32 tensors, one per relative width in stds, updated after every
    optimizer step with the number of training images seen so far."""

    def __init__(self, params: list, stds: list[float]):
        self.stds = list(stds)
        self.averages = [[p.detach().clone().float() for p in params] for _ in self.stds]

    @torch.no_grad()
    def update(self, params: list, nimg: int, batch: int) -> None:
        """Average in the weights after a step that brought the count of training images to nimg."""
        for std, average in zip(self.stds, self.averages):
            beta = float(power_function_beta(std, nimg, batch))
            for a, p in zip(average, params):
                a.lerp_(p.detach().float(), 1 - beta)

    def state_dict(self) -> dict:
        return {"stds": self.stds, "averages": [[a.clone() for a in average] for average in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        if [round(s, 6) for s in state["stds"]] != [round(s, 6) for s in self.stds]:
            raise ValueError(f"--phema_stds {','.join(map(str, self.stds))} differs from the resumed run's "
                             f"{','.join(map(str, state['stds']))}")
        for average, saved in zip(self.averages, state["averages"]):
            for a, s in zip(average, saved):
                a.copy_(s)

    def save_snapshots(self, folder: str, step: int, nimg: int, to_state_dict) -> None:
        """phema_{std}_{step}.pt (float16 state dicts; to_state_dict maps a parameter list to one) and their
        widths, steps and image counts in folder/phema.json, for scripts/reconstruct_ema.py."""
        index = read_index(folder)
        for std, average in zip(self.stds, self.averages):
            name = f"phema_{std:.3f}_{step:06d}.pt"
            state = to_state_dict(average)
            save_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                            os.path.join(folder, name))
            index[name] = {"std": std, "step": step, "nimg": nimg}
        _write_index(folder, index)

    @staticmethod
    def forget_snapshots_after(folder: str, step: int) -> None:
        """On resuming at `step`, drop later snapshots of an abandoned continuation from the index (their files
        are overwritten as the run reaches those steps again)."""
        index = read_index(folder)
        kept = {name: entry for name, entry in index.items() if entry["step"] <= step}
        if kept != index:
            _write_index(folder, kept)


def _write_index(folder: str, index: dict) -> None:
    data = json.dumps(index, indent=1, sort_keys=True).encode()
    atomic_write(os.path.join(folder, "phema.json"), lambda f: f.write(data))


def read_index(folder: str) -> dict:
    """The snapshots of a run: {file name: {"std", "step", "nimg"}} (empty without phema.json); a file that is not
    such an index is a one-line ValueError naming it."""
    path = os.path.join(folder, "phema.json")
    if not os.path.exists(path):
        return {}
    index = read_json(path, "JSON index of snapshots")
    entry_form = '{"std": number, "step": integer, "nimg": integer}'
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected an object {{file name: {entry_form}}}, got a {type(index).__name__}")
    fields = {"std": (int, float), "step": int, "nimg": int}
    for name, entry in index.items():
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
                                              for k, t in fields.items()):
            raise ValueError(f"{path}: the entry {name!r} is not {entry_form}")
    return index
