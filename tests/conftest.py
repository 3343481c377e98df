"""Shared test setup: make the helper modules beside the tests importable, and pin ATen's CPU kernels."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The guided "7,3" golden sample starts at t = T-1, where a DDIM step amplifies float32 rounding ~2e4 times, so
# its 1e-3 tolerance sits at the rounding floor: on an AVX-512 Intel CPU ATen's AVX2 kernels (the package's pin)
# give 1.19e-3, its scalar kernels 0.98e-3 (an AVX2-only AMD CPU gave 0.0 with AVX2). Tests use the scalar
# kernels (set before torch is imported); users keep the vector ones.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Tiny checkpoints trained once per test session by the real training scripts."""
    from launch import train_tiny_checkpoints

    return train_tiny_checkpoints(str(tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="session")
def digits_judge_session(tmp_path_factory):
    """The digits judge, its feature network trained once per session into a fresh cache dir: (judge, cache)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets"))
    from digits_judge import DigitsJudge

    cache = str(tmp_path_factory.mktemp("cache"))
    return DigitsJudge(cache=cache), cache
