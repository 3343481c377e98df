"""Key/value and text logging to stdout, a log file, CSV, JSON lines and TensorBoard (the original API).

configure() picks the folder: its argument, else $OPENAI_LOGDIR, else the caller's default, else
./runs/<script>-<timestamp>; formats come from $OPENAI_LOG_FORMAT (default "stdout,log,csv"). Only rank 0
writes unless configure(all_ranks=True) or $OPENAI_LOG_FORMAT_MPI names formats for the other ranks. dumpkvs()
averages values over ranks, weighted by how many times each was logged (a collective: every rank must call it).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import sys
import warnings
from collections import defaultdict

import torch.distributed as dist

DEBUG, INFO, WARN, ERROR, DISABLED = 10, 20, 30, 40, 50


class HumanOutputFormat:
    """A table of key/values and plain text lines, to a file or stdout."""

    def __init__(self, file):
        self.own = isinstance(file, str)
        self.file = open(file, "a") if self.own else file

    def writekvs(self, kvs: dict) -> None:
        rows = [(k, f"{v:<8.3g}" if isinstance(v, float) else str(v)) for k, v in sorted(kvs.items())]
        if not rows:
            return
        kw, vw = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
        line = "-" * (kw + vw + 7)
        body = [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows]
        self.file.write("\n".join([line, *body, line]) + "\n")
        self.file.flush()

    def writeseq(self, seq) -> None:
        self.file.write(" ".join(str(s) for s in seq) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.own:
            self.file.close()


class JSONOutputFormat:
    """One JSON object per dump."""

    def __init__(self, path: str):
        self.file = open(path, "a")

    def writekvs(self, kvs: dict) -> None:
        self.file.write(json.dumps({k: float(v) if hasattr(v, "dtype") else v for k, v in kvs.items()}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CSVOutputFormat:
    """A CSV table whose header grows when new keys appear (earlier rows are padded)."""

    def __init__(self, path: str):
        self.path = path
        self.keys: list[str] = []
        if os.path.exists(path) and os.path.getsize(path):  # continue a resumed run's table
            with open(path, newline="") as f:
                self.keys = next(csv.reader(f), [])

    def writekvs(self, kvs: dict) -> None:
        new = sorted(k for k in kvs if k not in self.keys)
        if new:
            rows = []
            if os.path.exists(self.path):
                with open(self.path, newline="") as f:
                    rows = list(csv.reader(f))[1:]
            self.keys += new
            with open(self.path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.keys)
                writer.writerows(row + [""] * (len(self.keys) - len(row)) for row in rows)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([kvs.get(k, "") for k in self.keys])

    def close(self) -> None:
        pass


class TensorBoardOutputFormat:
    """Scalars to TensorBoard event files (needs the tensorboard package)."""

    def __init__(self, folder: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(folder)
        self.step = 0

    def writekvs(self, kvs: dict) -> None:
        self.step = int(kvs.get("step", self.step + 1))
        for k, v in kvs.items():
            if isinstance(v, (int, float)) or hasattr(v, "dtype"):
                self.writer.add_scalar(k, float(v), self.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


FORMATS = ("stdout", "log", "json", "csv", "tensorboard")


def make_output_format(fmt: str, folder: str, log_suffix: str = ""):
    """An output of the named format writing into folder."""
    os.makedirs(folder, exist_ok=True)
    if fmt == "stdout":
        return HumanOutputFormat(sys.stdout)
    if fmt == "log":
        return HumanOutputFormat(os.path.join(folder, f"log{log_suffix}.txt"))
    if fmt == "json":
        return JSONOutputFormat(os.path.join(folder, f"progress{log_suffix}.json"))
    if fmt == "csv":
        return CSVOutputFormat(os.path.join(folder, f"progress{log_suffix}.csv"))
    if fmt == "tensorboard":
        return TensorBoardOutputFormat(os.path.join(folder, f"tb{log_suffix}"))
    raise ValueError(f"unknown log format {fmt!r}: choose from {', '.join(FORMATS)}")


class Logger:
    """Accumulates key/values between dumps and writes them, with text lines, to its outputs."""

    def __init__(self, folder: str | None, output_formats: list):
        self.name2val: dict = {}
        self.name2cnt: dict = defaultdict(int)
        self.level = INFO
        self.dir = folder
        self.output_formats = output_formats

    def logkv(self, key: str, val) -> None:
        self.name2val[key] = val

    def logkv_mean(self, key: str, val) -> None:
        old, count = self.name2val.get(key, 0.0), self.name2cnt[key]
        self.name2val[key] = old * count / (count + 1) + float(val) / (count + 1)
        self.name2cnt[key] = count + 1

    def dumpkvs(self) -> dict:
        values = _mean_over_ranks(self.name2val, self.name2cnt)
        for fmt in self.output_formats:
            if hasattr(fmt, "writekvs"):
                fmt.writekvs(values)
        self.name2val.clear()
        self.name2cnt.clear()
        return values

    def log(self, *args, level: int = INFO) -> None:
        if self.level <= level:
            for fmt in self.output_formats:
                if hasattr(fmt, "writeseq"):
                    fmt.writeseq(args)

    def close(self) -> None:
        for fmt in self.output_formats:
            fmt.close()


def _mean_over_ranks(name2val: dict, name2cnt: dict) -> dict:
    """Values averaged over ranks, each rank weighted by its count (1 for logkv values)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(name2val)
    local = {k: (float(v), name2cnt.get(k, 1)) if _is_number(v) else (v, 0) for k, v in name2val.items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    totals: dict = {}
    for part in gathered:
        for k, (v, n) in part.items():
            if n == 0:
                totals.setdefault(k, (v, 0))
                continue
            s, c = totals.get(k, (0.0, 0))
            totals[k] = (s + v * n, c + n)
    out = {k: (s / c if c else s) for k, (s, c) in totals.items()}
    # Integers that agree on every rank (step, samples) stay integers.
    return {k: int(v) if isinstance(name2val.get(k), int) and float(v).is_integer() else v for k, v in out.items()}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) or hasattr(v, "dtype")


