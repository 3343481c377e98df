"""Writing samples: a part file per finished batch (resumable), the final npz in index order, PNG grids, and
the trajectory strip of --save_trajectory.

What made the samples (sampling.record: files by content, flags that change the images) is kept as
<name>.parts/record.json while the parts accumulate and as <name>.json beside the final <name>.npz (which
itself holds only arr_0 and arr_1, as ADM's evaluator expects). A rerun into the same folder resumes only
under the same record; otherwise, and for folders made before records were kept, it stops with a one-line
error naming the folder and the first difference.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from guided_diffusion import dist_util

from guided_diffusion import logger
from guided_diffusion.cli.fileio import NpzArray, atomic_write, write_npz_stream
from guided_diffusion.sampling.record import first_difference, read_record, record_bytes

# A record, or a function that makes it (called in the first process only: it hashes the checkpoints).
Record = Union[dict, Callable[[], dict]]


def to_uint8(sample: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC, converted as the original scripts do."""
    return ((sample + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def output_name(num_samples: int, height: int, width: int) -> str:
    return f"samples_{num_samples}x{height}x{width}x3"


class SampleWriter:
    """Part files per finished batch, resumable, assembled in index order at the end; `record` says what makes
    the samples (sampling.record.sample_record) and guards the folder against mixing runs."""

    def __init__(self, folder: str, num_samples: int, height: int, width: int, with_labels: bool, *,
                 record: Record):
        if num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {num_samples}")
        self.folder = folder
        self.num_samples = num_samples
        self.with_labels = with_labels
        self.name = output_name(num_samples, height, width)
        self.path = os.path.join(folder, self.name + ".npz")
        self.parts = os.path.join(folder, self.name + ".parts")
        self.record_path = os.path.join(folder, self.name + ".json")
        self.parts_record_path = os.path.join(self.parts, "record.json")
        self._record = record

    def record(self) -> dict:
        """This run's record (made once)."""
        if callable(self._record):
            self._record = self._record()
        return self._record

    def _refusal(self, saved: dict | None, what: str) -> str | None:
        """The one-line error for a folder holding `what` made under the record `saved` (None: no record), or
        None when this run may continue it."""
        if saved is None:
            return (f"--log_dir {self.folder} holds {what} without a record of the checkpoint and flags that made "
                    "it; use another --log_dir or remove it")
        difference = first_difference(saved, self.record())
        if difference is None:
            return None
        return f"--log_dir {self.folder} holds samples made with {difference}; use another --log_dir or remove it"

    def _claim(self) -> tuple[str | None, np.ndarray | None]:
        """(error, done mask) in the first process: check the final file's or the parts' record against this
        run's, and write the record before the first part (done None: the final file is complete)."""
        if os.path.exists(self.path):
            return self._refusal(read_record(self.record_path), self.name + ".npz"), None
        done = np.zeros(self.num_samples, dtype=bool)
        ranges = self._done_ranges()
        if ranges:
            error = self._refusal(read_record(self.parts_record_path), f"the unfinished {self.name}.parts")
            if error:
                return error, done
        else:  # nothing made yet (a record alone is from a run stopped before its first batch)
            data = record_bytes(self.record())
            atomic_write(self.parts_record_path, lambda f: f.write(data))
        for start, stop, _ in ranges:
            done[start:stop] = True
        return None, done

    def _done_ranges(self) -> list[tuple[int, int, str]]:
        if not os.path.isdir(self.parts):
            return []
        out = []
        for name in os.listdir(self.parts):
            match = re.fullmatch(r"part_(\d+)_(\d+)\.npz", name)
            if match:
                out.append((int(match.group(1)), int(match.group(2)), os.path.join(self.parts, name)))
        return sorted(out)

    def my_batches(self, batch_size: int) -> tuple[list[list[int]], int]:
        """This rank's batches of missing indices (runs of consecutive indices, cut at batch_size), and how many
        samples are already done. ValueError when the folder holds samples of another run (another record)."""
        error, done = dist_util.broadcast_object(self._claim() if dist_util.get_rank() == 0 else None)
        if error:
            raise ValueError(error)
        if done is None:
            return [], self.num_samples
        batches, run = [], []
        for i in np.flatnonzero(~done).tolist():
            if run and (i != run[-1] + 1 or len(run) == batch_size):
                batches.append(run)
                run = []
            run.append(i)
        if run:
            batches.append(run)
        rank, world = dist_util.get_rank(), dist_util.get_world_size()
        return batches[rank::world], int(done.sum())

    def write(self, indices: list[int], images: np.ndarray, labels: torch.Tensor | None) -> None:
        """Save one finished batch (consecutive indices) atomically."""
        arrays = {"arr_0": images}
        if self.with_labels:
            arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
        write_npz_stream(os.path.join(self.parts, f"part_{indices[0]:08d}_{indices[-1] + 1:08d}.npz"), arrays)

    def finish(self, grid: bool = True) -> str:
        """Assemble the parts into the final npz (rank 0, streaming) and the grid; every rank waits."""
        dist_util.barrier()
        if dist_util.get_rank() == 0 and not os.path.exists(self.path):
            ranges = self._done_ranges()
            covered = sum(stop - start for start, stop, _ in ranges)
            if covered != self.num_samples:
                raise RuntimeError(f"{self.parts} covers {covered} of {self.num_samples} samples")
            first = NpzArray(ranges[0][2])
            arrays = {"arr_0": ((self.num_samples, *first.shape[1:]), np.uint8,
                                (NpzArray(p).read() for _, _, p in ranges))}
            if self.with_labels:
                arrays["arr_1"] = np.concatenate([NpzArray(p, "arr_1").read() for _, _, p in ranges])
            data = record_bytes(self.record())
            atomic_write(self.record_path, lambda f: f.write(data))  # first: an npz never lacks its record
            write_npz_stream(self.path, arrays)
            if grid:
                save_grid(NpzArray(self.path).read(0, 64), os.path.join(self.folder, self.name + ".png"))
            shutil.rmtree(self.parts)
        dist_util.barrier()
        return self.path


def save_grid(images: np.ndarray, path: str, columns: int = 8) -> None:
    """A PNG grid of uint8 NHWC images, `columns` per row, 2-pixel gaps."""
    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = image
    atomic_write(path, lambda f: Image.fromarray(canvas).save(f, format="PNG"))


def generate(writer: SampleWriter, batch_size: int, make_batch: Callable, grid: bool = True) -> str:
    """Run make_batch(indices) -> (uint8 NHWC images, labels or None) over this rank's missing batches with
    a progress bar, write each batch, and assemble the output; returns the npz path."""
    batches, done = writer.my_batches(batch_size)
    if done == writer.num_samples:
        logger.log(f"all {done} samples already in {writer.path}")
    elif done:
        logger.log(f"resuming: {done} of {writer.num_samples} samples already made")
    world = dist_util.get_world_size()
    with tqdm(total=writer.num_samples, initial=done, desc="samples", disable=dist_util.get_rank() != 0) as bar:
        for indices in batches:
            images, labels = make_batch(indices)
            writer.write(indices, images, labels)
            bar.update(min(len(indices) * world, writer.num_samples - bar.n))
    path = writer.finish(grid=grid)
    logger.log(f"created {writer.num_samples} samples: {path}")
    return path


class Trajectory:
    """A sampler callback that keeps the denoised estimate D(x_i; sigma_i) of the first `count` images at every
    step (at most max_columns - 1 of the run's `steps` steps, evenly spaced, for long chains such as DDPM-1000)
    and writes them as a PNG strip: one row per image, one column per step from the noisiest on the left, the
    final image last. to_pixels converts the estimates (default: pixels in [-1, 1]; a latent network's decoder)."""

    def __init__(self, count: int, steps: int, max_columns: int = 100,
                 to_pixels: Callable[[torch.Tensor], np.ndarray] | None = None):
        self.count = count
        self.to_pixels = to_pixels or to_uint8
        self.keep = set(np.linspace(0, steps - 1, min(steps, max_columns - 1)).round().astype(int).tolist())
        self.columns: list[np.ndarray] = []

    def __call__(self, i: int, sigma: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if i in self.keep:
            self.columns.append(self.to_pixels(denoised[:self.count].float()))

    def save(self, path: str, final: np.ndarray) -> None:
        """Write the strip with the final images `final` (uint8 NHWC) as the last column."""
        columns = [*self.columns, final[:self.count]]
        rows, steps = len(columns[0]), len(columns)
        # save_grid fills row by row: order the images image-major so each row is one image's trajectory.
        images = np.stack([columns[s][r] for r in range(rows) for s in range(steps)])
        save_grid(images, path, columns=steps)
