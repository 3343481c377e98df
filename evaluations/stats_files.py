"""Reference statistics in NVlabs' formats: EDM2's ``.pkl`` and EDM's ``.npz``.

* EDM2 (``calculate_metrics.py ref``) pickles a plain dict ``{'num_images': N, 'fid': {'mu', 'sigma'},
  'fd_dinov2': {'mu', 'sigma'}}`` of float64 numpy arrays (either metric may be absent).  A pickle can run
  any code while it loads, so it is read with an unpickler that resolves only the few numpy names an
  ndarray's pickle uses (``_reconstruct``/``_frombuffer``, ``ndarray``, ``dtype``; ``_codecs.encode`` for
  bytes in old protocols) and refuses every other
  global; the result must then be exactly that structure.
* EDM (``fid.py ref``) writes an ``.npz`` with ``mu`` and ``sigma`` of its Inception pool features: FID
  statistics only (EDM2 reads it the same way).

Statistics are checked with ``covariance_problem`` when read; an unusable file is an error naming it.
"""

from __future__ import annotations

import codecs
import io
import pickle
import zipfile
from typing import Any

import numpy as np

from evaluations.errors import EvaluatorError
from evaluations.metrics import covariance_problem
from guided_diffusion.cli.fileio import atomic_write

STATS_METRICS = ("fid", "fd_dinov2")  # the statistics an EDM2 file can hold
Stats = dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (mu, sigma)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals an ndarray's pickle names, under numpy 2's (``numpy._core``) and numpy 1's (``numpy.core``)
    module names."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("_codecs", "encode")] = codecs.encode  # bytes in protocol 0-2 pickles: encode(text, "latin1")
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays; any other global is refused before it is looked up."""

    def __init__(self, file: io.BufferedIOBase):
        super().__init__(file)
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only dicts of numpy arrays are allowed")


def _stats_pair(path: str, metric: str, entry: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(entry, dict) or sorted(entry) != ["mu", "sigma"]:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise EvaluatorError(f"{path}: '{metric}' must be a dict with 'mu' and 'sigma', found {found}")
    pair = []
    for key in ("mu", "sigma"):
        value = entry[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise EvaluatorError(f"{path}: {metric} {key} must be a numeric numpy array, found {kind}")
        pair.append(np.asarray(value, dtype=np.float64))
    problem = covariance_problem(pair[0], pair[1], (f"{metric} mu", f"{metric} sigma"))
    if problem:
        raise EvaluatorError(f"{path}: {problem}")
    return pair[0], pair[1]


def read_edm2_pkl(path: str) -> Stats:
    """The statistics of an EDM2 reference ``.pkl``, read without running code from it."""
    try:
        with open(path, "rb") as file:
            data = _ArraysOnlyUnpickler(file).load()
    except FileNotFoundError:
        raise EvaluatorError(f"{path}: no such file") from None
    except OSError as err:
        raise EvaluatorError(f"{path}: cannot read it ({err.strerror})") from None
    except Exception as err:  # UnpicklingError, EOFError, ... from arbitrary bytes
        raise EvaluatorError(f"{path}: not an EDM2 statistics pickle ({err})") from None
    if not isinstance(data, dict):
        raise EvaluatorError(f"{path}: not an EDM2 statistics pickle (holds a {type(data).__name__}, not a dict)")
    unknown = sorted(str(key) for key in data if key not in (*STATS_METRICS, "num_images"))
    if unknown:
        raise EvaluatorError(f"{path}: not an EDM2 statistics pickle (unknown entries: {', '.join(unknown)})")
    stats = {metric: _stats_pair(path, metric, data[metric]) for metric in STATS_METRICS if metric in data}
    if not stats:
        raise EvaluatorError(f"{path}: holds no statistics (neither 'fid' nor 'fd_dinov2')")
    return stats


def write_edm2_pkl(path: str, stats: Stats, num_images: int) -> None:
    """Write statistics as EDM2 does (a plain pickle of dicts of float64 arrays), atomically."""
    data: dict[str, Any] = {"num_images": int(num_images)}
    for metric, (mu, sigma) in stats.items():
        data[metric] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    try:
        atomic_write(path, lambda file: pickle.dump(data, file))
    except OSError as err:
        raise EvaluatorError(f"{path}: cannot write the statistics ({err.strerror or err})") from None


def read_edm_npz(path: str) -> Stats:
    """The FID statistics (``mu``, ``sigma``) of an EDM reference ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("mu", "sigma") if key not in npz.files]
            if missing:
                raise EvaluatorError(f"{path}: an EDM statistics npz needs mu and sigma (found: "
                                     f"{', '.join(npz.files) or 'no arrays'})")
            entry = {key: npz[key] for key in ("mu", "sigma")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise EvaluatorError(f"{path}: not a readable .npz file ({err})") from None
    return {"fid": _stats_pair(path, "fid", entry)}

