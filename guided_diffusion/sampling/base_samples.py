"""The low-resolution inputs of an upsampler: the images (and labels) of a base model's samples npz."""

from __future__ import annotations

import numpy as np
import torch

from guided_diffusion.loading.checkpoint_flags import require_file
from guided_diffusion.cli.fileio import NpzArray


class BaseSamples:
    """Low-resolution images (and labels) from an npz, read by index; index i uses base image i % count."""

    def __init__(self, path: str, small_size: int, need_labels: bool):
        require_file(path, "base_samples")
        self.path = path
        self.images = NpzArray(path, "arr_0")
        shape = self.images.shape
        if len(shape) != 4 or shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"--base_samples {path}: arr_0 must be uint8 NHWC RGB images, got {shape} "
                             f"{self.images.dtype}")
        if shape[1:3] != (small_size, small_size):
            raise ValueError(f"--base_samples {path} holds {shape[1]}x{shape[2]} images but the upsampler takes "
                             f"--small_size {small_size}: pass base samples of that size")
        self.labels = None
        if need_labels:
            try:
                self.labels = NpzArray(path, "arr_1").read()
            except ValueError:
                raise ValueError(f"--base_samples {path} has no labels (arr_1) but the upsampler is "
                                 "class-conditional: sample the base with a class-conditional model, or use "
                                 "--class_cond False with an unconditional upsampler") from None

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: list[int]) -> dict:
        """{"low_res": [N, 3, s, s] in [-1, 1] (and "y")} for the given sample indices."""
        rows = [i % len(self) for i in indices]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            images = self.images.read(rows[0], rows[0] + len(rows))
        else:
            images = np.stack([self.images.read(r, r + 1)[0] for r in rows])
        out = {"low_res": torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)}
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[rows].astype(np.int64))
        return out
