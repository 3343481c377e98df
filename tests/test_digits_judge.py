"""The digits judge: its feature network, its metrics calibrated on real digit sets, its inputs and outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from launch import ROOT

sys.path.insert(0, os.path.join(ROOT, "datasets"))

import digits_features  # noqa: E402
import digits_judge  # noqa: E402
from evaluations.distances import NumpyDistances  # noqa: E402
from evaluations.metrics import precision_recall  # noqa: E402


def _calibration_module():
    path = os.path.join(ROOT, "benchmarks", "digits_judge_calibration.py")
    spec = importlib.util.spec_from_file_location("digits_judge_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibration(digits_judge_session):
    judge, _ = digits_judge_session
    sets = _calibration_module().calibration_sets()
    return {name: judge.measure(images, labels, name) for name, (images, labels) in sets.items()}


def test_feature_network_is_accurate_cached_and_deterministic(digits_judge_session, capsys):
    judge, cache = digits_judge_session
    assert digits_features.accuracy(judge.net, "test") >= 0.97
    again = digits_features.load_feature_net(cache=cache)
    assert "test-split accuracy" in capsys.readouterr().out
    for a, b in zip(judge.net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    (entry,) = os.listdir(os.path.join(cache, "digits_features"))
    assert entry == f"{digits_features.cache_key()}.pt"
    first, second = digits_features.train_feature_net(epochs=1), digits_features.train_feature_net(epochs=1)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_reduction_is_the_same_for_real_and_generated_images():
    images, _ = digits_features.real_images("test")
    assert images.shape == (360, 16, 16, 3) and images.dtype == np.uint8
    x = digits_features.reduce_images(images)
    assert x.shape == (360, 1, 16, 16)
    np.testing.assert_allclose(x[:, 0].numpy(), images.mean(axis=3) / 255, atol=1e-6)
    doubled = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # a 32x32 sample is area-averaged to 16x16
    np.testing.assert_allclose(digits_features.reduce_images(doubled).numpy(), x.numpy(), atol=1e-6)


def test_fd_ranks_real_digits_far_below_every_corruption(calibration):
    real = calibration["train split"]["fd"]
    noise_levels = [calibration[f"test split + noise std {s}"]["fd"] for s in (96, 128, 192)]
    assert real < 100
    for corrupted in (calibration["Gaussian noise"]["fd"], calibration["one class (3s of train)"]["fd"], *noise_levels):
        assert corrupted > 4 * real
    assert noise_levels[0] < noise_levels[1] < noise_levels[2]
    assert calibration["test split, half"]["fd"] < real  # unseen real digits are closest of all


def test_precision_recall_and_class_coverage(calibration):
    one_class = calibration["one class (3s of train)"]
    assert one_class["precision"] > 0.85 and one_class["recall"] < 0.2
    assert one_class["classes_present"] == 1 and one_class["class_entropy"] == 0.0
    half = calibration["test split, half"]
    assert half["precision"] > 0.95 and half["recall"] > 0.9
    assert half["classes_present"] == 10 and half["class_entropy"] > 3.2
    assert calibration["Gaussian noise"]["precision"] < 0.05 and calibration["Gaussian noise"]["recall"] < 0.05
    assert calibration["train split"]["recognized"] == 1.0 and calibration["Gaussian noise"]["recognized"] < 0.3
    recalls = [calibration[f"test split + noise std {s}"]["recall"] for s in (96, 128, 192)]
    assert recalls[0] > recalls[1] > recalls[2]


def test_numpy_kernels_give_the_definition():
    """Precision/recall through the evaluator's code with numpy kernels equal a direct float64 computation."""
    rng = np.random.default_rng(1)
    ref, sample = rng.normal(size=(300, 8)), rng.normal(0.3, 1.2, size=(200, 8))

    def squared(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    ref_radii = np.sort(squared(ref, ref), axis=1)[:, 3]
    sample_radii = np.sort(squared(sample, sample), axis=1)[:, 3]
    cross = squared(sample, ref)
    expected = ((cross <= ref_radii[None]).any(1).mean(), (cross <= sample_radii[:, None]).any(0).mean())
    kernels = NumpyDistances()
    assert precision_recall(ref, sample, kernels) == pytest.approx(expected, abs=0)
    assert precision_recall(ref, sample, kernels, block=64) == pytest.approx(expected, abs=0)


def test_cli_writes_results_table_grids_and_plot(digits_judge_session, tmp_path, capsys, monkeypatch):
    _, cache = digits_judge_session
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", cache)
    images, labels = digits_features.real_images("test")
    np.savez(tmp_path / "real.npz", images, labels)
    np.savez(tmp_path / "unlabelled.npz", images[:100])
    out = tmp_path / "judge"
    argv = ["--out_dir", str(out), "--plot", str(out / "plot.png"), "--column", "scale", f"0={tmp_path / 'real.npz'}",
            f"2.5={tmp_path / 'real.npz'}"]
    assert digits_judge.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| scale | recognized as requested | FD | precision | recall | digits present | samples |" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["0", "2.5"]
    for row in results.values():
        assert {"recognized", "fd", "precision", "recall", "classes_present", "class_entropy"} <= set(row)
        assert row["recognized"] == 1.0 and row["samples"] == 360 and row["classes_present"] == 10
        assert row["fd"] < 1e-6  # the reference set itself
        assert Image.open(row["grid"]).size == (2 * (10 * 18 + 2), 2 * (10 * 18 + 2))
    assert (out / "table.md").read_text().splitlines()[2].startswith("| 0 | 100.0% |")
    assert Image.open(out / "plot.png").size[0] > 300
    assert digits_judge.main(["--out_dir", str(out), "--unlabelled", f"u={tmp_path / 'unlabelled.npz'}"]) == 0
    assert json.loads((out / "results.json").read_text())["u"]["recognized"] is None


def _write(path, images, labels=None):
    np.savez(path, images) if labels is None else np.savez(path, images, labels)
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: _write(p, np.zeros((8, 16, 16, 3), np.float32), np.zeros(8, int)),
     "arr_0 must be uint8 RGB images [N, S, S, 3] with S a multiple of 16, got float32 [8, 16, 16, 3]"),
    (lambda p: _write(p, np.zeros((8, 16, 16), np.uint8), np.zeros(8, int)), "got uint8 [8, 16, 16]"),
    (lambda p: _write(p, np.zeros((8, 12, 12, 3), np.uint8), np.zeros(8, int)), "got uint8 [8, 12, 12, 3]"),
    (lambda p: _write(p, np.zeros((8, 16, 16, 3), np.uint8)), "no arr_1 (the requested digits), needed for "
                                                               "'recognized'; pass --unlabelled"),
    (lambda p: _write(p, np.zeros((8, 16, 16, 3), np.uint8), np.full(8, 10)),
     "arr_1 must hold one digit 0..9 per image (8 integers), got int64 [8]"),
    (lambda p: _write(p, np.zeros((8, 16, 16, 3), np.uint8), np.zeros(7, int)), "got int64 [7]"),
    (lambda p: (p.write_bytes(b"not an npz"), str(p))[1], "cannot read as .npz"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, make, message):
    path = make(tmp_path / "bad.npz")
    assert digits_judge.main(["--out_dir", str(tmp_path / "out"), f"x={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"digits_judge.py: error: {path}: ") and message in err, err


@pytest.mark.parametrize("pairs, message", [
    (["noequals"], "expected NAME=NPZ"),
    (["a=missing.npz"], "missing.npz: no such file"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, pairs, message):
    assert digits_judge.main(["--out_dir", str(tmp_path), *pairs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_plot_needs_numeric_names_and_names_are_unique(tmp_path, capsys):
    path = _write(tmp_path / "s.npz", np.zeros((8, 16, 16, 3), np.uint8), np.zeros(8, int))
    assert digits_judge.main(["--out_dir", str(tmp_path), "--plot", "p.png", f"ddim={path}"]) == 2
    assert "--plot needs numeric set names, got ddim" in capsys.readouterr().err
    assert digits_judge.main(["--out_dir", str(tmp_path), f"a={path}", f"a={path}"]) == 2
    assert "the set name 'a' is given twice" in capsys.readouterr().err


def test_seed_summary_pairs_seeds_with_the_first_group():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import seed_summary

    def metrics(fd, recognized=0.5):
        return {"fd": fd, "recognized": recognized, "precision": 0.5, "recall": 0.5}

    results = {"0@0": metrics(100), "0@1": metrics(140), "2@0": metrics(80, 0.9), "2@1": metrics(110, 0.7)}
    summary = seed_summary.summarize(results)
    assert list(summary) == ["0", "2"]
    assert summary["2"]["fd"] == pytest.approx((95, np.std([80, 110], ddof=1)))
    assert summary["2"]["fd_diff"] == pytest.approx((-25, np.std([-20, -30], ddof=1)))
    assert summary["2"]["recognized"][0] == pytest.approx(0.8) and summary["0"]["fd_diff"] == (0, 0)
    lines = seed_summary.table(summary, "scale").splitlines()
    assert lines[0].startswith("| scale | recognized | FD | FD - FD at 0 (paired) |")
    assert lines[3] == "| 2 | 80.0 ± 14.1% | 95.0 ± 21.2 | -25.0 ± 7.1 | 0.500 ± 0.000 | 0.500 ± 0.000 | 2 |"


def test_damaged_feature_network_is_refused_not_measured(digits_judge_session, tmp_path, capsys, monkeypatch):
    """A cached network that gives non-finite features would print FD nan: its statistics are refused instead."""
    _, cache = digits_judge_session
    folder = os.path.join(cache, "digits_features")
    (entry,) = (os.path.join(folder, name) for name in os.listdir(folder))
    saved = torch.load(entry, weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first].view(-1)[0] = float("nan")
    damaged = tmp_path / "cache"
    os.makedirs(damaged / "digits_features")
    torch.save(saved, damaged / "digits_features" / os.path.basename(entry))
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(damaged))
    path = _write(tmp_path / "s.npz", digits_features.real_images("test")[0][:20], np.zeros(20, int))
    assert digits_judge.main(["--out_dir", str(tmp_path / "out"), f"x={path}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"digits_judge.py: error: the digits feature network cached in {damaged / 'digits_features'} gives "
                   "unusable test-split statistics: mu holds NaN or infinite values; delete the folder to retrain "
                   "it\n")
