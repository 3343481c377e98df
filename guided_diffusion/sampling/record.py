"""What made a set of samples: the script, the identity of every file it read (checkpoints, classifier, guide,
base samples: size and SHA-256 of the content) and the flags that change the images (seed included).

The resumable writer (sampling.writer) stores this record beside the unfinished parts and beside the final npz,
and a rerun into the same folder continues only when its own record is the same: otherwise samples of two
models, or of two label sets, would end up in one file, or an old file would be returned for a new command.

Flags that do not change the images are left out (SAMPLE_NEUTRAL_FLAGS): sample i is drawn from its own
stream seeded with seed + i, so the batch size and the number of processes change an image by float rounding
only (at most one uint8 level), and --progress, --grid, --log_dir and --save_trajectory change what is shown
or where, not the samples. File flags are compared by content, so a moved or copied checkpoint still resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any

# Flags whose value does not change the samples: they never block a resume.
SAMPLE_NEUTRAL_FLAGS = frozenset({"batch_size", "log_dir", "grid", "progress", "save_trajectory", "preset",
                                  "model_dir"})

# Flags that name a file the samples depend on: recorded and compared by the file's size and content hash.
SAMPLE_FILE_FLAGS = ("model_path", "base_model_path", "classifier_path", "guide_model_path", "sr_model_path",
                     "base_samples")

_CHUNK = 1 << 22


def file_identity(path: str) -> dict:
    """{"path", "size", "sha256"} of a file (a URL: its path alone, its content cannot be read cheaply)."""
    if "://" in path:
        return {"path": path}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return {"path": path, "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists, unknown objects strings)."""
    return json.loads(json.dumps(value, default=str))


def sample_record(script: str, args: argparse.Namespace | dict, files: dict[str, str] | None = None) -> dict:
    """The record of a sampling run: its script, the identity of the files named by SAMPLE_FILE_FLAGS in args
    (or given as files: {flag: path}) and every other flag except SAMPLE_NEUTRAL_FLAGS. Reads every file once
    (about 1.2 GB/s), so call it in one process and share the result."""
    flags = dict(args if isinstance(args, dict) else vars(args))  # a namespace or frozen settings
    named = {k: flags[k] for k in SAMPLE_FILE_FLAGS if flags.get(k)} if files is None else files
    settings = {k: v for k, v in flags.items() if k not in SAMPLE_NEUTRAL_FLAGS and k not in SAMPLE_FILE_FLAGS}
    return {"script": script, "files": {k: file_identity(p) for k, p in named.items() if p},
            "settings": _plain(settings)}


def _show(value: Any) -> str:
    return '""' if value == "" else str(value)


def _show_file(identity: dict | None) -> str:
    if identity is None:
        return "none"
    digest = identity.get("sha256")
    return f"{identity['path']} (sha256 {digest[:12]})" if digest else identity["path"]


def _file_key(identity: dict | None) -> tuple | None:
    """What makes two files the same: size and content hash (a URL: its path)."""
    if identity is None:
        return None
    return (identity.get("size"), identity["sha256"]) if identity.get("sha256") else (identity["path"],)


_MISSING = object()


def first_difference(saved: dict, new: dict) -> str | None:
    """The first thing that differs between two records, as "--flag OLD, not NEW" (None when they agree): the
    script, then the files (by size and content), then the flags in the new record's order."""
    if saved.get("script") != new.get("script"):
        return f"{saved.get('script')}, not {new.get('script')}"
    old_files, new_files = saved.get("files", {}), new.get("files", {})
    for flag in [*new_files, *(k for k in old_files if k not in new_files)]:
        a, b = old_files.get(flag), new_files.get(flag)
        if _file_key(a) != _file_key(b):
            return f"--{flag} {_show_file(a)}, not {_show_file(b)}"
    old_settings, new_settings = saved.get("settings", {}), new.get("settings", {})
    for flag in [*new_settings, *(k for k in old_settings if k not in new_settings)]:
        a, b = old_settings.get(flag, _MISSING), new_settings.get(flag, _MISSING)
        if a != b:
            old = f"no --{flag}" if a is _MISSING else f"--{flag} {_show(a)}"
            now = (f"no --{flag}" if b is _MISSING else f"--{flag} {_show(b)}") if a is _MISSING or b is _MISSING \
                else _show(b)
            return f"{old}, not {now}"
    return None


def read_record(path: str) -> dict | None:
    """A record written by write_record, or None when the file is missing or unreadable."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record_bytes(record: dict) -> bytes:
    """The record as the JSON written to disk."""
    return json.dumps(record, indent=1).encode()
