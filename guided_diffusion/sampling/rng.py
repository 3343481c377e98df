"""Per-sample random streams: sample i's noise depends only on its own seed, not on batch size or device."""

from __future__ import annotations

from typing import Sequence

import torch


class SampleRNG:
    """One CPU generator per sample; noise is drawn per sample on the CPU and moved to the target device."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    @classmethod
    def for_range(cls, seed: int, start: int, count: int) -> "SampleRNG":
        """Streams for samples start .. start + count - 1 of a run with base seed `seed` (sample i uses seed + i)."""
        return cls(range(seed + start, seed + start + count))

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise of `shape`, whose first dimension must equal the number of samples."""
        shape = tuple(shape)
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} samples requested from a SampleRNG of {len(self.generators)} seeds")
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in self.generators])
        return noise.to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise with x's shape, device and dtype."""
        return self.randn(x.shape, x.device, x.dtype)


def randn_like(x: torch.Tensor, rng: SampleRNG | None) -> torch.Tensor:
    """Noise like x from the per-sample streams, or from torch's global generator when rng is None."""
    return torch.randn_like(x) if rng is None else rng.randn_like(x)
