"""A stand-in for the frozen Inception graph with the real graph's op types, node names and architecture.

The real ``classify_image_graph_def.pb`` (95 MB) cannot always be fetched (tests, offline machines).  This
module writes a ``GraphDef`` built node by node as the 2015 graph is: ``DecodeJpeg/contents`` ->
``DecodeJpeg`` -> ``Cast`` -> ``ExpandDims`` -> ``ResizeBilinear`` (299x299) -> ``Sub`` -> ``Mul``, then the
Inception-v3 convolution blocks (``Conv2D``, ``BatchNormWithGlobalNormalization``, ``CheckNumerics``,
``Identity``, ``Relu``), the pools (``MaxPool``, ``AvgPool`` with VALID and SAME padding), the mixed blocks
joined by ``Concat`` (``mixed`` .. ``mixed_10``; ``mixed_6/conv`` is the 17x17 1x1 branch), ``pool_3``
(``AvgPool`` to 1x1x2048), ``pool_3/_reshape`` (to ``[1, 2048]``, as in the real graph) and
``softmax/logits/MatMul`` + ``BiasAdd`` (1008 logits) + ``Softmax``.  Weights are random (seeded), so the
numbers mean nothing; the graph exercises the same ops as the real one in both evaluator backends.

``width_divisor`` > 1 divides every convolution's output channels (at least 4) except those of the final
block, whose concatenation stays 2048 wide: the same ops and names, far less arithmetic (for tests).

    python evaluations/inception_standin.py --seed S [--width_divisor D] OUT.pb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

# GraphDef producer version of the written graph: below 9, where TensorFlow dropped
# BatchNormWithGlobalNormalization for new graphs (old graphs such as the real one keep it).
PRODUCER_VERSION = 8
BN_EPSILON = 0.001
Tensor = tuple[str, int]  # a node name and its channel count


class GraphBuilder:
    """Appends ``NodeDef`` messages to a ``GraphDef``; weights are drawn from a seeded generator."""

    def __init__(self, seed: int, width_divisor: int):
        import tensorflow as tf

        self.tf = tf
        self.graph_def = tf.compat.v1.GraphDef()
        self.graph_def.versions.producer = PRODUCER_VERSION
        self.rng = np.random.default_rng(seed)
        self.divisor = width_divisor

    def node(self, name: str, op: str, inputs: tuple[str, ...] = (), **attrs: Any) -> str:
        """Add a node with ``attrs`` (python values: str, bool, int, float, list of int, dtype) and return its name."""
        node = self.graph_def.node.add(name=name, op=op, input=list(inputs))
        for key, value in attrs.items():
            attr = node.attr[key]
            if isinstance(value, self.tf.DType):
                attr.type = value.as_datatype_enum
            elif isinstance(value, bool):
                attr.b = value
            elif isinstance(value, int):
                attr.i = value
            elif isinstance(value, float):
                attr.f = value
            elif isinstance(value, str):
                attr.s = value.encode()
            elif isinstance(value, list):
                attr.list.i.extend(value)
            else:
                attr.tensor.CopyFrom(value)
        return name

    def const(self, name: str, value: Any, dtype: Any = None) -> str:
        """A ``Const`` node holding ``value`` (float32 unless ``dtype`` says otherwise)."""
        dtype = dtype or self.tf.float32
        proto = self.tf.make_tensor_proto(value, dtype=dtype)
        return self.node(name, "Const", dtype=dtype, value=proto)

    def channels(self, count: int, full: bool = False) -> int:
        return count if full else max(4, count // self.divisor)

    def conv(self, name: str, x: Tensor, out: int, kh: int, kw: int, stride: int = 1, padding: str = "SAME",
             full: bool = False) -> Tensor:
        """A convolution block as the real graph writes it: Conv2D, batch norm, a numerics check, Relu."""
        tf, rng, cin = self.tf, self.rng, x[1]
        out = self.channels(out, full)
        fan_in = kh * kw * cin
        weights = self.const(f"{name}/conv2d_params", rng.standard_normal((kh, kw, cin, out)) * np.sqrt(2.0 / fan_in))
        conv = self.node(f"{name}/Conv2D", "Conv2D", (x[0], weights), T=tf.float32, strides=[1, stride, stride, 1],
                         padding=padding, use_cudnn_on_gpu=True)
        params = [self.const(f"{name}/batchnorm/{key}", value) for key, value in (
            ("beta", rng.normal(0.2, 0.1, out)), ("gamma", rng.uniform(0.5, 1.5, out)),
            ("moving_mean", rng.normal(0.0, 0.2, out)), ("moving_variance", rng.uniform(0.6, 1.4, out)))]
        beta, gamma, mean, variance = params
        norm = self.node(f"{name}/batchnorm", "BatchNormWithGlobalNormalization", (conv, mean, variance, beta, gamma),
                         T=tf.float32, variance_epsilon=BN_EPSILON, scale_after_normalization=False)
        check = self.node(f"{name}/CheckNumerics", "CheckNumerics", (norm,), T=tf.float32, message="batchnorm")
        ident = self.node(f"{name}/control_dependency", "Identity", (norm, f"^{check}"), T=tf.float32)
        return self.node(name, "Relu", (ident,), T=self.tf.float32), out

    def pool(self, name: str, op: str, x: Tensor, size: int, stride: int, padding: str) -> Tensor:
        node = self.node(name, op, (x[0],), T=self.tf.float32, ksize=[1, size, size, 1],
                         strides=[1, stride, stride, 1], padding=padding)
        return node, x[1]

    def concat(self, name: str, parts: list[Tensor]) -> Tensor:
        dim = self.const(f"{name}/concat_dim", 3, self.tf.int32)
        node = self.node(name, "Concat", (dim, *(p[0] for p in parts)), N=len(parts), T=self.tf.float32)
        return node, sum(p[1] for p in parts)


def _block_35(b: GraphBuilder, n: str, x: Tensor, pool_features: int) -> Tensor:
    tower = b.conv(f"{n}/tower/conv_1", b.conv(f"{n}/tower/conv", x, 48, 1, 1), 64, 5, 5)
    tower_1 = b.conv(f"{n}/tower_1/conv", x, 64, 1, 1)
    tower_1 = b.conv(f"{n}/tower_1/conv_2", b.conv(f"{n}/tower_1/conv_1", tower_1, 96, 3, 3), 96, 3, 3)
    tower_2 = b.conv(f"{n}/tower_2/conv", b.pool(f"{n}/tower_2/pool", "AvgPool", x, 3, 1, "SAME"), pool_features, 1, 1)
    return b.concat(f"{n}/join", [b.conv(f"{n}/conv", x, 64, 1, 1), tower, tower_1, tower_2])


def _reduce_35(b: GraphBuilder, n: str, x: Tensor) -> Tensor:
    tower = b.conv(f"{n}/tower/conv_1", b.conv(f"{n}/tower/conv", x, 64, 1, 1), 96, 3, 3)
    tower = b.conv(f"{n}/tower/conv_2", tower, 96, 3, 3, 2, "VALID")
    conv = b.conv(f"{n}/conv", x, 384, 3, 3, 2, "VALID")
    return b.concat(f"{n}/join", [conv, tower, b.pool(f"{n}/pool", "MaxPool", x, 3, 2, "VALID")])


def _block_17(b: GraphBuilder, n: str, x: Tensor, width: int) -> Tensor:
    tower = b.conv(f"{n}/tower/conv", x, width, 1, 1)
    tower = b.conv(f"{n}/tower/conv_2", b.conv(f"{n}/tower/conv_1", tower, width, 1, 7), 192, 7, 1)
    tower_1 = b.conv(f"{n}/tower_1/conv", x, width, 1, 1)
    for i, (out, kh, kw) in enumerate(((width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)), 1):
        tower_1 = b.conv(f"{n}/tower_1/conv_{i}", tower_1, out, kh, kw)
    tower_2 = b.conv(f"{n}/tower_2/conv", b.pool(f"{n}/tower_2/pool", "AvgPool", x, 3, 1, "SAME"), 192, 1, 1)
    return b.concat(f"{n}/join", [b.conv(f"{n}/conv", x, 192, 1, 1), tower, tower_1, tower_2])


def _reduce_17(b: GraphBuilder, n: str, x: Tensor) -> Tensor:
    tower = b.conv(f"{n}/tower/conv_1", b.conv(f"{n}/tower/conv", x, 192, 1, 1), 320, 3, 3, 2, "VALID")
    tower_1 = b.conv(f"{n}/tower_1/conv", x, 192, 1, 1)
    tower_1 = b.conv(f"{n}/tower_1/conv_2", b.conv(f"{n}/tower_1/conv_1", tower_1, 192, 1, 7), 192, 7, 1)
    tower_1 = b.conv(f"{n}/tower_1/conv_3", tower_1, 192, 3, 3, 2, "VALID")
    return b.concat(f"{n}/join", [tower, tower_1, b.pool(f"{n}/pool", "MaxPool", x, 3, 2, "VALID")])


def _block_8(b: GraphBuilder, n: str, x: Tensor, pool_op: str) -> Tensor:
    full = n == "mixed_10"  # the last block keeps its output widths: pool_3 is 2048 wide

    def split(prefix: str, t: Tensor) -> Tensor:
        return b.concat(f"{prefix}/mixed/join", [b.conv(f"{prefix}/mixed/conv", t, 384, 1, 3, full=full),
                                                 b.conv(f"{prefix}/mixed/conv_1", t, 384, 3, 1, full=full)])

    tower = split(f"{n}/tower", b.conv(f"{n}/tower/conv", x, 384, 1, 1))
    tower_1 = b.conv(f"{n}/tower_1/conv_1", b.conv(f"{n}/tower_1/conv", x, 448, 1, 1), 384, 3, 3)
    tower_1 = split(f"{n}/tower_1", tower_1)
    tower_2 = b.conv(f"{n}/tower_2/conv", b.pool(f"{n}/tower_2/pool", pool_op, x, 3, 1, "SAME"), 192, 1, 1, full=full)
    return b.concat(f"{n}/join", [b.conv(f"{n}/conv", x, 320, 1, 1, full=full), tower, tower_1, tower_2])


def build_graph_def(seed: int = 0, width_divisor: int = 1) -> Any:
    """The stand-in graph as a ``GraphDef``: the Inception-v3 architecture of the 2015 graph with random weights."""
    import tensorflow as tf

    b = GraphBuilder(seed, width_divisor)
    jpeg = tf.io.encode_jpeg(np.full((8, 8, 3), 128, np.uint8)).numpy()
    contents = b.const("DecodeJpeg/contents", jpeg, tf.string)
    decoded = b.node("DecodeJpeg", "DecodeJpeg", (contents,), channels=3, ratio=1, fancy_upscaling=True,
                     try_recover_truncated=False, acceptable_fraction=1.0, dct_method="")
    cast = b.node("Cast", "Cast", (decoded,), SrcT=tf.uint8, DstT=tf.float32)
    expanded = b.node("ExpandDims", "ExpandDims", (cast, b.const("ExpandDims/dim", 0, tf.int32)),
                      T=tf.float32, Tdim=tf.int32)
    resized = b.node("ResizeBilinear", "ResizeBilinear", (expanded, b.const("ResizeBilinear/size", [299, 299],
                                                                            tf.int32)), T=tf.float32,
                     align_corners=False)
    sub = b.node("Sub", "Sub", (resized, b.const("Sub/y", 128.0)), T=tf.float32)
    x: Tensor = (b.node("Mul", "Mul", (sub, b.const("Mul/y", 1.0 / 128.0)), T=tf.float32), 3)
    x = b.conv("conv", x, 32, 3, 3, 2, "VALID")
    x = b.conv("conv_2", b.conv("conv_1", x, 32, 3, 3, 1, "VALID"), 64, 3, 3)
    x = b.conv("conv_3", b.pool("pool", "MaxPool", x, 3, 2, "VALID"), 80, 1, 1, 1, "VALID")
    x = b.pool("pool_1", "MaxPool", b.conv("conv_4", x, 192, 3, 3, 1, "VALID"), 3, 2, "VALID")
    for name, pool_features in (("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)):
        x = _block_35(b, name, x, pool_features)
    x = _reduce_35(b, "mixed_3", x)
    for name, width in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):
        x = _block_17(b, name, x, width)
    x = _reduce_17(b, "mixed_8", x)
    x = _block_8(b, "mixed_10", _block_8(b, "mixed_9", x, "AvgPool"), "MaxPool")
    pool3, width = b.pool("pool_3", "AvgPool", x, 8, 1, "VALID")
    reshaped = b.node("pool_3/_reshape", "Reshape", (pool3, b.const("pool_3/_reshape/shape", [1, width], tf.int32)),
                      T=tf.float32, Tshape=tf.int32)
    weights = b.const("softmax/weights", b.rng.standard_normal((width, 1008)) * (2.0 / np.sqrt(width)))
    matmul = b.node("softmax/logits/MatMul", "MatMul", (reshaped, weights), T=tf.float32, transpose_a=False,
                    transpose_b=False)
    logits = b.node("softmax/logits", "BiasAdd", (matmul, b.const("softmax/biases", b.rng.normal(0, 0.1, 1008))),
                    T=tf.float32)
    b.node("softmax", "Softmax", (logits,), T=tf.float32)
    return b.graph_def


def write_graph(path: str | Path, seed: int = 0, width_divisor: int = 1) -> Path:
    """Serialize the stand-in graph to ``path`` (a frozen ``.pb``) and return the path."""
    path = Path(path)
    path.write_bytes(build_graph_def(seed, width_divisor).SerializeToString())
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write the stand-in graph; a bad flag or unwritable file is a one-line error (exit code 2)."""
    parser = argparse.ArgumentParser(description="Write a stand-in Inception graph (real op types and node names, "
                                     "random weights) for --inception_path.")
    parser.add_argument("out", metavar="OUT.pb", help="where to write the GraphDef")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--width_divisor", type=int, default=1,
                        help="divide the convolutions' channels by this (1: the real architecture's widths)")
    args = parser.parse_args(argv)
    if args.width_divisor < 1:
        parser.error(f"--width_divisor must be a positive integer, got {args.width_divisor}")
    try:
        path = write_graph(args.out, args.seed, args.width_divisor)
    except OSError as err:
        print(f"inception_standin.py: error: {args.out}: cannot write the graph ({err.strerror})", file=sys.stderr)
        return 2
    print(f"wrote the stand-in Inception graph (seed {args.seed}, random weights: its numbers mean nothing) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
