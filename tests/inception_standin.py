"""A small stand-in for the frozen Inception graph, with the same tensor names and shapes.

The real ``classify_image_graph_def.pb`` (95 MB) cannot be fetched in tests, so this
module builds a cheap graph that the evaluator loads through ``--inception_path``:

* ``ExpandDims``: float32 placeholder ``[N, H, W, 3]`` with values in 0..255,
* ``ResizeBilinear``: resize to 299x299 as the real graph does,
* ``mixed_6/conv``: ``[N, 17, 17, 768]`` ReLU features of 3x3 patches of a 17x17 pooling,
* ``pool_3``: ``[N, 1, 1, 2048]`` spatial mean of other ReLU patch features,
* ``softmax/logits/MatMul``: ``pool_3`` (reshaped) times a ``[2048, 1008]`` weight.

Features are non-linear in the image, so FID, sFID and precision/recall are non-trivial.
``evaluations/inception_standin.py`` writes a larger stand-in with the real graph's op types, node names and
architecture (used by tests/test_inception_torch.py for both backends).
"""

from pathlib import Path
from typing import Any

import numpy as np

SEED = 1234


def softmax_weights(seed: int = SEED) -> np.ndarray:
    """The ``[2048, 1008]`` weight behind ``softmax/logits/MatMul`` (for direct IS checks)."""
    rng = np.random.default_rng(seed + 1)
    return (rng.standard_normal((2048, 1008)) * 0.15).astype(np.float32)  # no float32 underflow in softmax


def build_graph_def(seed: int = SEED) -> Any:
    """Build the stand-in graph and return it as a frozen ``GraphDef`` (constants only)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)

    def const(shape: tuple, scale: float, name: str) -> Any:
        return tf.constant((rng.standard_normal(shape) * scale).astype(np.float32), name=name)

    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
        resized = v1.image.resize_bilinear(images, [299, 299], name="ResizeBilinear")
        normed = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
        pooled = tf.nn.avg_pool2d(normed, 17, 17, "VALID", name="pool_0")  # [N, 17, 17, 3]
        conv6 = tf.nn.conv2d(pooled, const((3, 3, 3, 768), 0.6, "mixed_6/conv/conv2d_params"), 1, "SAME")
        tf.nn.relu(conv6 + const((768,), 0.3, "mixed_6/conv/beta"), name="mixed_6/conv")
        conv3 = tf.nn.conv2d(pooled, const((3, 3, 3, 2048), 0.6, "pool_3/conv_params"), 1, "SAME")
        hidden = tf.nn.relu(conv3 + const((2048,), 0.3, "pool_3/beta"))
        pool3 = tf.nn.avg_pool2d(hidden, 17, 17, "VALID", name="pool_3")  # [N, 1, 1, 2048]
        flat = tf.reshape(pool3, [-1, 2048], name="pool_3/_reshape")
        weights = tf.constant(softmax_weights(seed), name="softmax/weights")
        logits = tf.matmul(flat, weights, name="softmax/logits/MatMul")
        tf.nn.softmax(logits + const((1008,), 0.1, "softmax/biases"), name="softmax")
    return graph.as_graph_def()


def write_graph(path: Path, seed: int = SEED) -> Path:
    """Serialize the stand-in graph to ``path`` (a frozen ``.pb``) and return the path."""
    path = Path(path)
    path.write_bytes(build_graph_def(seed).SerializeToString())
    return path


def smooth_images(count: int, size: int = 64, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Random smooth uint8 NHWC images (upsampled 4x4 noise); ``shift`` moves the colour distribution."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, (count, 4, 4, 3)) ** (1.0 + shift)
    rep = -(-size // 4)
    pixels = rng.normal(0.0, 0.03, (count, size, size, 3))  # the noise, then in place: + coarse, * 255, clip
    pixels += np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size]
    pixels *= 255.0
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)

