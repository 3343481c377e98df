"""Files without surprises: atomic writes, and .npz arrays read and written in pieces (numpy only, no torch).

A batch of 50k samples at 256x256 is about 10 GB, so sample files are streamed: rows of an array are read
from the zip member at an offset, and a new .npz is written row chunk by row chunk.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import zipfile
from typing import Any, Callable, Iterable

import numpy as np

# The temporary files of atomic_write: ".<name>.<8 random characters of mkstemp>.tmp" beside the file.
_TMP_PREFIX, _TMP_SUFFIX = ".{name}.", ".tmp"
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class DiskFullError(OSError):
    """A write that failed because the device is full (ENOSPC); its message names the file being written."""

    def __init__(self, path: str):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}", path)

    def __str__(self) -> str:
        return self.strerror


def _is_disk_full(error: BaseException | None) -> bool:
    """Whether ENOSPC is the error or what caused it (torch.save reports a failed write as a RuntimeError raised
    while handling the OSError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def atomic_write(path: str, write: Callable) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place (no partial files). A full
    device raises DiskFullError naming `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX.format(name=os.path.basename(path)),
                                   suffix=_TMP_SUFFIX)
    except OSError as e:
        if _is_disk_full(e):
            raise DiskFullError(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(e):
            raise DiskFullError(path) from None
        raise


def remove_stale_temporaries(folder: str, depth: int = 2) -> list[str]:
    """Delete the temporary files atomic_write left in `folder` and its subfolders down to `depth` levels (a
    sampling run's .parts folders, a cascade's stage folders) when a process was killed mid-write; only names of
    atomic_write's own pattern, so no other writer's files. Returns their paths. Call it when a run starts in the
    folder, before anything writes there."""
    removed = []
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return removed
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if depth > 0:
                removed += remove_stale_temporaries(entry.path, depth - 1)
        elif entry.is_file(follow_symlinks=False) and _TMP_NAME.fullmatch(entry.name):
            try:
                os.remove(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.path)
    return removed


def read_json(path: str, what: str) -> Any:
    """The JSON value in path; a file that cannot be read or parsed is a one-line ValueError naming it and saying
    what it should hold (`what`, e.g. "JSON object of flags")."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise ValueError(f"{path}: not a readable {what} ({reason})") from None


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
