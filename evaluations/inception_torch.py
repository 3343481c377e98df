"""The Inception features (pool_3, the sFID slice of mixed_6/conv, softmax) computed by PyTorch: ``--backend torch``.

The frozen graph is converted by ``graph_torch`` (its own nodes and weights, TensorFlow's op semantics); the
converted constants are cached once per graph as ``<cache dir>/inception_torch_<sha256 of the graph>.pt``, a
plain state dict keyed by node name (read back with ``torch.load(weights_only=True)``, then checked against the
graph).  Batches run on CUDA when available, in float32 with TF32 off, so the features match TensorFlow's.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from evaluations.errors import EvaluatorError
from evaluations.graph_def import GraphDef
from evaluations.graph_torch import GraphModule, check_constants, const_array, convert_constants, plan_graph
from evaluations.inception import (
    INPUT_TENSOR,
    POOL_TENSOR,
    SOFTMAX_MATMUL,
    SPATIAL_CHANNELS,
    SPATIAL_TENSOR,
    Features,
    network_features,
)
from evaluations.inception_file import InceptionGraph

CONVERTED_PREFIX = "inception_torch_"


def converted_path(cache_dir: Path, sha256: str) -> Path:
    """Where the converted constants of the graph with this SHA-256 are cached."""
    return Path(cache_dir) / f"{CONVERTED_PREFIX}{sha256}.pt"


def softmax_weight_name(graph_def: GraphDef, label: str) -> str:
    """The constant behind the weight input of ``softmax/logits/MatMul`` (through ``Identity`` nodes)."""
    nodes = {node.name: node for node in graph_def.node}
    ref = nodes[SOFTMAX_MATMUL].input[1].split(":")[0]
    while ref in nodes and nodes[ref].op == "Identity":
        ref = nodes[ref].input[0].split(":")[0]
    if ref not in nodes or nodes[ref].op != "Const":
        raise EvaluatorError(f"{label}: the weight of {SOFTMAX_MATMUL} is not a constant; use --backend tf")
    return ref


def _read_cached(path: Path, plan: Any) -> dict[str, torch.Tensor] | None:
    """The cached constants, or None when missing, unreadable or not those of this graph (reported)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any damage (truncation, another format) means: convert again
        print(f"warning: ignoring the unreadable converted Inception graph {path} ({err})", file=sys.stderr)
        return None
    if not isinstance(state, dict) or not check_constants(plan, state):
        print(f"warning: ignoring the converted Inception graph {path}: it does not fit the graph", file=sys.stderr)
        return None
    return state


def _store(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Cache the converted constants atomically; a cache that cannot be written only costs a warning."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, temp)
        os.replace(temp, path)
        print(f"converted the Inception graph for PyTorch and cached it in {path}")
    except OSError as err:
        print(f"warning: cannot cache the converted Inception graph in {path} ({err})", file=sys.stderr)
    finally:
        temp.unlink(missing_ok=True)


def convert_inception(graph: InceptionGraph, cache_dir: Path | None) -> tuple[GraphModule, str]:
    """The graph from its input to pool_3 and mixed_6/conv as a module (with the softmax weight as a constant),
    and that weight's node name; constants from the cache when it holds this graph's, else converted (and cached)."""
    if not isinstance(graph.graph_def, GraphDef):
        raise TypeError("the torch backend needs the graph as evaluations.graph_def reads it: "
                        "inception_file.load_graph(..., backend='torch')")
    input_node = INPUT_TENSOR.split(":")[0]
    outputs = [POOL_TENSOR.split(":")[0], SPATIAL_TENSOR.split(":")[0]]
    plan = plan_graph(graph.graph_def, outputs, input_node, graph.source)
    weight = softmax_weight_name(graph.graph_def, graph.source)
    node = next(node for node in graph.graph_def.node if node.name == weight)
    plan.constants.setdefault(weight, tuple(const_array(node, graph.source).shape))
    path = None if cache_dir is None else converted_path(cache_dir, graph.sha256)
    state = None if path is None else _read_cached(path, plan)
    if state is not None:
        print(f"using the converted Inception graph cached in {path}")
    else:
        state = convert_constants(graph.graph_def, plan)
        if not check_constants(plan, state):
            raise EvaluatorError(f"{graph.source}: the graph's constants do not fit its nodes (or are not finite)")
        if path is not None:
            _store(path, state)
    return GraphModule(plan, state), weight


@contextmanager
def exact_float32() -> Iterator[None]:
    """Full float32 convolutions and matrix products (no TF32 on CUDA), as TensorFlow computes the graph."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class TorchInceptionNetwork:
    """The converted Inception graph on the best device, fed uint8 NHWC batches (cast to float32 as the TF path)."""

    backend = "torch"

    def __init__(self, graph: InceptionGraph, cache_dir: Path | None, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        module, weight = convert_inception(graph, cache_dir)
        self.module = module.eval().requires_grad_(False).to(self.device)
        self._weight = self.module.constants()[weight]

    def run(self, batch: np.ndarray, softmax: bool) -> list[np.ndarray]:
        """pool_3, the sFID slice and (if ``softmax``) the class probabilities of one uint8 NHWC batch, per image."""
        try:
            with torch.inference_mode(), exact_float32():
                images = torch.tensor(batch).to(self.device).to(torch.float32)  # a copy: batches may be read-only
                pool, spatial = self.module(images)
                count = len(batch)
                outputs = [pool.reshape(count, -1), spatial[..., :SPATIAL_CHANNELS].reshape(count, -1)]
                if softmax:
                    outputs.append(torch.softmax(outputs[0] @ self._weight, dim=1))
                return [output.cpu().numpy() for output in outputs]
        except RuntimeError as err:
            raise EvaluatorError(f"PyTorch failed ({str(err).splitlines()[0]})") from None

    def features(self, batches: Iterable[np.ndarray], count: int, softmax: bool, desc: str) -> Features:
        """Run ``count`` images (uint8 NHWC batches) through the network once, streaming, with a progress bar."""
        return network_features(self, batches, count, softmax, desc)
