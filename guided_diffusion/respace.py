"""Timestep respacing: sample a T-step model with fewer steps by keeping a subset of its timesteps."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .gaussian_diffusion import GaussianDiffusion


def _ddim_stride_steps(num_timesteps: int, spec: str) -> set[int]:
    """Evenly strided steps 0, s, 2s, ... with an integer stride s giving exactly the requested count."""
    try:
        desired = int(spec[len("ddim"):])
    except ValueError:
        raise ValueError(f"timestep_respacing {spec!r}: expected 'ddimN' with an integer N") from None
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired:
            return set(range(0, num_timesteps, stride))
    raise ValueError(
        f"timestep_respacing {spec!r}: no integer stride gives exactly {desired} of the {num_timesteps} steps; "
        f"use a count <= {num_timesteps} such as ddim25, ddim50, ddim{num_timesteps} or section counts like '25'"
    )


def _parse_section_counts(spec: str) -> list[int]:
    try:
        counts = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"timestep_respacing {spec!r}: expected 'ddimN' or comma-separated step counts like '250' or '10,15,20'"
        ) from None
    return counts


def space_timesteps(num_timesteps: int, section_counts: str | Iterable[int]) -> set[int]:
    """The timesteps to keep from a process of num_timesteps steps.

    section_counts is "ddimN" (an integer stride, as the DDIM paper) or a list of counts: the process is cut into
    equal sections and section i keeps section_counts[i] evenly spaced steps. "10,15,20" with 300 steps keeps 10
    of the first 100 steps, 15 of the next 100 and 20 of the last 100.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            return _ddim_stride_steps(num_timesteps, section_counts)
        section_counts = _parse_section_counts(section_counts)
    section_counts = list(section_counts)
    if not section_counts or len(section_counts) > num_timesteps:
        raise ValueError(f"timestep_respacing {section_counts}: need between 1 and {num_timesteps} sections")
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(
                f"timestep_respacing: section {i} has {size} steps and cannot give {count}; "
                f"each count must be between 1 and its section's size ({num_timesteps} steps in "
                f"{len(section_counts)} sections)"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(stride * j) for j in range(count)]
        start += size
    return set(steps)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process that keeps only `use_timesteps` of a base process.

    The betas are recomputed so that the kept steps have the base process's alpha_bar values; the network (and
    cond_fn) is still called with the base process's timesteps, through timestep_map.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        base_alphas_cumprod = np.cumprod(1.0 - np.asarray(kwargs["betas"], dtype=np.float64))
        self.original_num_steps = len(base_alphas_cumprod)
        bad = sorted(t for t in self.use_timesteps if not 0 <= t < self.original_num_steps)
        if bad or not self.use_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty subset of 0..{self.original_num_steps - 1}, got {bad}")
        self.timestep_map = sorted(self.use_timesteps)
        kept = base_alphas_cumprod[self.timestep_map]
        kwargs["betas"] = 1.0 - kept / np.append(1.0, kept[:-1])
        super().__init__(**kwargs)
