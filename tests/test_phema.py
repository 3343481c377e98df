"""Post-hoc EMA (guided_diffusion/phema.py) against EDM2's own numbers (tests/fixtures/reference/edm2/phema.json),
plus the closed forms checked against direct numerical integration."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from guided_diffusion import phema

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
