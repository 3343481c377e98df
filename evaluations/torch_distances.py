"""Precision/recall distance kernels in PyTorch (CPU, or CUDA when available): the torch backend's, no TensorFlow.

Same interface and reductions as ``evaluations.distances`` (the ``k`` nearest squared distances per row, coverage
flags), computed on ``[m, n]`` blocks of ``max(|x|^2 - 2 x.y + |y|^2, 0)``:

* ``TorchFloat16FirstDistances`` (the torch backend's default): the original evaluator's float16-first rule, op
  by op as TensorFlow computes it on a CPU: features rounded to float16; squares, the difference and the total
  rounded to float16; the squared norms summed in float16 in the order of TensorFlow's (Eigen's) float16 ``Sum``
  (``float16_sum``, bit-identical to it); the products summed in float32 and rounded once, which TensorFlow's
  float16 ``MatMul`` also does but in its own summation order, so about one product in 10^4 lands one float16
  step away.  The block is used when all of it is finite, else it is recomputed in float32.
* ``TorchPairwiseDistances``: float32 (TF32 off), the exact definition with centred features.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluations.distances import DISTANCE_BLOCK, ORIGINAL_BLOCK
from evaluations.inception_torch import exact_float32


def _half(values: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to float16 (nearest even; overflow to inf), kept as float32 for the next op."""
    return values.half().float()


def _float32_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_norms = (x * x).sum(1, keepdim=True)
    y_norms = (y * y).sum(1)[None, :]
    return (x_norms - 2 * (x @ y.T) + y_norms).clamp_min(0)


EIGEN_PACKET = 8  # float16 lanes per packet in TensorFlow's CPU build (AVX)
EIGEN_UNROLL = 4  # packets summed side by side in a leaf
EIGEN_LEAF = 1024  # longest run of values summed without splitting in two


def _leaf_sum(values: torch.Tensor) -> torch.Tensor:
    """Eigen's vectorized inner-most reduction of one leaf: EIGEN_UNROLL packet accumulators over whole groups of
    packets, added into the first in turn, then the remaining whole packets, a float32 horizontal sum of the lanes
    ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), and the scalar tail; every float16 step rounded."""
    rows, count = values.shape
    group, packet = EIGEN_UNROLL * EIGEN_PACKET, EIGEN_PACKET
    grouped, packed = count // group * group, count // packet * packet
    accumulators = values.new_zeros(rows, EIGEN_UNROLL, packet)
    for start in range(0, grouped, group):
        accumulators = _half(accumulators + values[:, start:start + group].reshape(rows, EIGEN_UNROLL, packet))
    lanes = accumulators[:, 0]
    for index in range(1, EIGEN_UNROLL):
        lanes = _half(lanes + accumulators[:, index])
    for start in range(grouped, packed, packet):
        lanes = _half(lanes + values[:, start:start + packet])
    pairs = lanes[:, :4] + lanes[:, 4:]
    vector = _half((pairs[:, 0] + pairs[:, 2]) + (pairs[:, 1] + pairs[:, 3]))
    tail = values.new_zeros(rows)
    for index in range(packed, count):
        tail = _half(tail + values[:, index])
    return _half(tail + vector)


def float16_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over the last axis of float16 ``values`` (held as float32) as TensorFlow's float16 ``Sum`` gives it
    on a CPU: runs longer than EIGEN_LEAF are split at a packet boundary past their middle and the halves' sums
    added in float16 (Eigen's tree reduction), each leaf summed by ``_leaf_sum``."""
    count = values.shape[-1]
    if count <= EIGEN_LEAF:
        return _leaf_sum(values)
    half = (count + 1) // 2
    left = min((half + EIGEN_PACKET - 1) // EIGEN_PACKET * EIGEN_PACKET, count)  # the middle, up to a packet
    total = float16_sum(values[:, :left])
    return total if left == count else _half(total + float16_sum(values[:, left:]))


def float16_first_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The original's distance block (float32 ``x``, ``y``): the float16 computation when all finite, else float32."""
    hx, hy = _half(x), _half(y)
    x_norms = float16_sum(_half(hx * hx))[:, None]
    y_norms = float16_sum(_half(hy * hy))[None, :]
    products = _half(hx @ hy.T)
    half = _half(_half(x_norms - _half(2 * products)) + y_norms).clamp_min(0)  # 2 u.v may overflow: -inf, then 0
    return half if bool(torch.isfinite(half).all()) else _float32_squared(x, y)


class TorchDistances:
    """Reductions of one float32 ``[m, n]`` distance block, on ``device`` (default: CUDA when available)."""

    block = DISTANCE_BLOCK
    exact = True

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def squared(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _float32_squared(x, y)

    def _block(self, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)  # noqa: E731
        with exact_float32():  # float32 products on CUDA too, as on the CPU
            return self.squared(as_tensor(x), as_tensor(y))

    def nearest(self, x: np.ndarray, y: np.ndarray, k: int, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` smallest squared distances (ascending) from each ``x`` to the ``y``s, and if ``both``, vice versa.

        Fewer than ``k`` come back when the other block has fewer rows.
        """
        squared = self._block(x, y)
        rows = torch.topk(squared, min(k, len(y)), dim=1, largest=False).values.cpu().numpy()
        if not both:
            return rows, None
        return rows, torch.topk(squared.T, min(k, len(x)), dim=1, largest=False).values.cpu().numpy()

    def covered(
        self, x: np.ndarray, x_radii: np.ndarray, y: np.ndarray, y_radii: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whether each ``x`` lies within some ``y``'s radius, and each ``y`` within some ``x``'s (squared radii)."""
        squared = self._block(x, y)
        x_radii_t = torch.as_tensor(np.asarray(x_radii, np.float32), device=self.device)
        y_radii_t = torch.as_tensor(np.asarray(y_radii, np.float32), device=self.device)
        x_covered = (squared <= y_radii_t[None, :]).any(dim=1)
        y_covered = (squared <= x_radii_t[:, None]).any(dim=0)
        return x_covered.cpu().numpy(), y_covered.cpu().numpy()


class TorchPairwiseDistances(TorchDistances):
    """float32 distances: with centred features, as exact as a float64 brute force for k-NN decisions."""


class TorchFloat16FirstDistances(TorchDistances):
    """The original evaluator's float16-first rule in torch; blocks taken as the original takes them (uncentred,
    on its 10000-row grid, rows against columns), since float16 rounding depends on orientation and offset."""

    block = ORIGINAL_BLOCK
    exact = False

    def squared(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return float16_first_squared(x, y)

    def nearest(self, x: np.ndarray, y: np.ndarray, k: int, both: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The ``k`` smallest distances (ascending) from each ``x`` to the ``y``s; rows only (no ``both``)."""
        if both:
            raise ValueError("float16-first distances depend on orientation: reduce rows only")
        return super().nearest(x, y, k, both=False)
