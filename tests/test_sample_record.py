"""Samples stay tied to what made them: a rerun into the same folder resumes only with the same checkpoints (by
content) and the same image-changing flags; anything else is a one-line error naming the folder and the first
difference, and parts of two runs never end up in one file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from guided_diffusion.sampling import writer as sample_writer
from guided_diffusion.sampling.record import SAMPLE_NEUTRAL_FLAGS, first_difference, sample_record
from launch import read_samples, run_main, run_script

FAST = ["--timestep_respacing", "4", "--use_ddim", "True", "--progress", "False"]
NAME = "samples_4x16x16x3"


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:12]


def _copy_checkpoint(source: str, folder) -> str:
    """The checkpoint and its args.json copied into folder/model.pt."""
    os.makedirs(folder, exist_ok=True)
    shutil.copy(source, os.path.join(folder, "model.pt"))
    shutil.copy(os.path.join(os.path.dirname(source), "args.json"), os.path.join(folder, "args.json"))
    return os.path.join(str(folder), "model.pt")


def _sample(model, log_dir, *extra, script="image_sample.py"):
    return run_main(script, ["--model_path", model, "--num_samples", 4, "--batch_size", 2, "--log_dir", log_dir,
                             *FAST, *extra])


def _refusal(script, log_dir, difference):
    return (f"{script}: error: --log_dir {log_dir} holds samples made with {difference}; use another --log_dir or "
            "remove it")


def test_rerun_with_a_retrained_checkpoint_is_refused(trained, tmp_path):
    """The same --model_path with other weights (a retrained run) does not return the old samples."""
    model = _copy_checkpoint(trained["cfg_early"], tmp_path / "ckpt")
    out = tmp_path / "out"
    assert _sample(model, out)[0] == 0
    before = read_samples(out / f"{NAME}.npz")
    old = _sha(model)
    shutil.copy(trained["cfg"], model)
    code, stderr = _sample(model, out)
    assert code == 2 and stderr == _refusal("image_sample.py", out, f"--model_path {model} (sha256 {old}), not "
                                                                   f"{model} (sha256 {_sha(model)})")
    assert np.array_equal(read_samples(out / f"{NAME}.npz")["arr_0"], before["arr_0"])  # left as it was


def test_rerun_with_other_classes_is_refused_and_the_same_settings_resume(trained, tmp_path):
    out = tmp_path / "out"
    assert _sample(trained["model"], out, "--classes", "0-3")[0] == 0
    code, stderr = _sample(trained["model"], out, "--classes", "1-2")
    assert code == 2 and stderr == _refusal("image_sample.py", out, "--classes 0-3, not 1-2")
    code, stderr = _sample(trained["model"], out, "--classes", "0-3", "--seed", 5)
    assert code == 2 and stderr == _refusal("image_sample.py", out, "--seed 0, not 5")
    # Flags that do not change the images do not block; a copy of the checkpoint elsewhere is the same checkpoint.
    copy = _copy_checkpoint(trained["model"], tmp_path / "moved")
    proc = run_script("image_sample.py", ["--model_path", copy, "--num_samples", 4, "--batch_size", 1, "--log_dir",
                                          out, "--classes", "0-3", "--grid", "False", *FAST], launcher="main")
    assert f"all 4 samples already in {out / NAME}.npz" in proc.stdout
    # The final npz keeps only what ADM's evaluator reads; its record lies beside it.
    with np.load(out / f"{NAME}.npz") as data:
        assert sorted(data.files) == ["arr_0", "arr_1"] and list(data["arr_1"]) == [0, 1, 2, 3]
    record = json.load(open(out / f"{NAME}.json"))
    assert record["script"] == "image_sample" and record["settings"]["classes"] == "0-3"
    assert record["files"]["model_path"]["sha256"] == hashlib.sha256(open(trained["model"], "rb").read()).hexdigest()
    assert record["settings"]["seed"] == 0 and not SAMPLE_NEUTRAL_FLAGS & set(record["settings"])


class _Killed(Exception):
    pass


def test_parts_of_a_killed_run_are_never_mixed_with_another_model(trained, tmp_path, monkeypatch):
    """A run stopped after its first batch leaves parts of model A: model B is refused on them (the parts stay),
    model A resumes them into the same samples as an uninterrupted run."""
    straight = tmp_path / "straight"
    assert _sample(trained["cfg"], straight)[0] == 0
    out = tmp_path / "out"
    write = sample_writer.SampleWriter.write

    def write_then_die(self, *args):
        write(self, *args)
        raise _Killed

    monkeypatch.setattr(sample_writer.SampleWriter, "write", write_then_die)
    with pytest.raises(_Killed):
        _sample(trained["cfg"], out)
    monkeypatch.undo()
    parts = sorted(os.listdir(out / f"{NAME}.parts"))
    assert parts == ["part_00000000_00000002.npz", "record.json"]

    code, stderr = _sample(trained["cfg_early"], out)
    assert code == 2 and stderr == _refusal(
        "image_sample.py", out, f"--model_path {trained['cfg']} (sha256 {_sha(trained['cfg'])}), not "
                                f"{trained['cfg_early']} (sha256 {_sha(trained['cfg_early'])})")
    assert sorted(os.listdir(out / f"{NAME}.parts")) == parts

    proc = run_script("image_sample.py", ["--model_path", trained["cfg"], "--num_samples", 4, "--batch_size", 2,
                                          "--log_dir", out, *FAST], launcher="main")
    assert "resuming: 2 of 4 samples already made" in proc.stdout
    assert np.array_equal(read_samples(out / f"{NAME}.npz")["arr_0"], read_samples(straight / f"{NAME}.npz")["arr_0"])
    assert not (out / f"{NAME}.parts").exists()


def test_folders_without_a_record_are_refused(trained, tmp_path):
    """Samples from before records were kept are not trusted: finished or unfinished."""
    out = tmp_path / "out"
    assert _sample(trained["model"], out)[0] == 0
    os.remove(out / f"{NAME}.json")
    code, stderr = _sample(trained["model"], out)
    assert code == 2 and stderr == (
        f"image_sample.py: error: --log_dir {out} holds {NAME}.npz without a record of the checkpoint and flags "
        "that made it; use another --log_dir or remove it")
    os.makedirs(out / "old" / f"{NAME}.parts")
    shutil.copy(out / f"{NAME}.npz", out / "old" / f"{NAME}.parts" / "part_00000000_00000004.npz")
    code, stderr = _sample(trained["model"], out / "old")
    assert code == 2 and f"holds the unfinished {NAME}.parts without a record" in stderr


def test_classifier_guidance_settings_are_recorded(trained, tmp_path):
    out = tmp_path / "out"
    guided = ["--classifier_path", trained["classifier"], "--classes", "0-3"]
    assert _sample(trained["model"], out, *guided, "--classifier_scale", 2, script="classifier_sample.py")[0] == 0
    code, stderr = _sample(trained["model"], out, *guided, "--classifier_scale", 4, script="classifier_sample.py")
    assert code == 2 and stderr == _refusal("classifier_sample.py", out, "--classifier_scale 2.0, not 4.0")
    code, stderr = _sample(trained["model"], out, "--classes", "0-3")
    assert code == 2 and stderr == _refusal("image_sample.py", out, "classifier_sample, not image_sample")


def test_first_difference_compares_files_by_content(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    first = sample_record("image_sample", {"model_path": str(a), "classifier_path": str(a), "seed": 0, "progress": 1})
    assert first_difference(first, sample_record("image_sample", {"model_path": str(b), "classifier_path": str(b),
                                                                  "seed": 0, "progress": 0})) is None
    b.write_bytes(b"other weights")
    moved = sample_record("image_sample", {"model_path": str(a), "classifier_path": str(b), "seed": 0})
    assert first_difference(first, moved) == (f"--classifier_path {a} (sha256 {_sha(a)}), not {b} (sha256 "
                                              f"{_sha(b)})")
    unguided = sample_record("image_sample", {"model_path": str(a), "seed": 0})
    assert first_difference(first, unguided) == f"--classifier_path {a} (sha256 {_sha(a)}), not none"
    assert first_difference(unguided, {**unguided, "settings": {"seed": 0, "classes": "1"}}) == \
        "no --classes, not --classes 1"
