"""Reference activations kept on disk, so evaluating many sample batches against one reference runs its Inception
pass once (the original evaluator recomputes the reference batch's activations on every call).

An entry is ``<cache dir>/reference_activations/<key>.npz`` with ``acts`` (pool_3) and ``acts_spatial`` (sFID
features) of the reference images, plus their FID statistics when the reference file has none, where the key
hashes the SHA-256 of the reference file's bytes, the SHA-256 of the Inception file and the batch size (and the
backend when it is not TensorFlow).
Beside it, ``<key>.radii_<precision>.npz`` keeps the reference's k-NN radii for precision/recall.
Files are written atomically; an unreadable or inconsistent one is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from evaluations.npz_io import ACTS_KEYS, STATS_KEYS
from guided_diffusion.cli.fileio import write_npz_stream

Activations = tuple[np.ndarray, np.ndarray]
Stats = dict[str, np.ndarray]
CACHE_SUBDIR = "reference_activations"
READ_CHUNK = 1 << 23


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in chunks (reference batches can be many GB)."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while size := file.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def valid_activations(acts: Activations, count: int) -> bool:
    """Whether ``acts`` are two float32 ``[count, D]`` arrays of finite values."""
    return all(a.ndim == 2 and a.dtype == np.float32 and len(a) == count and np.isfinite(a).all() for a in acts)


def valid_statistics(stats: Stats, acts: Activations) -> bool:
    """Whether ``stats`` are finite means and covariances with the dimensions of ``acts``."""
    return all(
        stats[mean].shape == (dim,) and stats[cov].shape == (dim, dim) and np.isfinite(stats[cov]).all()
        for (mean, cov), dim in zip((STATS_KEYS[:2], STATS_KEYS[2:]), (a.shape[1] for a in acts))
    )


def cache_entry(cache_dir: Path, ref_path: str, graph_sha256: str, batch_size: int, backend: str = "tf") -> Path:
    """Where the activations of the reference file ``ref_path`` under this graph, batch size and backend (``tf``, or
    ``torch`` for the graph converted to PyTorch, whose float32 rounding differs) are kept."""
    backend_key = "" if backend == "tf" else f":{backend}"
    key = hashlib.sha256(f"{file_sha256(ref_path)}:{graph_sha256}:{batch_size}{backend_key}".encode()).hexdigest()
    return Path(cache_dir) / CACHE_SUBDIR / f"{key}.npz"


def radii_entry(entry: Path, precision: str) -> Path:
    """Where the k-NN radii of an entry's reference under a distance precision are kept."""
    return entry.with_name(f"{entry.stem}.radii_{precision}.npz")


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """All arrays of a cache file, or None if there is none or it cannot be read (reported)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as err:
        print(f"warning: ignoring the unreadable activation cache entry {path} ({err})", file=sys.stderr)
        return None


def _misfit(path: Path) -> None:
    print(f"warning: ignoring the activation cache entry {path}: it does not fit the reference", file=sys.stderr)


def _write(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write a cache file atomically; a cache that cannot be written only costs a warning."""
    try:
        write_npz_stream(str(path), arrays)
    except OSError as err:
        print(f"warning: cannot write the activation cache entry {path} ({err})", file=sys.stderr)
        return False
    return True


def load_entry(entry: Path, count: int) -> tuple[Activations, Stats | None] | None:
    """The cached activations of ``count`` images and their statistics if stored; None without a usable entry."""
    arrays = _read(entry)
    if arrays is None:
        return None
    acts = tuple(arrays.get(key, np.empty(0)) for key in ACTS_KEYS)
    stats = {key: arrays[key] for key in STATS_KEYS} if all(key in arrays for key in STATS_KEYS) else None
    if not valid_activations(acts, count) or (stats is not None and not valid_statistics(stats, acts)):
        _misfit(entry)
        return None
    return acts, stats


def store_entry(entry: Path, acts: Activations, stats: Stats | None) -> None:
    """Keep the activations (and statistics) of a reference, dropping radii derived from an earlier entry."""
    if _write(entry, {**dict(zip(ACTS_KEYS, acts)), **(stats or {})}):
        for stale in entry.parent.glob(f"{entry.stem}.radii_*.npz"):
            stale.unlink(missing_ok=True)
        print(f"cached the reference activations in {entry}")


def load_radii(path: Path, count: int) -> np.ndarray | None:
    """Cached k-NN radii of ``count`` reference images, or None without a usable file."""
    radii = (_read(path) or {}).get("radii")
    if radii is None:
        return None
    if radii.shape != (count,) or radii.dtype != np.float32 or not np.isfinite(radii).all():
        _misfit(path)
        return None
    return radii


def store_radii(path: Path, radii: np.ndarray) -> None:
    """Keep the k-NN radii of a reference."""
    _write(path, {"radii": radii})
