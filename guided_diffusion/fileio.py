"""Files without surprises: atomic writes, and .npz arrays read and written in pieces (numpy only, no torch).

A batch of 50k samples at 256x256 is about 10 GB, so sample files are streamed: rows of an array are read
from the zip member at an offset, and a new .npz is written row chunk by row chunk.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any, Callable, Iterable

import numpy as np


def atomic_write(path: str, write: Callable) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place (no partial files)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def npz_keys(path: str) -> list[str]:
    """The array names in an .npz file."""
    with zipfile.ZipFile(path) as archive:
        return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


class NpzArray:
    """One array of an .npz file, read by row ranges without loading the whole array."""

    def __init__(self, path: str, key: str = "arr_0"):
        self.path, self.key = str(path), key
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no such file: {self.path}")
        try:
            keys = npz_keys(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{self.path} is not a readable .npz file ({e})") from None
        if key not in keys:
            raise ValueError(f"{self.path} has no array '{key}' (it has: {', '.join(keys) or 'none'})")
        with zipfile.ZipFile(self.path) as archive, archive.open(key + ".npy") as member:
            version = np.lib.format.read_magic(member)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"{self.path}: '{key}' uses .npy format {version}; re-save it with np.savez")
            shape, fortran, dtype = readers[version](member)
            self._offset = member.tell()
        if fortran:
            raise ValueError(f"{self.path}: '{key}' is stored in Fortran order; re-save it with np.savez(path, np.ascontiguousarray(array))")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start .. stop - 1."""
        stop = len(self) if stop is None else min(stop, len(self))
        count = max(stop - start, 0)
        with zipfile.ZipFile(self.path) as archive, archive.open(self.key + ".npy") as member:
            member.seek(self._offset + start * self._row_bytes)
            data = member.read(count * self._row_bytes)
        if len(data) != count * self._row_bytes:
            raise ValueError(f"{self.path}: '{self.key}' is truncated (rows {start}..{stop - 1} missing)")
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterable[np.ndarray]:
        """Consecutive row batches, read in one pass over the member (so deflated members are inflated once)."""
        stop = len(self) if stop is None else min(stop, len(self))
        with zipfile.ZipFile(self.path) as archive, archive.open(self.key + ".npy") as member:
            member.seek(self._offset + start * self._row_bytes)
            for i in range(start, stop, batch_size):
                count = min(batch_size, stop - i)
                data = member.read(count * self._row_bytes)
                if len(data) != count * self._row_bytes:
                    raise ValueError(f"{self.path}: '{self.key}' is truncated (rows {i}..{stop - 1} missing)")
                yield np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))


def write_npz_stream(path: str, arrays: dict | Iterable[tuple[str, Any]]) -> None:
    """Write an uncompressed .npz atomically; arrays maps a name to an ndarray or to (shape, dtype, chunks), where
    chunks yields row blocks in order (so arrays larger than memory can be written).

    arrays may also be an iterable of (name, spec) pairs, consumed in order while writing, so that an array can be
    produced from the work that streamed the arrays before it."""

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, spec in arrays.items() if isinstance(arrays, dict) else arrays:
                shape, dtype, chunks = (spec.shape, spec.dtype, [spec]) if isinstance(spec, np.ndarray) else spec
                dtype = np.dtype(dtype)
                rows = 0
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                              "shape": tuple(shape)}
                    np.lib.format.write_array_header_2_0(member, header)
                    for chunk in chunks:
                        chunk = np.ascontiguousarray(chunk, dtype=dtype)
                        member.write(chunk.tobytes())
                        rows += len(chunk) if chunk.ndim else 1
                expected = shape[0] if len(shape) else 1
                if rows != expected:
                    raise ValueError(f"{name}: wrote {rows} rows, the header promised {expected}")

    atomic_write(path, write)
