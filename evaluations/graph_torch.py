"""A frozen TensorFlow ``GraphDef`` run as a PyTorch module: the ops of the Inception graph with TensorFlow's semantics.

The graph is interpreted, not rewritten by hand: ``plan_graph`` walks the ``GraphDef`` (as ``evaluations.graph_def``
reads it, without TensorFlow) from the wanted outputs back to the input node and lists the steps; ``GraphModule``
holds the float constants (the weights, under their node names) and runs the steps with torch ops that reproduce
TensorFlow's:

* ``Conv2D``, ``MaxPool``, ``AvgPool`` with TF's ``SAME`` padding (``pad = max((ceil(n/s)-1)*s + k - n, 0)``, the
  odd cell after), ``AvgPool`` averaging over the cells inside the image only, ``MaxPool`` ignoring padding;
* ``BatchNormWithGlobalNormalization`` (``variance_epsilon``, ``scale_after_normalization``) and the fused
  inference batch norms; ``Concat``/``ConcatV2`` with their axis constant; ``Reshape``, ``MatMul``, ``BiasAdd``,
  ``Relu``, ``Softmax``, ``Sub``/``Mul``/``Add``/``AddV2``; ``Identity`` and ``CheckNumerics`` pass their input on;
* ``ResizeBilinear`` as TensorFlow 1 computes it (``resize_bilinear``).

Four-dimensional values are kept in NCHW inside (PyTorch's convolution layout) and given back in TF's NHWC.
Constants come decoded from the graph reader (as TensorFlow's ``make_ndarray`` decodes them); neither planning,
converting nor running the module needs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from evaluations.errors import EvaluatorError
from evaluations.graph_def import GraphDef, NodeDef

PASS_THROUGH = {"Identity", "CheckNumerics"}
BINARY = {"Sub": torch.sub, "Mul": torch.mul, "Add": torch.add, "AddV2": torch.add}
# op type -> indices of inputs that are integer constants read when planning (axes, shapes, sizes)
STRUCTURAL = {"Concat": (0,), "ConcatV2": (-1,), "Reshape": (1,), "ResizeBilinear": (1,)}
SUPPORTED = PASS_THROUGH | set(BINARY) | set(STRUCTURAL) | {
    "Conv2D", "BatchNormWithGlobalNormalization", "FusedBatchNorm", "FusedBatchNormV3", "Relu", "MaxPool",
    "AvgPool", "MatMul", "BiasAdd", "Softmax",
}
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


@dataclass
class Step:
    """One node to run: its op, inputs (``("value" | "const", name)``) and attributes as python values."""

    name: str
    op: str
    inputs: list[tuple[str, str]]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphPlan:
    """The steps from the input node to the outputs, and the float constants they use (name -> torch shape)."""

    input_name: str
    outputs: list[str]
    steps: list[Step]
    constants: dict[str, tuple[int, ...]]
    conv_weights: set[str]  # constants stored as OIHW (TF keeps HWIO)


def _tensor_name(ref: str) -> str:
    """The node of an input reference ``name`` or ``name:0``; other outputs do not occur in these ops."""
    name, _, index = ref.partition(":")
    if index not in ("", "0"):
        raise EvaluatorError(f"input {ref}: only the first output of a node can be converted")
    return name


def _attr(node: NodeDef, key: str) -> Any:
    """A node attribute as a python value (bytes decoded as text), or None when absent."""
    value = node.attr.get(key)
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def const_array(node: NodeDef, label: str = "graph") -> np.ndarray:
    """The value of a ``Const`` node (its ``TensorProto``, decoded as TensorFlow's ``make_ndarray`` does)."""
    value = node.attr.get("value")
    if not isinstance(value, np.ndarray):
        raise EvaluatorError(f"{label}: constant {node.name} has no tensor value")
    return value


def _check_attrs(label: str, node: NodeDef) -> None:
    fmt = _attr(node, "data_format")
    if fmt not in (None, "NHWC"):
        raise EvaluatorError(f"{label}: node {node.name}: data_format {fmt} cannot be converted (only NHWC)")
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        raise EvaluatorError(f"{label}: node {node.name}: dilated convolutions cannot be converted")
    if node.op.startswith("FusedBatchNorm") and _attr(node, "is_training"):
        raise EvaluatorError(f"{label}: node {node.name}: a training-mode batch norm cannot be converted")
    if node.op == "MatMul" and _attr(node, "T") not in (None, 1):  # DT_FLOAT
        raise EvaluatorError(f"{label}: node {node.name}: only float32 MatMul can be converted")


def plan_graph(graph_def: GraphDef, outputs: list[str], input_name: str, label: str) -> GraphPlan:
    """The steps computing ``outputs`` from the value of ``input_name`` (a node the caller feeds), in run order.

    Control inputs are ignored (they only order TensorFlow's ``CheckNumerics``); an op outside ``SUPPORTED`` is an
    error naming ``label`` and the node.
    """
    nodes = {node.name: node for node in graph_def.node}
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done
    for output in outputs:
        stack = [(output, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                state[name] = 2
                order.append(name)
                continue
            if state.get(name) or name == input_name:
                if state.get(name) == 1:
                    raise EvaluatorError(f"{label}: the graph has a cycle through node {name}")
                continue
            if name not in nodes:
                raise EvaluatorError(f"{label}: node {name} is used but not defined")
            state[name] = 1
            stack.append((name, True))
            for ref in reversed(nodes[name].input):
                if not ref.startswith("^"):
                    stack.append((_tensor_name(ref), False))
    steps, constants, conv_weights = [], {}, set()
    for name in order:
        node = nodes[name]
        if node.op == "Const":
            continue
        if node.op not in SUPPORTED:
            raise EvaluatorError(f"{label}: the torch backend cannot convert op {node.op} (node {name}); use "
                                 "--backend tf")
        _check_attrs(label, node)
        refs = [_tensor_name(ref) for ref in node.input if not ref.startswith("^")]
        structural = {i % max(len(refs), 1) for i in STRUCTURAL.get(node.op, ())}
        step = Step(name, node.op, [], {key: _attr(node, key) for key in node.attr})
        for i, ref in enumerate(refs):
            source = nodes.get(ref)
            is_const = source is not None and source.op == "Const" and ref != input_name
            if i in structural:
                if not is_const:
                    raise EvaluatorError(f"{label}: node {name}: input {ref} must be a constant to be converted")
                step.attrs["const_input"] = const_array(source, label).reshape(-1).tolist()
            elif is_const:
                value = const_array(source, label)
                if value.dtype.kind not in "fiub":
                    raise EvaluatorError(f"{label}: node {name}: constant {ref} of {value.dtype} is not a number")
                shape = tuple(value.shape)
                if node.op == "Conv2D" and i == 1:
                    conv_weights.add(ref)
                    shape = (shape[3], shape[2], shape[0], shape[1])
                elif ref in conv_weights:
                    raise EvaluatorError(f"{label}: constant {ref} is used both as a convolution weight and otherwise")
                constants[ref] = shape
                step.inputs.append(("const", ref))
            else:
                step.inputs.append(("value", ref))
        steps.append(step)
    return GraphPlan(input_name, list(outputs), steps, constants, conv_weights)


def convert_constants(graph_def: GraphDef, plan: GraphPlan) -> dict[str, torch.Tensor]:
    """The float constants a plan uses, as float32 torch tensors (convolution weights HWIO -> OIHW)."""
    nodes = {node.name: node for node in graph_def.node if node.name in plan.constants}
    state = {}
    for name in plan.constants:
        value = torch.tensor(np.asarray(const_array(nodes[name]), dtype=np.float32))
        state[name] = value.permute(3, 2, 0, 1).contiguous() if name in plan.conv_weights else value
    return state


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding of one dimension: (before, after), the odd cell after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _window(x: torch.Tensor, attrs: dict, kernel: tuple[int, int]) -> tuple[tuple[int, int], list[int]]:
    """Strides and F.pad-order padding (left, right, top, bottom) of a Conv2D/pool window on NCHW ``x``."""
    strides = attrs["strides"]
    if strides[0] != 1 or strides[3] != 1:
        raise EvaluatorError("strides over the batch or channel dimension cannot be converted")
    stride = (strides[1], strides[2])
    if attrs["padding"] == "VALID":
        return stride, [0, 0, 0, 0]
    if attrs["padding"] != "SAME":
        raise EvaluatorError(f"padding {attrs['padding']} cannot be converted")
    top, bottom = _same_padding(x.shape[2], kernel[0], stride[0])
    left, right = _same_padding(x.shape[3], kernel[1], stride[1])
    return stride, [left, right, top, bottom]


def _symmetric(pads: list[int], kernel: tuple[int, int]) -> tuple[int, int] | None:
    """The (height, width) padding torch's pooling/conv can apply itself, if ``pads`` allow it."""
    left, right, top, bottom = pads
    if left == right and top == bottom and top <= kernel[0] // 2 and left <= kernel[1] // 2:
        return top, left
    return None


def conv2d(x: torch.Tensor, weight: torch.Tensor, attrs: dict) -> torch.Tensor:
    """TF Conv2D on NCHW ``x`` with an OIHW weight."""
    stride, pads = _window(x, attrs, tuple(weight.shape[2:]))
    padding = _symmetric(pads, tuple(weight.shape[2:]))
    if padding is None:
        return F.conv2d(F.pad(x, pads), weight, stride=stride)
    return F.conv2d(x, weight, stride=stride, padding=padding)


def pool(x: torch.Tensor, attrs: dict, op: str) -> torch.Tensor:
    """TF MaxPool (padding never wins) or AvgPool (the mean over cells inside the image) on NCHW ``x``."""
    ksize = attrs["ksize"]
    if ksize[0] != 1 or ksize[3] != 1:
        raise EvaluatorError("pooling over the batch or channel dimension cannot be converted")
    kernel = (ksize[1], ksize[2])
    stride, pads = _window(x, attrs, kernel)
    padding = _symmetric(pads, kernel)
    if op == "MaxPool":
        if padding is None:
            return F.max_pool2d(F.pad(x, pads, value=-float("inf")), kernel, stride)
        return F.max_pool2d(x, kernel, stride, padding=padding)
    if padding is not None:
        return F.avg_pool2d(x, kernel, stride, padding=padding, count_include_pad=False)
    total = F.avg_pool2d(F.pad(x, pads), kernel, stride, divisor_override=1)
    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
    return total / F.avg_pool2d(ones, kernel, stride, divisor_override=1)


def _interpolation(in_size: int, out_size: int, align_corners: bool, half_pixel: bool,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF's source cells (lower, upper) and weights of the upper cell along one dimension, in float32 as TF."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    index = np.arange(out_size, dtype=np.float32)
    source = (index + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else index * scale
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
    lerp = (source - floor).astype(np.float32)
    return (torch.from_numpy(lower).to(device), torch.from_numpy(upper).to(device),
            torch.from_numpy(lerp).to(device))


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool = False,
                    half_pixel_centers: bool = False) -> torch.Tensor:
    """TensorFlow 1's ``ResizeBilinear`` of NCHW ``x`` (not ``F.interpolate``'s half-pixel default).

    Output cell ``i`` reads source position ``i * in / out`` (``(in - 1) / (out - 1)`` with ``align_corners``,
    ``(i + 0.5) * scale - 0.5`` with ``half_pixel_centers``), between the cells ``floor`` and ``ceil`` of it
    clamped to the image, and blends them as TF does: ``top + (bottom - top) * y_lerp`` of the two rows' blends.
    """
    x = x.float()
    y_lo, y_hi, y_lerp = _interpolation(x.shape[2], size[0], align_corners, half_pixel_centers, x.device)
    x_lo, x_hi, x_lerp = _interpolation(x.shape[3], size[1], align_corners, half_pixel_centers, x.device)
    top_rows, bottom_rows = x.index_select(2, y_lo), x.index_select(2, y_hi)
    top_left, top_right = top_rows.index_select(3, x_lo), top_rows.index_select(3, x_hi)
    bottom_left, bottom_right = bottom_rows.index_select(3, x_lo), bottom_rows.index_select(3, x_hi)
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp.view(-1, 1)


def _as_nchw_constant(value: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """A constant broadcast in TF's NHWC sense, laid out for an NCHW operand (other ranks unchanged)."""
    if other.dim() != 4 or value.dim() == 0:
        return value
    return value.reshape((1,) * (4 - value.dim()) + tuple(value.shape)).permute(0, 3, 1, 2)


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _batch_norm(x: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, offset: torch.Tensor,
                scale: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """``(x - mean) / sqrt(variance + epsilon) * scale + offset`` over the channels, in one fused pass."""
    if x.dim() == 4:
        return F.batch_norm(x, mean, variance, scale, offset, training=False, eps=epsilon)
    factor = torch.rsqrt(variance + epsilon) * (1.0 if scale is None else scale)
    return (x - mean) * factor + offset


def _concat(args: list[torch.Tensor], attrs: dict) -> torch.Tensor:
    axis = attrs["const_input"][0]
    rank = args[0].dim()
    axis = axis + rank if axis < 0 else axis
    return torch.cat(args, NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis)


def _reshape(x: torch.Tensor, attrs: dict) -> torch.Tensor:
    return _to_nchw(_to_nhwc(x).reshape(attrs["const_input"]))


def _matmul(a: torch.Tensor, b: torch.Tensor, attrs: dict) -> torch.Tensor:
    return (a.t() if attrs.get("transpose_a") else a) @ (b.t() if attrs.get("transpose_b") else b)


OPS: dict[str, Callable[[list[torch.Tensor], dict], torch.Tensor]] = {
    "Conv2D": lambda a, attrs: conv2d(a[0], a[1], attrs),
    "MaxPool": lambda a, attrs: pool(a[0], attrs, "MaxPool"),
    "AvgPool": lambda a, attrs: pool(a[0], attrs, "AvgPool"),
    "BatchNormWithGlobalNormalization": lambda a, attrs: _batch_norm(
        a[0], a[1], a[2], a[3], a[4] if attrs.get("scale_after_normalization") else None, attrs["variance_epsilon"]),
    "FusedBatchNorm": lambda a, attrs: _batch_norm(a[0], a[3], a[4], a[2], a[1], attrs.get("epsilon") or 1e-4),
    "FusedBatchNormV3": lambda a, attrs: _batch_norm(a[0], a[3], a[4], a[2], a[1], attrs.get("epsilon") or 1e-4),
    "Relu": lambda a, attrs: F.relu(a[0]),
    "Concat": _concat,
    "ConcatV2": _concat,
    "Reshape": lambda a, attrs: _reshape(a[0], attrs),
    "ResizeBilinear": lambda a, attrs: resize_bilinear(
        a[0], tuple(attrs["const_input"]), bool(attrs.get("align_corners")), bool(attrs.get("half_pixel_centers"))),
    "MatMul": lambda a, attrs: _matmul(a[0], a[1], attrs),
    "BiasAdd": lambda a, attrs: a[0] + (a[1].view(1, -1, 1, 1) if a[0].dim() == 4 else a[1]),
    "Softmax": lambda a, attrs: torch.softmax(a[0], dim=1 if a[0].dim() == 4 else -1),
}


def _buffer_name(name: str) -> str:
    """A node name as a buffer name (``.`` is not allowed there; ``%`` escapes)."""
    return name.replace("%", "%25").replace(".", "%2E")


class GraphModule(torch.nn.Module):
    """The steps of a ``GraphPlan`` with its constants as buffers; ``forward`` maps the NHWC input to the outputs."""

    def __init__(self, plan: GraphPlan, constants: dict[str, torch.Tensor]):
        super().__init__()
        self.plan = plan
        for name in plan.constants:
            self.register_buffer(_buffer_name(name), constants[name].float())
        last_use: dict[str, int] = {}
        for index, step in enumerate(plan.steps):
            for kind, name in step.inputs:
                if kind == "value":
                    last_use[name] = index
        for name in plan.outputs:
            last_use.pop(name, None)
        self._release = [[name for name, last in last_use.items() if last == index] for index in range(len(plan.steps))]

    def constants(self) -> dict[str, torch.Tensor]:
        """The float constants under their node names (the converted state of the graph)."""
        return {name: getattr(self, _buffer_name(name)) for name in self.plan.constants}

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The plan's outputs (NHWC when 4-D, as TF gives them) for float NHWC ``images``."""
        values: dict[str, torch.Tensor] = {self.plan.input_name: _to_nchw(images)}
        for step, release in zip(self.plan.steps, self._release):
            args = [values[name] if kind == "value" else getattr(self, _buffer_name(name)) for kind, name in
                    step.inputs]
            if step.op in PASS_THROUGH:
                out = args[0]
            elif step.op in BINARY:
                a, b = args
                kinds = [kind for kind, _ in step.inputs]
                if kinds[0] == "const":
                    a = _as_nchw_constant(a, b)
                if kinds[1] == "const":
                    b = _as_nchw_constant(b, a)
                out = BINARY[step.op](a, b)
            else:
                out = OPS[step.op](args, step.attrs)
            values[step.name] = out
            for name in release:
                del values[name]
        return [_to_nhwc(values[name]) for name in self.plan.outputs]


def check_constants(plan: GraphPlan, constants: dict[str, torch.Tensor]) -> bool:
    """Whether ``constants`` are exactly the plan's float constants with their shapes, all finite float32."""
    return set(constants) == set(plan.constants) and all(
        isinstance(value, torch.Tensor) and value.dtype == torch.float32 and tuple(value.shape) == plan.constants[name]
        and bool(torch.isfinite(value).all()) for name, value in constants.items())
