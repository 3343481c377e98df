"""Control conditioning, separate from the semantic (class) conditioning (Berrada et al. 2024, arXiv 2411.03177).

Training augmentations (random crop, flip, rescaling) are recorded per image as a control record
[x0, y0, x1, y1, flip, size]: the crop box relative to the (rescaled) source image, the flip flag and the source's
short side in pixels. A network told the record learns to draw cropped or blurry images only when asked for them.
Each control group (crop, flip, size) gets its own embedding (Fourier features of its numbers, a small MLP),
scaled by a gate that switches it on along the denoising chain with a cosine ramp between two noise levels: coarse
controls (crop, flip) from the start, fine ones (size) only at low noise. The null record (every field -1) stands
for "no control": control dropout trains it, and control guidance contrasts with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

FIELDS = ("x0", "y0", "x1", "y1", "flip", "size")
GROUPS = {"crop": (0, 4), "flip": (4, 5), "size": (5, 6)}  # record columns of each control group
NULL = -1.0
# Noise levels (sigma_off, sigma_on) of each group's gate: 0 above sigma_off, 1 below sigma_on, a cosine ramp in
# log sigma between. inf, inf: on at every level.
DEFAULT_GATES = {"crop": (math.inf, math.inf), "flip": (math.inf, math.inf), "size": (1.0, 0.2)}


def parse_groups(spec: str) -> tuple[str, ...]:
    """--control_cond "crop,flip,size" (any subset; "" = off)."""
    groups = tuple(g.strip() for g in spec.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad or len(set(groups)) != len(groups):
        raise ValueError(f"--control_cond {spec!r}: a comma-separated subset of {', '.join(GROUPS)}")
    return groups


def parse_gates(spec: str) -> dict[str, tuple[float, float]]:
    """--control_gates "size=1:0.2,crop=inf:inf": each group's (sigma_off, sigma_on), over DEFAULT_GATES."""
    gates, given = dict(DEFAULT_GATES), set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            group, levels = item.split("=")
            off, on = (float(v) for v in levels.split(":"))
        except ValueError:
            raise ValueError(f"--control_gates {spec!r}: expected group=sigma_off:sigma_on, e.g. size=1:0.2") from None
        if group not in GROUPS or not (off >= on > 0):
            raise ValueError(f"--control_gates {item!r}: a group of {', '.join(GROUPS)} and sigma_off >= sigma_on > 0")
        if group in given:
            raise ValueError(f"--control_gates {spec!r}: {group} is given twice; give each group once")
        given.add(group)
        gates[group] = (off, on)
    return gates


def default_control(image_size: int) -> list[float]:
    """The record asked for at sampling unless told otherwise: the whole image, not flipped, source size = output."""
    return [0.0, 0.0, 1.0, 1.0, 0.0, float(image_size)]


def parse_control(spec: str, image_size: int) -> list[float]:
    """--control "crop=0,0,1,1 flip=0 size=16" (fields not given keep default_control's values)."""
    record = default_control(image_size)
    seen = set()
    for item in spec.split():
        key, _, value = item.partition("=")
        if key in seen:
            raise ValueError(f"--control {spec!r}: {key} is given twice; give each of crop, flip and size once")
        seen.add(key)
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            numbers = []
        if key == "crop" and len(numbers) == 4 and 0 <= numbers[0] < numbers[2] <= 1 and 0 <= numbers[1] < numbers[3] <= 1:
            record[0:4] = numbers
        elif key == "flip" and numbers in ([0.0], [1.0]):
            record[4] = numbers[0]
        elif key == "size" and len(numbers) == 1 and numbers[0] >= 1:
            record[5] = numbers[0]
        else:
            raise ValueError(f"--control {item!r}: expected crop=x0,y0,x1,y1 (0 <= x0 < x1 <= 1, same for y), "
                             "flip=0|1 or size=PIXELS (>= 1)")
    return record


def null_records(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((n, len(FIELDS)), NULL, device=device)


def drop_controls(record: torch.Tensor, prob: float) -> torch.Tensor:
    """Each row replaced by the null record with probability prob (control dropout)."""
    dropped = torch.rand(len(record), device=record.device) < prob
    return torch.where(dropped[:, None], torch.full_like(record, NULL), record)


def cosine_gate(sigma: torch.Tensor, sigma_off: float, sigma_on: float) -> torch.Tensor:
    """0 for sigma >= sigma_off, 1 for sigma <= sigma_on, (1 - cos(pi u)) / 2 between, u linear in log sigma."""
    if math.isinf(sigma_off):
        return torch.ones_like(sigma)
    if sigma_off == sigma_on:
        return (sigma <= sigma_on).to(sigma.dtype)
    u = (math.log(sigma_off) - sigma.log()) / (math.log(sigma_off) - math.log(sigma_on))
    return (1 - torch.cos(math.pi * u.clamp(0, 1))) / 2


def _features(values: torch.Tensor, count: int = 8) -> torch.Tensor:
    """sin and cos of values * pi * 2^k, k < count: [N, fields] -> [N, fields * 2 * count]."""
    angles = values[:, :, None] * (math.pi * 2.0 ** torch.arange(count, device=values.device))
    return torch.cat([angles.sin(), angles.cos()], dim=2).flatten(1)


class ControlEmbedding(nn.Module):
    """The gated sum over control groups of MLP(Fourier features of the group's numbers); sizes enter as
    log2(pixels) / 10. Null rows contribute nothing. gated=False: every gate is 1 (controls summed into the class
    embedding, SDXL's way)."""

    def __init__(self, groups: tuple[str, ...], emb_channels: int, gates: dict | None = None, gated: bool = True):
        super().__init__()
        self.groups = tuple(groups)
        self.gates = {g: (gates or DEFAULT_GATES)[g] for g in self.groups}
        self.gated = gated
        self.mlps = nn.ModuleDict({
            g: nn.Sequential(nn.Linear(2 * 8 * (GROUPS[g][1] - GROUPS[g][0]), emb_channels), nn.SiLU(),
                             nn.Linear(emb_channels, emb_channels))
            for g in self.groups})

    def forward(self, record: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        record = record.float()
        present = (record[:, 4] != NULL).float()[:, None]
        values = torch.cat([record[:, :5], (record[:, 5:6].clamp(min=1).log2() / 10)], dim=1)
        out = 0
        for g in self.groups:
            lo, hi = GROUPS[g]
            gate = cosine_gate(sigma.float(), *self.gates[g]) if self.gated else torch.ones_like(sigma.float())
            out = out + self.mlps[g](_features(values[:, lo:hi])) * (gate[:, None] * present)
        return out
