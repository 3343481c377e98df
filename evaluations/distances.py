"""Blocked pairwise squared distances ``max(|x|^2 - 2 x.y + |y|^2, 0)`` and their reductions, for precision/recall.

Each kernel computes one ``[m, n]`` block in its own small TensorFlow graph (BLAS on CPU, the GPU when
TF sees one) and reduces it there, so only the k nearest distances per row (and per column) or
coverage flags come back.

* ``Float16FirstDistances`` (the evaluator's default): the original evaluator's distance block, for
  reproducing published numbers: the same TensorFlow ops in float16, kept when all finite, else float32.
* ``PairwiseDistances``: float32.  With centred features its k-NN radii match a float64 brute force.
* ``NumpyDistances``: the same reductions in numpy float64, for small sets without TensorFlow.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

DISTANCE_BLOCK = 4096  # rows/columns per float32 block (64 MiB)
ORIGINAL_BLOCK = 10000  # the original's row/column batch: the unit of its float16-or-float32 decision


def squared_distances(tf: Any, x: Any, y: Any) -> Any:
    """The original's ``_batch_pairwise_distances``: ``max(|x|^2 - 2 x.y + |y|^2, 0)`` in the dtype of ``x``."""
    x_norms = tf.reshape(tf.reduce_sum(tf.square(x), 1), [-1, 1])
    y_norms = tf.reshape(tf.reduce_sum(tf.square(y), 1), [1, -1])
    return tf.maximum(x_norms - 2 * tf.matmul(x, y, False, True) + y_norms, 0.0)


def float16_first(tf: Any, x: Any, y: Any) -> Any:
    """The original's distance block: computed in float16, used (as float32) when all finite, else float32."""
    half = squared_distances(tf, tf.cast(x, tf.float16), tf.cast(y, tf.float16))
    return tf.cond(
        tf.reduce_all(tf.math.is_finite(half)), lambda: tf.cast(half, tf.float32), lambda: squared_distances(tf, x, y)
    )


class DistanceGraph:
    """Reductions of one float32 ``[m, n]`` distance block made by ``make_block(tf, x, y)``, in a TF session."""

    def __init__(self, make_block: Callable[[Any, Any, Any], Any]) -> None:
        import tensorflow as tf

        v1 = tf.compat.v1
        graph = tf.Graph()
        with graph.as_default():
            self._x = v1.placeholder(tf.float32, [None, None])
            self._y = v1.placeholder(tf.float32, [None, None])
            self._x_radii = v1.placeholder(tf.float32, [None])
            self._y_radii = v1.placeholder(tf.float32, [None])
            self._x_k = v1.placeholder(tf.int32, [])
            self._y_k = v1.placeholder(tf.int32, [])
            squared = make_block(tf, self._x, self._y)
            self._x_nearest = -tf.math.top_k(-squared, k=self._x_k).values
            self._y_nearest = -tf.math.top_k(-tf.transpose(squared), k=self._y_k).values
            self._x_covered = tf.reduce_any(squared <= self._y_radii[None, :], axis=1)
            self._y_covered = tf.reduce_any(squared <= self._x_radii[:, None], axis=0)
        config = v1.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        self._session = v1.Session(graph=graph, config=config)

    def nearest(self, x: np.ndarray, y: np.ndarray, k: int, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` smallest squared distances (ascending) from each ``x`` to the ``y``s, and if ``both``, vice versa.

        Fewer than ``k`` come back when the other block has fewer rows.
        """
        feed = {self._x: x, self._y: y, self._x_k: min(k, len(y)), self._y_k: min(k, len(x))}
        if both:
            return tuple(self._session.run([self._x_nearest, self._y_nearest], feed))
        return self._session.run(self._x_nearest, feed), None

    def covered(
        self, x: np.ndarray, x_radii: np.ndarray, y: np.ndarray, y_radii: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whether each ``x`` lies within some ``y``'s radius, and each ``y`` within some ``x``'s (squared radii)."""
        feed = {self._x: x, self._y: y, self._x_radii: x_radii, self._y_radii: y_radii}
        x_covered, y_covered = self._session.run([self._x_covered, self._y_covered], feed)
        return x_covered, y_covered


class PairwiseDistances(DistanceGraph):
    """float32 distances: with centred features, as exact as a float64 brute force for k-NN decisions."""

    block = DISTANCE_BLOCK
    exact = True  # orientation and offset do not matter beyond float32 rounding: centring and symmetry are allowed

    def __init__(self) -> None:
        super().__init__(squared_distances)


class Float16FirstDistances(DistanceGraph):
    """The original evaluator's float16-first distances, built from its ops to reproduce its precision/recall.

    float16 rounding depends on orientation and offset, so blocks are taken as the original takes them:
    uncentred, on its 10000-row grid, rows against columns.  float16 sums are added in an order that
    depends on the device and TensorFlow version, so results match the original run on the same kind.
    """

    block = ORIGINAL_BLOCK
    exact = False

    def __init__(self) -> None:
        super().__init__(float16_first)

    def nearest(self, x: np.ndarray, y: np.ndarray, k: int, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` smallest distances (ascending) from each ``x`` to the ``y``s; rows only (no ``both``)."""
        if both:
            raise ValueError("float16-first distances depend on orientation: reduce rows only")
        return super().nearest(x, y, k, both=False)


class NumpyDistances:
    """float64 distances in numpy, for small feature sets (e.g. the digits judge): no TensorFlow needed."""

    block = 2048
    exact = True

    @staticmethod
    def _squared(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = x.astype(np.float64), y.astype(np.float64)
        return np.maximum((x * x).sum(1)[:, None] - 2 * x @ y.T + (y * y).sum(1)[None, :], 0.0)

    def nearest(self, x: np.ndarray, y: np.ndarray, k: int, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` smallest squared distances (ascending) from each ``x`` to the ``y``s, and if ``both``, vice versa."""
        squared = self._squared(x, y)

        def smallest(d: np.ndarray, count: int) -> np.ndarray:
            count = min(count, d.shape[1])
            return np.sort(np.partition(d, count - 1, axis=1)[:, :count], axis=1)

        return smallest(squared, k), smallest(squared.T, k) if both else None

    def covered(
        self, x: np.ndarray, x_radii: np.ndarray, y: np.ndarray, y_radii: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whether each ``x`` lies within some ``y``'s radius, and each ``y`` within some ``x``'s (squared radii)."""
        squared = self._squared(x, y)
        return (squared <= y_radii[None, :]).any(axis=1), (squared <= x_radii[:, None]).any(axis=0)
