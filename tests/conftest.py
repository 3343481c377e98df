"""Shared test setup: make the helper modules beside the tests importable; session-wide trained checkpoints."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import pytest
import torch

from evaluations.dinov2 import ViTConfig


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


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh default cache dir for one test (inherited by subprocesses), so no test sees another's cached graph,
    converted network or activations."""
    folder = tmp_path / "default_cache"
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_dinov2():
    """(config, state dict, the fixture's arrays) of the small random DINOv2 backbone written by the official code
    (tests/make_dinov2_fixture.py, tests/fixtures/dinov2/tiny.npz)."""
    with np.load(os.path.join(os.path.dirname(__file__), "fixtures", "dinov2", "tiny.npz")) as npz:
        arrays = {key: npz[key] for key in npz.files}
    config = ViTConfig("tiny", **{key[7:]: int(arrays[key]) for key in arrays if key.startswith("config_")})
    state = {key[6:]: torch.from_numpy(value) for key, value in arrays.items() if key.startswith("state/")}
    return config, state, arrays


@pytest.fixture(autouse=True)
def _process_group_variables_do_not_leak():
    """A test that sets up a process group in this process must undo the variables it exports; left behind they
    make every later run in this process, and every script it starts, join a torchrun group that is not there."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    before = {key: os.environ.get(key) for key in keys}
    yield
    assert {key: os.environ.get(key) for key in keys} == before, "process-group variables left in the environment"
