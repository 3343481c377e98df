"""Post-hoc EMA (guided_diffusion/training/phema.py) against EDM2's own numbers (tests/fixtures/reference/edm2/phema.json),
plus the closed forms checked against direct numerical integration."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from guided_diffusion.training import phema

from reference import REFERENCE

with open(os.path.join(REFERENCE, "edm2", "phema.json")) as f:
    GOLDEN = json.load(f)


def _rel(got, want) -> float:
    got, want = np.float64(got), np.float64(want)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))


def test_std_to_exp_and_back():
    for std, exp in GOLDEN["std_to_exp"].items():
        assert _rel(phema.std_to_exp(float(std)), exp) <= 1e-6
        assert _rel(phema.exp_to_std(exp), float(std)) <= 1e-9


@pytest.mark.parametrize("case", range(len(GOLDEN["beta"])))
def test_power_function_beta(case):
    c = GOLDEN["beta"][case]
    got = phema.power_function_beta(c["std"], c["t_next"], c["t_delta"])
    assert abs(got - c["beta"]) <= 1e-6 * max(abs(c["beta"]), 1e-12)


@pytest.mark.parametrize("case", range(len(GOLDEN["cases"])))
def test_posthoc_coefficients_match_edm2(case):
    c = GOLDEN["cases"][case]
    got = phema.solve_posthoc_coefficients(c["in_ofs"], c["in_std"], c["out_ofs"], c["out_std"])
    want = np.float64(c["coefficients"])
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-6
    np.testing.assert_allclose(got.sum(axis=0), 1.0, rtol=1e-12)


def test_correlation_is_the_inner_product_of_the_profiles():
    """The closed form against a Riemann sum of the two normalized profiles (g + 1) / t_end (t / t_end)^g."""
    t = np.linspace(0, 1000, 2_000_001)
    dt = t[1] - t[0]

    def profile(ofs, std):
        g = phema.std_to_exp(std)
        return np.where(t <= ofs, (g + 1) / ofs * (t / ofs) ** g, 0.0)

    for a, b in (((400, 0.05), (800, 0.1)), ((800, 0.1), (300, 0.05)), ((600, 0.07), (600, 0.07))):
        numeric = float(np.sum(profile(*a) * profile(*b)) * dt)
        assert abs(phema.power_function_correlation(a[0], a[1], b[0], b[1]) - numeric) <= 1e-3 * numeric


def test_reconstruction_matches_an_ema_tracked_directly():
    """A parameter trajectory (a random walk with drift, batch 8): EMAs of widths 0.05 and 0.10 snapshot every 100
    steps, combined post hoc into width 0.07 at the last step, against a 0.07 EMA tracked along: the difference is
    below 1% of the distance the parameters travelled."""
    import torch

    generator = torch.Generator().manual_seed(0)
    weights = torch.zeros(64)
    tracked = phema.PowerFunctionEMA([weights], [0.05, 0.10])
    direct = phema.PowerFunctionEMA([weights], [0.07])
    snapshots, batch, steps = [], 8, 2000
    for step in range(1, steps + 1):
        weights = weights + 0.01 + 0.1 * torch.randn(64, generator=generator)
        tracked.update([weights], step * batch, batch)
        direct.update([weights], step * batch, batch)
        if step % 100 == 0:
            snapshots += [(step * batch, std, average[0].clone()) for std, average in zip(tracked.stds,
                                                                                         tracked.averages)]
    coefficients = phema.solve_posthoc_coefficients([s[0] for s in snapshots], [s[1] for s in snapshots],
                                                    steps * batch, 0.07)
    rebuilt = sum(float(c) * s[2] for c, s in zip(coefficients[:, 0], snapshots))
    travelled = float((weights - snapshots[0][2]).abs().mean())
    error = float((rebuilt - direct.averages[0][0]).abs().max())
    assert error <= 0.01 * travelled, (error, travelled)


def test_training_snapshots_resume_and_reconstruct(tmp_path):
    """image_train.py --phema_stds: snapshots at every save; a run stopped at step 2 and resumed to 4 writes the
    same step-4 snapshots as an uninterrupted run; reconstruct_ema.py writes a checkpoint image_sample.py loads."""
    from launch import TINY_MODEL, make_image_folder, read_samples, run_main

    images = make_image_folder(str(tmp_path / "images"), count=8, size=16)

    def train(folder, steps):
        code, stderr = run_main("image_train.py", ["--data_dir", images, "--log_dir", folder, "--batch_size", 4,
                                                   "--max_steps", steps, "--save_interval", 2, "--lr", 1e-3,
                                                   "--phema_stds", "0.05,0.10", "--resume_checkpoint", "auto",
                                                   *TINY_MODEL])
        assert code == 0, stderr

    train(tmp_path / "whole", 4)
    train(tmp_path / "parts", 2)
    train(tmp_path / "parts", 4)
    index = phema.read_index(str(tmp_path / "whole"))
    assert sorted(index) == ["phema_0.050_000002.pt", "phema_0.050_000004.pt", "phema_0.100_000002.pt",
                             "phema_0.100_000004.pt"]
    assert index["phema_0.100_000004.pt"] == {"std": 0.1, "step": 4, "nimg": 16}
    import torch
    for name in ("phema_0.050_000004.pt", "phema_0.100_000004.pt"):
        whole = torch.load(tmp_path / "whole" / name)
        parts = torch.load(tmp_path / "parts" / name)
        assert all(torch.equal(whole[k], parts[k]) for k in whole) and whole["out.2.weight"].dtype == torch.float16
    code, stderr = run_main("reconstruct_ema.py", ["--run_dir", tmp_path / "whole", "--sigma_rel", "0.07"])
    assert code == 0, stderr
    code, stderr = run_main("image_sample.py", ["--model_path", tmp_path / "whole" / "phema_recon_0.070_000004.pt",
                                                "--num_samples", 2, "--timestep_respacing", "4", "--classes", "1",
                                                "--log_dir", tmp_path / "samples", "--progress", False])
    assert code == 0, stderr
    assert read_samples(tmp_path / "samples" / "samples_2x16x16x3.npz")["arr_0"].shape == (2, 16, 16, 3)
    code, stderr = run_main("reconstruct_ema.py", ["--run_dir", tmp_path / "whole", "--step", 3, "--sigma_rel",
                                                   "0.07"])
    assert code == 2 and "--step 3: snapshots exist at steps 2, 4" in stderr
    code, stderr = run_main("reconstruct_ema.py", ["--run_dir", tmp_path / "whole", "--ema_rate", 0.9])
    assert code == 2 and "--ema_rate 0.9 at step 4 is an EMA of relative width 2.500" in stderr
    code, stderr = run_main("image_train.py", ["--data_dir", images, "--log_dir", tmp_path / "bad",
                                               "--phema_stds", "0.5", *TINY_MODEL])
    assert code == 2 and "--phema_stds '0.5': each width must lie in (0, 0.28]" in stderr
