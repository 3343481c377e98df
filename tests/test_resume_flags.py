"""A continued training run keeps what its checkpoints are: flags that define them cannot change under existing
checkpoints (one-line error naming the flag and both values, args.json untouched), flags that steer training
can, and no run writes over another run's checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from guided_diffusion.training import resume_flags
from guided_diffusion.loading.checkpoint_flags import _NOT_ARCHITECTURE
from guided_diffusion.networks.sigma_space import edm_defaults
from guided_diffusion.script_util import (classifier_defaults, model_and_diffusion_defaults,
                                          sr_model_and_diffusion_defaults)
from launch import ROOT, TINY_CLASSIFIER, TINY_MODEL, call_main, make_image_folder, run_main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=8, size=16)


def _args(images, log_dir, *extra):
    return ["--data_dir", images, "--log_dir", log_dir, "--batch_size", 2, "--save_interval", 2, "--log_interval", 2,
            *TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    """A 2-step run with power-function EMAs (never modified by the tests that use it directly)."""
    log_dir = tmp_path_factory.mktemp("run")
    call_main("image_train.py", _args(images, log_dir, "--max_steps", 2, "--phema_stds", "0.05,0.10"))
    return log_dir


def _files(folder) -> dict:
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def _refused(images, log_dir, extra, message):
    """The continued run fails with `message` and leaves every file of log_dir (args.json included) as it was."""
    before = _files(log_dir)
    args_json = open(os.path.join(log_dir, "args.json"), "rb").read()
    code, stderr = run_main("image_train.py", _args(images, log_dir, "--max_steps", 4, *extra))
    assert code == 2 and stderr == f"image_train.py: error: {message}", stderr
    assert open(os.path.join(log_dir, "args.json"), "rb").read() == args_json
    assert {k: v for k, v in _files(log_dir).items() if k != "log.txt"} == \
        {k: v for k, v in before.items() if k != "log.txt"}


@pytest.mark.parametrize("flag, value, saved", [
    ("--diffusion_steps", "500", "1000"),
    ("--noise_schedule", "cosine", "linear"),
    ("--predict_xstart", "True", "False"),
    ("--ema_rate", "0.9999,0.99", "0.9999"),  # was: no complete set for the new rate, a silent restart at step 0
    ("--phema_stds", "", "0.05,0.10"),  # was: the snapshots silently stopped
])
def test_changed_checkpoint_flags_are_refused(images, run, flag, value, saved):
    shown = '""' if value == "" else value
    _refused(images, run, [*(["--phema_stds", "0.05,0.10"] if flag != "--phema_stds" else []), flag, value,
                           "--resume_checkpoint", "auto"],
             f"--log_dir {run} holds checkpoints trained with other flags: use {flag} {saved} (now {shown}) to "
             "resume them, or use another --log_dir")


def test_a_run_never_overwrites_another_runs_checkpoints(images, run, tmp_path):
    _refused(images, run, ["--phema_stds", "0.05,0.10"],
             f"--log_dir {run} holds checkpoints of another run (up to model000002.pt) and this run starts anew: "
             "resume it with --resume_checkpoint auto, or use another --log_dir")
    other = tmp_path / "other"
    call_main("image_train.py", _args(images, other, "--max_steps", 2))
    _refused(images, run, ["--phema_stds", "0.05,0.10", "--resume_checkpoint", other / "model000002.pt"],
             f"--log_dir {run} holds checkpoints of another run (up to model000002.pt) and this run continues "
             f"{other / 'model000002.pt'}: resume it with --resume_checkpoint auto, or use another --log_dir")
    # A checkpoint of another folder, continued in a fresh one, is checked against its own args.json.
    code, stderr = run_main("image_train.py", _args(images, tmp_path / "fresh", "--max_steps", 4, "--diffusion_steps",
                                                    500, "--resume_checkpoint", other / "model000002.pt"))
    assert code == 2 and stderr == (f"image_train.py: error: --resume_checkpoint {other / 'model000002.pt'} was "
                                    "trained with other flags: use --diffusion_steps 1000 (now 500) to resume it")


def test_flags_that_steer_training_may_change(images, run, tmp_path):
    log_dir = tmp_path / "copy"
    shutil.copytree(run, log_dir)
    stdout = call_main("image_train.py", _args(images, log_dir, "--max_steps", 4, "--phema_stds", "0.05,0.10",
                                               "--ema_rate", "0.99990", "--lr", 3e-4, "--batch_size", 4,
                                               "--save_interval", 4, "--resume_checkpoint", "auto"))
    assert f"resuming from {log_dir / 'model000002.pt'} at step 2" in stdout
    written = {"model000004.pt", "ema_0.9999_000004.pt", "opt000004.pt", "phema_0.100_000004.pt"}
    assert written <= set(os.listdir(log_dir))
    saved = json.load(open(log_dir / "args.json"))
    assert saved["lr"] == 3e-4 and saved["batch_size"] == 4 and saved["diffusion_steps"] == 1000


def test_folders_without_args_json_are_still_guarded(images, run, tmp_path):
    """A folder without args.json (a run of the original code) cannot be checked by flags; the files still show
    a changed --ema_rate or a dropped --phema_stds."""
    log_dir = tmp_path / "bare"
    shutil.copytree(run, log_dir)
    os.remove(log_dir / "args.json")
    code, stderr = run_main("image_train.py", _args(images, log_dir, "--max_steps", 4, "--phema_stds", "0.05,0.10",
                                                    "--ema_rate", "0.99", "--resume_checkpoint", "auto"))
    assert code == 2 and stderr == (
        f"image_train.py: error: --resume_checkpoint auto: {log_dir} holds model000002.pt without "
        "ema_0.99_000002.pt, so its run kept other EMAs: resume with its --ema_rate, or use another --log_dir")
    code, stderr = run_main("image_train.py", _args(images, log_dir, "--max_steps", 4, "--resume_checkpoint", "auto"))
    assert code == 2 and stderr == (
        f"image_train.py: error: --phema_stds is not given, but {log_dir} holds power-function EMA snapshots of "
        "widths 0.05,0.1: pass --phema_stds with them to keep the series going, or use another --log_dir")
    # Continued from elsewhere, the optimizer file tells.
    code, stderr = run_main("image_train.py", _args(images, tmp_path / "elsewhere", "--max_steps", 4,
                                                    "--resume_checkpoint", log_dir / "model000002.pt"))
    assert code == 2 and stderr == (
        f"image_train.py: error: --phema_stds is not given, but the resumed run {log_dir / 'model000002.pt'} tracks "
        "power-function EMAs: pass --phema_stds 0.05,0.1 to keep its snapshots going")
    assert not (log_dir / "args.json").exists() and not (log_dir / "model000004.pt").exists()


def test_classifier_train_keeps_its_checkpoints_flags(images, tmp_path):
    log_dir = tmp_path / "clf"
    common = ["--data_dir", images, "--log_dir", log_dir, "--batch_size", 4, "--save_interval", 2,
              "--random_crop", "False", *TINY_CLASSIFIER]
    call_main("classifier_train.py", [*common, "--iterations", 2])
    code, stderr = run_main("classifier_train.py", [*common, "--iterations", 4, "--noise_schedule", "cosine",
                                                    "--resume_checkpoint", "auto"])
    assert code == 2 and stderr == (
        f"classifier_train.py: error: --log_dir {log_dir} holds checkpoints trained with other flags: use "
        "--noise_schedule linear (now cosine) to resume them, or use another --log_dir")
    stdout = call_main("classifier_train.py", [*common, "--iterations", 4, "--lr", 1e-3, "--resume_checkpoint", "auto"])
    assert "at step 2" in stdout and (log_dir / "model000004.pt").exists()


def _parser_flags(script: str) -> set[str]:
    spec = importlib.util.spec_from_file_location(f"flags_{script}", os.path.join(ROOT, "scripts", f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(vars(module.create_argparser().parse_args([])))


def test_every_training_flag_is_sorted_into_one_set():
    """The split is explicit: each flag of the training scripts is a checkpoint flag or a run flag, never both; a
    flag the sampling scripts read back from args.json is a checkpoint flag (else a resumed run could change what
    sampling builds)."""
    assert not resume_flags.CHECKPOINT_FLAGS & resume_flags.RUN_FLAGS
    for script in ("image_train", "classifier_train", "super_res_train"):
        unsorted = _parser_flags(script) - resume_flags.CHECKPOINT_FLAGS - resume_flags.RUN_FLAGS
        assert not unsorted, (script, unsorted)
    read_back = {*model_and_diffusion_defaults(), *sr_model_and_diffusion_defaults(), *edm_defaults(),
                 *classifier_defaults()} - _NOT_ARCHITECTURE
    assert read_back <= resume_flags.CHECKPOINT_FLAGS, read_back - resume_flags.CHECKPOINT_FLAGS