_current = Logger(None, [HumanOutputFormat(sys.stdout)])


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))))


def default_log_dir(script: str) -> str:
    """./runs/<script>-<YYYYmmdd-HHMMSS>, the same on every rank (rank 0 picks it)."""
    folder = os.path.join("runs", f"{script}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [folder]
        dist.broadcast_object_list(box, src=0)
        folder = box[0]
    return folder


def configure(dir: str | None = None, format_strs=None, log_suffix: str = "", all_ranks: bool = False,
              script: str | None = None, default: str | None = None) -> str:
    """Start logging into `dir`, else $OPENAI_LOGDIR, else `default`, else ./runs/<script>-<timestamp>; returns
    the folder."""
    global _current
    folder = dir or os.environ.get("OPENAI_LOGDIR") or default or default_log_dir(script or _script_name())
    folder = os.path.expanduser(folder)
    rank = _rank()
    if format_strs is None:
        if rank == 0 or all_ranks:
            format_strs = os.environ.get("OPENAI_LOG_FORMAT", "stdout,log,csv").split(",")
        else:
            format_strs = os.environ.get("OPENAI_LOG_FORMAT_MPI", "").split(",")
    if rank > 0:
        log_suffix = log_suffix + f"-rank{rank:03d}"
    os.makedirs(folder, exist_ok=True)
    outputs = []
    for fmt in filter(None, format_strs):
        try:
            outputs.append(make_output_format(fmt, folder, log_suffix))
        except ImportError:
            warnings.warn(f"log format {fmt} needs the tensorboard package (pip install tensorboard); skipped")
    _current.close()
    _current = Logger(folder, outputs)
    log(f"Logging to {folder}")
    return folder


def _script_name() -> str:
    return os.path.splitext(os.path.basename(sys.argv[0] or "run"))[0] or "run"


def get_current() -> Logger:
    return _current


def get_dir() -> str | None:
    """The folder being logged to (None before configure)."""
    return _current.dir


def logkv(key: str, val) -> None:
    """Record a value for this iteration (the last value logged under a key wins)."""
    _current.logkv(key, val)


def logkv_mean(key: str, val) -> None:
    """Record a value to be averaged with the others logged under the same key until the next dump."""
    _current.logkv_mean(key, val)


def logkvs(d: dict) -> None:
    for k, v in d.items():
        logkv(k, v)


def getkvs() -> dict:
    return _current.name2val


def dumpkvs() -> dict:
    """Write the recorded values (averaged over ranks) and start a new row; returns what was written."""
    return _current.dumpkvs()


def log(*args, level: int = INFO) -> None:
    """Write a line of text to the stdout and log-file outputs."""
    _current.log(*args, level=level)


def debug(*args) -> None:
    log(*args, level=DEBUG)


def info(*args) -> None:
    log(*args, level=INFO)


def warn(*args) -> None:
    log(*args, level=WARN)


def error(*args) -> None:
    log(*args, level=ERROR)


def set_level(level: int) -> None:
    _current.level = level


record_tabular = logkv
dump_tabular = dumpkvs

