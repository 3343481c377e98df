"""The torch backend's k-NN distance kernels against TensorFlow's: the float16-first rule op by op.

TensorFlow's float16 ``Sum`` is reproduced bit for bit; its float16 ``MatMul`` sums in float32 in an order of its
own, so about one product in 10^4 differs by one float16 step; precision and recall come out identical.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluations.distances import Float16FirstDistances, PairwiseDistances  # noqa: E402
from evaluations.evaluator import distance_kernels  # noqa: E402
from evaluations.metrics import precision_recall, reference_radii  # noqa: E402
from evaluations.torch_distances import (  # noqa: E402
    TorchFloat16FirstDistances,
    TorchPairwiseDistances,
    float16_first_squared,
    float16_sum,
)


def clustered_features(seed: int, ref_count: int, sample_count: int, dims: int = 2048, scale: float = 1.0):
    """Non-negative features around shared cluster centres (as pool_3 features are), reference and sample sets."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 0.8, size=(200, dims))

    def draw(count: int, noise: float) -> np.ndarray:
        picked = centres[rng.integers(0, len(centres), count)]
        return (scale * np.maximum(picked + rng.normal(0, noise, picked.shape), 0)).astype(np.float32)

    return draw(ref_count, 0.3), draw(sample_count, 0.32)


@pytest.mark.parametrize("length", [2048, 4096, 1024, 1000, 77, 8, 1])
def test_float16_sum_is_tensorflows(length):
    import tensorflow as tf

    values = np.random.default_rng(length).gamma(0.5, 3.0, size=(40, length)).astype(np.float16)
    expected = tf.reduce_sum(tf.constant(values), 1).numpy()
    got = float16_sum(torch.from_numpy(values.astype(np.float32))).numpy().astype(np.float16)
    np.testing.assert_array_equal(got, expected)
    # not a float32 sum rounded once: that differs from TensorFlow's in many rows
    plain = values.astype(np.float32).sum(1).astype(np.float16)
    assert length < 64 or (plain != expected).mean() > 0.1


def test_distance_block_matches_tensorflows():
    x, y = clustered_features(0, 300, 400)
    tf_kernels = Float16FirstDistances()
    expected = tf_kernels._session.run(
        tf_kernels._x_nearest, {tf_kernels._x: x, tf_kernels._y: y, tf_kernels._x_k: len(y), tf_kernels._y_k: 1}
    )
    got = torch.sort(float16_first_squared(torch.from_numpy(x), torch.from_numpy(y)), dim=1).values.numpy()
    assert (got == expected).mean() > 0.9998  # a float32 sum of the squares instead: about 0.7
    step = np.abs(expected).max() * 2.0**-10  # one float16 step at the largest distance
    assert np.abs(got - expected).max() <= step


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_identical_to_tensorflow(seed):
    ref, sample = clustered_features(seed, 1000, 800)
    tf_kernels, torch_kernels = Float16FirstDistances(), TorchFloat16FirstDistances("cpu")
    tf_radii, torch_radii = reference_radii(ref, tf_kernels), reference_radii(ref, torch_kernels)
    assert (tf_radii == torch_radii).mean() > 0.99
    tf_pr = precision_recall(ref, sample, tf_kernels, ref_radii=tf_radii)
    assert precision_recall(ref, sample, torch_kernels, ref_radii=torch_radii) == tf_pr
    assert 0.1 < min(tf_pr) and max(tf_pr) < 0.999  # neither rule is trivially satisfied


def test_float16_overflow_falls_back_to_float32():
    x, y = clustered_features(3, 50, 60, scale=40.0)  # squared norms beyond float16's 65504
    with np.errstate(over="ignore"):
        assert not np.isfinite(((x.astype(np.float16).astype(np.float32) ** 2).sum(1)).astype(np.float16)).all()
    got = float16_first_squared(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    tf_kernels = Float16FirstDistances()
    expected = tf_kernels._session.run(
        tf_kernels._x_nearest, {tf_kernels._x: x, tf_kernels._y: y, tf_kernels._x_k: len(y), tf_kernels._y_k: 1}
    )
    np.testing.assert_allclose(np.sort(got, axis=1), expected, rtol=1e-5)


def test_doubled_products_that_overflow_give_zero_as_in_tensorflow():
    """Squared norms below float16's 65504 but 2 u.v above it: TensorFlow's block holds -inf there, then 0 after
    the max, and is kept (all finite); the torch rule does the same."""
    rng = np.random.default_rng(5)
    base = rng.gamma(0.5, 5.0, size=(1, 2048))
    x = (base + rng.normal(0, 0.3, (20, 2048))).clip(0).astype(np.float32)
    y = (base + rng.normal(0, 0.3, (30, 2048))).clip(0).astype(np.float32)
    norms = (x.astype(np.float16).astype(np.float32) ** 2).sum(1)
    assert norms.max() < 65504 and 2 * (x @ y.T).min() > 65504
    tf_kernels = Float16FirstDistances()
    expected = tf_kernels._session.run(
        tf_kernels._x_nearest, {tf_kernels._x: x, tf_kernels._y: y, tf_kernels._x_k: len(y), tf_kernels._y_k: 1}
    )
    assert (expected == 0).all()
    got = float16_first_squared(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(np.sort(got, axis=1), expected)


def test_float32_kernels_match_tensorflows_and_reduce_both_ways():
    ref, sample = clustered_features(4, 300, 200, dims=64)
    tf_pr = precision_recall(ref, sample, PairwiseDistances())
    assert precision_recall(ref, sample, TorchPairwiseDistances("cpu")) == tf_pr
    rows, cols = TorchPairwiseDistances("cpu").nearest(ref[:30], sample[:20], 4, both=True)
    assert rows.shape == (30, 4) and cols.shape == (20, 4)
    with pytest.raises(ValueError, match="orientation"):
        TorchFloat16FirstDistances("cpu").nearest(ref[:30], sample[:20], 4, both=True)


def test_each_backend_gets_its_own_kernels():
    assert isinstance(distance_kernels("torch", "float16"), TorchFloat16FirstDistances)
    assert isinstance(distance_kernels("torch", "float32"), TorchPairwiseDistances)
    assert isinstance(distance_kernels("tf", "float16"), Float16FirstDistances)
    assert isinstance(distance_kernels("tf", "float32"), PairwiseDistances)
