"""Broken files and failed writes in a run folder: truncated or foreign checkpoints, malformed args.json and
phema.json, a full disk while saving, and the temporary files of writes killed midway."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from guided_diffusion import logger
from guided_diffusion.cli import fileio
from guided_diffusion.training import phema
from guided_diffusion.cli.fileio import DiskFullError, atomic_write, remove_stale_temporaries
from launch import ROOT, TINY_MODEL, call_main, make_image_folder, run_main, script_env, wait_for

LEFTOVER = ".model000002.pt.k3x_9q0a.tmp"  # the name atomic_write's temporary file of model000002.pt can have


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=8, size=16)


def _train_args(images, log_dir, *extra):
    return ["--data_dir", images, "--log_dir", str(log_dir), "--batch_size", "2", "--save_interval", "2",
            "--num_workers", "0", *TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def run_dir(images, tmp_path_factory):
    """A finished two-step training run: args.json, model/ema/opt000002.pt."""
    folder = tmp_path_factory.mktemp("run") / "run"
    call_main("image_train.py", _train_args(images, folder, "--max_steps", "2"))
    return folder


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A copy of the finished run, to break."""
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    return folder


def _resume(images, folder) -> tuple[int, str]:
    """Resume the finished run (its files are all read; no step is left to train)."""
    return run_main("image_train.py", _train_args(images, folder, "--max_steps", "2", "--resume_checkpoint", "auto"))


def _one_line_error(code: int, err: str, script: str) -> str:
    """The message of the one error line on stderr (progress bars may be drawn around it), exit code 2."""
    assert code == 2 and "Traceback" not in err, err
    marker = f"{script}: error: "
    lines = [line.split(marker, 1)[1] for line in err.split("\n") if marker in line]
    assert len(lines) == 1, err
    return lines[0]


_ran = []


def _record_call(*args):
    """What a malicious pickle would call; the loader must refuse it before anything runs."""
    _ran.append(args)


class _Malicious:
    def __reduce__(self):
        return _record_call, ("ran",)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["opt000002.pt", "model000002.pt", "ema_0.9999_000002.pt"])
def test_a_truncated_checkpoint_stops_the_resume_in_one_line(images, run_copy, name):
    _truncate(run_copy / name)
    message = _one_line_error(*_resume(images, run_copy), "image_train.py")
    assert message == (f"cannot read checkpoint {run_copy / name}: the file is truncated or corrupt (RuntimeError: "
                       "PytorchStreamReader failed reading zip archive: failed finding central directory)")


def test_an_empty_optimizer_file_stops_the_resume_in_one_line(images, run_copy):
    (run_copy / "opt000002.pt").write_bytes(b"")
    message = _one_line_error(*_resume(images, run_copy), "image_train.py")
    assert message == f"cannot read checkpoint {run_copy / 'opt000002.pt'}: the file is truncated or corrupt (EOFError)"


def test_an_optimizer_file_naming_a_refused_global_is_not_run(images, run_copy):
    torch.save({"optimizer": _Malicious()}, run_copy / "opt000002.pt")
    message = _one_line_error(*_resume(images, run_copy), "image_train.py")
    assert message == (f"cannot read checkpoint {run_copy / 'opt000002.pt'}: it names test_file_faults._record_call, "
                       "which the weights-only loader refuses (not a checkpoint written by these scripts; it may be "
                       "malicious): delete it")
    assert _ran == []


def test_an_optimizer_file_of_another_kind_is_named(images, run_copy):
    torch.save([1, 2], run_copy / "opt000002.pt")
    message = _one_line_error(*_resume(images, run_copy), "image_train.py")
    assert message == (f"cannot read checkpoint {run_copy / 'opt000002.pt'}: it holds a list, not the optimizer state "
                       "of a training run")


@pytest.mark.parametrize("content, reason", [
    ('{"num_channels": ', "not a readable JSON file of flags (Expecting value: line 1 column 18 (char 17))"),
    ("[1, 2]", "expected a JSON object of flags, got a list"),
    (b"\xff\xfe{}", "not a readable JSON file of flags ('utf-8' codec can't decode byte 0xff in position 0: invalid "
                    "start byte)"),
])
def test_a_malformed_args_json_is_named(run_copy, tmp_path, content, reason):
    path = run_copy / "args.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_main("image_sample.py", ["--model_path", run_copy / "model000002.pt", "--num_samples", 2,
                                          "--log_dir", tmp_path / "samples", "--timestep_respacing", 2])
    assert _one_line_error(*result, "image_sample.py") == f"{path}: {reason}"


def test_a_malformed_args_json_stops_a_resume_in_one_line(images, run_copy):
    path = run_copy / "args.json"
    path.write_text('{"num_channels": 32,')
    message = _one_line_error(*_resume(images, run_copy), "image_train.py")
    assert message.startswith(f"{path}: not a readable JSON file of flags (")


@pytest.mark.parametrize("content, reason", [
    ("{", "not a readable JSON index of snapshots (Expecting property name enclosed in double quotes: line 1 "
          "column 2 (char 1))"),
    ("[]", 'expected an object {file name: {"std": number, "step": integer, "nimg": integer}}, got a list'),
    ('{"phema_0.050_000002.pt": {"std": 0.05, "step": "2", "nimg": 4}}',
     """the entry 'phema_0.050_000002.pt' is not {"std": number, "step": integer, "nimg": integer}"""),
])
def test_a_malformed_phema_json_is_named(tmp_path, content, reason):
    (tmp_path / "phema.json").write_text(content)
    result = run_main("reconstruct_ema.py", ["--run_dir", tmp_path, "--sigma_rel", "0.05"])
    assert _one_line_error(*result, "reconstruct_ema.py") == f"{tmp_path / 'phema.json'}: {reason}"
    with pytest.raises(ValueError, match="phema.json: "):
        phema.read_index(str(tmp_path))


