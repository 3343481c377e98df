"""Shared test setup: make the helper modules beside the tests importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Tiny checkpoints trained once per test session by the real training scripts."""
    from launch import train_tiny_checkpoints

    return train_tiny_checkpoints(str(tmp_path_factory.mktemp("trained")))
