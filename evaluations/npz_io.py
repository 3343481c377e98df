"""``.npz`` input for the evaluator: image batches streamed from ``arr_0``, and what a reference file carries.

A sample batch of 50k images at 256x256 is ~10 GB, so ``arr_0`` is never loaded whole: rows are
read batch by batch from the zip member (stored or deflated) with ``guided_diffusion.cli.fileio``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from evaluations.errors import EvaluatorError
from evaluations.metrics import covariance_problem
from guided_diffusion.cli.fileio import NpzArray, npz_keys

IMAGES_KEY = "arr_0"
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
ACTS_KEYS = ("acts", "acts_spatial")  # pool_3 and sFID features of the arr_0 images
ACTS_GRAPH_KEY = "acts_inception_sha256"  # SHA-256 of the Inception file that computed them
CONVERSION = "np.clip((x + 1) * 127.5, 0, 255).astype(np.uint8)"
FLOAT_HINT = (
    "the evaluator takes uint8 images in 0..255, not floats; convert samples in [-1, 1] the way "
    f"guided-diffusion's sampling scripts do: {CONVERSION}"
)
READ_ERRORS = (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile)


def to_uint8(batch: np.ndarray, path: str) -> np.ndarray:
    """Return an integer image batch as uint8, refusing values outside 0..255 instead of wrapping them."""
    if batch.dtype == np.uint8:
        return batch
    low, high = int(batch.min()), int(batch.max())
    if low < 0 or high > 255:
        raise EvaluatorError(f"{path}: pixel values must lie in 0..255, found {low}..{high}")
    return batch.astype(np.uint8)


def check_image_array(path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse arrays that are not integer NHWC images with 3 channels (with a hint on how to fix them)."""
    if dtype.kind == "f":
        raise EvaluatorError(f"{path}: {IMAGES_KEY} has dtype {dtype}; {FLOAT_HINT}")
    if dtype.kind not in "ui":
        raise EvaluatorError(f"{path}: {IMAGES_KEY} has dtype {dtype}; expected uint8 images")
    if len(shape) != 4 or shape[3] != 3 or 0 in shape[1:]:
        hint = " (looks like NCHW: use x.transpose(0, 2, 3, 1))" if len(shape) == 4 and shape[1] == 3 else ""
        raise EvaluatorError(
            f"{path}: {IMAGES_KEY} has shape {tuple(shape)}; expected NHWC images with 3 channels{hint}"
        )


def array_names(path: str) -> list:
    """The array names in an ``.npz`` file, or an error saying why it cannot be read."""
    if not os.path.isfile(path):
        raise EvaluatorError(f"{path}: no such file")
    try:
        return npz_keys(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise EvaluatorError(f"{path}: not a readable .npz file ({err})") from None


class NpzImages:
    """The images in an ``.npz`` file's ``arr_0``, read batch by batch without loading the array."""

    def __init__(self, path: str):
        self.path = str(path)
        names = array_names(self.path)
        if IMAGES_KEY not in names:
            found = ", ".join(names) or "no arrays"
            raise EvaluatorError(f"{self.path}: no '{IMAGES_KEY}' array in the npz (found: {found})")
        try:
            self._array = NpzArray(self.path, IMAGES_KEY)
        except READ_ERRORS as err:  # fileio's own messages (format version, Fortran order) name the file
            message = str(err) if str(err).startswith(self.path) else f"{self.path}: cannot read {IMAGES_KEY} ({err})"
            raise EvaluatorError(message) from None
        self.shape = self._array.shape
        check_image_array(self.path, self.shape, self._array.dtype)

    @property
    def count(self) -> int:
        """Number of images in the file."""
        return self.shape[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield uint8 batches of up to ``batch_size`` images, in file order (images ``start`` .. ``stop - 1``)."""
        try:
            for batch in self._array.batches(batch_size, start, stop):
                yield to_uint8(batch, self.path)
        except READ_ERRORS as err:
            raise EvaluatorError(f"{self.path}: corrupt or truncated npz data ({err})") from None


@dataclass
class ReferenceFile:
    """What a reference npz carries besides ``arr_0``: FID statistics and activations of its images, if any."""

    stats: dict[str, np.ndarray] | None = None
    acts: tuple[np.ndarray, np.ndarray] | None = None
    acts_graph: str | None = None


def _check_stats(path: str, stats: dict[str, np.ndarray]) -> None:
    """Refuse precomputed statistics that cannot be a mean and covariance (they would give a meaningless FID)."""
    for mean, cov in (("mu", "sigma"), ("mu_s", "sigma_s")):
        problem = covariance_problem(stats[mean], stats[cov], (mean, cov))
        if problem:
            raise EvaluatorError(f"{path}: {problem}")


def read_reference(path: str) -> ReferenceFile:
    """The precomputed statistics (``mu``, ``sigma``, ``mu_s``, ``sigma_s``) and activations of a reference npz."""
    reference = ReferenceFile()
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = [key for key in STATS_KEYS if key in npz.files]
            if present and len(present) != len(STATS_KEYS):
                missing = ", ".join(key for key in STATS_KEYS if key not in present)
                raise EvaluatorError(f"{path}: has precomputed statistics but lacks {missing}")
            if present:
                reference.stats = {key: np.asarray(npz[key], dtype=np.float64) for key in STATS_KEYS}
                _check_stats(path, reference.stats)
            if all(key in npz.files for key in (*ACTS_KEYS, ACTS_GRAPH_KEY)):
                reference.acts = tuple(npz[key] for key in ACTS_KEYS)
                reference.acts_graph = str(npz[ACTS_GRAPH_KEY])
    except READ_ERRORS as err:
        raise EvaluatorError(f"{path}: corrupt reference npz ({err})") from None
    return reference
