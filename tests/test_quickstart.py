"""The main job (quickstart.sh --fast) end to end, and the independent digit judge it reports with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import numpy as np
from PIL import Image

from launch import ROOT, script_env


def _judge_module():
    spec = importlib.util.spec_from_file_location("digits_judge", os.path.join(ROOT, "datasets", "digits_judge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_judge_recognizes_real_digits_and_rejects_noise(tmp_path):
    judge = _judge_module()
    images, labels = judge._digits_module().load_digit_arrays()
    # Real digits rendered at 16x16 RGB the way the training data is (nearest 2x upscale keeps the 8x8 exact).
    real = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    real = np.repeat(real[..., None], 3, axis=3)
    np.savez(tmp_path / "real.npz", real[::9], labels[::9])
    noise = np.random.default_rng(0).integers(0, 256, real[::9].shape, dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", noise, labels[::9])
    rows = judge.judge({1.0: str(tmp_path / "real.npz"), 0.0: str(tmp_path / "noise.npz")}, str(tmp_path / "out"))
    accuracy = {r["scale"]: r["accuracy"] for r in rows}
    assert accuracy[1.0] > 0.97
    assert accuracy[0.0] < 0.3
    assert Image.open(tmp_path / "out" / "grid_scale1.0.png").size == (2 * (10 * 18 + 2), 2 * (10 * 18 + 2))


def test_quickstart_fast(tmp_path):
    out = tmp_path / "quickstart"
    proc = subprocess.run(["bash", os.path.join(ROOT, "quickstart.sh"), "--fast", "--out", str(out)],
                          env=script_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines.index("| guidance scale | recognized as the requested digit | samples |")
    table = lines[header:header + 4]
    assert table[1] == "|---|---|---|"
    rows = json.load(open(out / "judge" / "results.json"))
    assert [r["scale"] for r in rows] == [0.0, 10.0]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["samples"] == 100
        assert os.path.exists(row["grid"]) and os.path.exists(row["npz"])
        assert f"| {row['scale']:g} | {100 * row['accuracy']:.1f}% | 100 |" in table
    unguided, guided = rows[0]["accuracy"], max(r["accuracy"] for r in rows[1:])
    assert guided > unguided, rows
    assert os.path.exists(out / "diffusion" / "args.json") and os.path.exists(out / "classifier" / "args.json")