def test_a_truncated_phema_snapshot_is_named(images, tmp_path):
    folder = tmp_path / "run"
    call_main("image_train.py", _train_args(images, folder, "--max_steps", "1", "--phema_stds", "0.05,0.10"))
    snapshot = folder / "phema_0.050_000001.pt"
    _truncate(snapshot)
    message = _one_line_error(*run_main("reconstruct_ema.py", ["--run_dir", folder, "--sigma_rel", "0.07"]),
                              "reconstruct_ema.py")
    assert message.startswith(f"cannot read checkpoint {snapshot}: the file is truncated or corrupt")


# ----- a full disk -----------------------------------------------------------------------------------------------

def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def fill(f):
        f.write(b"new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFullError) as info:
        atomic_write(str(path), fill)
    assert str(info.value) == f"no space left on device while writing {path}"
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]


def _small_disk(monkeypatch, budget: int) -> None:
    """Make every file opened by atomic_write refuse writes with ENOSPC once `budget` bytes are written in all."""
    real_fdopen = os.fdopen
    used = [0]

    class FullDiskFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            used[0] += len(memoryview(data).cast("B"))
            if used[0] > budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, *args, **kwargs: FullDiskFile(real_fdopen(fd, *args, **kwargs)))


def _assert_disk_full_error(images, log_dir):
    code, err = run_main("image_train.py", _train_args(images, log_dir, "--max_steps", "1", "--save_interval", "1"))
    message = _one_line_error(code, err, "image_train.py")
    assert message == f"no space left on device while writing {log_dir / 'ema_0.9999_000001.pt'}"
    names = os.listdir(log_dir)
    assert "args.json" in names and not any(n.endswith(".tmp") or n.endswith(".pt") for n in names), names


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(images, tmp_path, monkeypatch):
    """torch.save reports the failed write as a RuntimeError raised while handling the OSError: still named."""
    _small_disk(monkeypatch, budget=100_000)  # args.json fits, the first checkpoint (3 MB) does not
    _assert_disk_full_error(images, tmp_path / "run")


@pytest.mark.slow
def test_a_full_tmpfs_while_saving_a_checkpoint_is_one_line(images, tmp_path, monkeypatch):
    """On a real 1 MB tmpfs when this process may mount one, else on the simulated small disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    if not mounted:
        _small_disk(monkeypatch, budget=100_000)
    try:
        _assert_disk_full_error(images, disk / "run")
    finally:
        logger.configure(format_strs=[], dir=str(tmp_path / "after"))  # closes the run's log files on the disk
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


# ----- temporary files of interrupted writes ---------------------------------------------------------------------

def test_only_the_atomic_writers_own_temporaries_are_removed(tmp_path):
    parts = tmp_path / "samples_6x16x16x3.parts"
    parts.mkdir()
    ours = [tmp_path / LEFTOVER, tmp_path / ".args.json.abcdefgh.tmp", parts / ".part_0_2.npz.a1b2c3d4.tmp"]
    others = [tmp_path / "notes.tmp", tmp_path / ".model.pt.tmp", tmp_path / "model.pt.abcdefgh.tmp",
              tmp_path / ".model.pt.ABCDEFGH.tmp", tmp_path / "model000002.pt"]
    for path in ours + others:
        path.write_bytes(b"x")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(map(str, ours))
    assert all(p.exists() for p in others) and not any(p.exists() for p in ours)
    assert (tmp_path / ".dir.abcdefgh.tmp").is_dir()


def test_a_resumed_training_run_removes_its_leftover_temporaries(images, run_dir, run_copy):
    (run_copy / LEFTOVER).write_bytes(b"half a checkpoint")
    (run_copy / "notes.tmp").write_bytes(b"not ours")
    code, err = _resume(images, run_copy)
    assert code == 0, err
    assert not (run_copy / LEFTOVER).exists() and (run_copy / "notes.tmp").exists()
    assert (run_copy / "model000002.pt").read_bytes() == (run_dir / "model000002.pt").read_bytes()


def test_a_resumed_sampling_run_removes_its_leftover_temporaries(run_dir, tmp_path):
    out = tmp_path / "samples"
    leftovers = [out / ".samples_2x16x16x3.npz.zz_00001.tmp",
                 out / "samples_2x16x16x3.parts" / ".part_0_1.npz.q1w2e3r4.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    call_main("image_sample.py", ["--model_path", run_dir / "model000002.pt", "--num_samples", 2, "--batch_size", 2,
                                  "--log_dir", out, "--timestep_respacing", 2])
    assert not any(p.exists() for p in leftovers)
    assert (out / "samples_2x16x16x3.npz").exists()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from guided_diffusion.cli.fileio import atomic_write

    def write(f):
        f.write(b"x" * 1000)
        f.flush()
        time.sleep(600)

    atomic_write(sys.argv[1], write)
""")


@pytest.mark.slow
def test_a_write_killed_midway_leaves_a_temporary_the_next_run_removes(images, run_copy):
    """A real SIGKILL inside atomic_write leaves its temporary file beside the target; resuming removes it."""
    target = run_copy / "model000002.pt"
    before = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], env=script_env(), cwd=ROOT)
    wait_for(lambda: any(n.endswith(".tmp") for n in os.listdir(run_copy)), proc, "a temporary file", timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [n for n in os.listdir(run_copy) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model000002.pt.")
    assert target.read_bytes() == before
    code, err = _resume(images, run_copy)
    assert code == 0, err
    assert not [n for n in os.listdir(run_copy) if n.endswith(".tmp")]
