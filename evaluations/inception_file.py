"""Finds, downloads (atomically, with a progress bar) and verifies the frozen Inception ``GraphDef``.

The file is parsed by the backend's reader: TensorFlow's protobuf classes for ``--backend tf`` (whose graph TensorFlow
imports), the plain-Python reader of ``evaluations.graph_def`` for ``--backend torch`` (no TensorFlow needed); the
graph the checks below accept is the very object the backend then runs.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from evaluations.errors import EvaluatorError
from evaluations.graph_def import GraphDef, read_graph_def

INCEPTION_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"
)
FILE_NAME = "classify_image_graph_def.pb"
# Size in bytes and MD5 of the file behind each URL.  No published SHA-256 for this file was
# found; the size matches the classify_image_graph_def.pb of TensorFlow's
# inception-2015-12-05.tgz (95,673,916 bytes) and the MD5 is the value a third-party
# reproducibility project pins for INCEPTION_URL.  Files from other URLs or --inception_path are
# only checked by parsing them and looking for the nodes the evaluator needs.
KNOWN_DIGESTS = {INCEPTION_URL: (95_673_916, "e6bb154e85f5d4331c22abcddb5dcf31")}
REQUIRED_NODES = ("ExpandDims", "pool_3", "mixed_6/conv", "softmax/logits/MatMul")
# The op types a graph may contain; any other op (WriteFile, ReadFile, PyFunc, Save, a call of a
# graph function, ...) is refused before TensorFlow imports or runs the graph, since a GraphDef is a
# program and --inception_path / --inception_url accept any file.  The list is the op types of
# TensorFlow's Inception 2015 graph (classify_image_graph_def.pb): Const (weights, shapes and the
# DecodeJpeg/contents input), DecodeJpeg, Cast, ExpandDims, ResizeBilinear, Sub and Mul (the 299x299
# resize and the (x - 128) / 128 scaling), Conv2D, BatchNormWithGlobalNormalization and Relu (every
# conv block), MaxPool and AvgPool (pool, pool_1, the towers, pool_3), Concat (each mixed block's
# join), Reshape (pool_3/_reshape), MatMul, BiasAdd and Softmax (softmax/logits, softmax); plus the
# same computation as a newer TensorFlow writes it (ConcatV2, Add, AddV2, Identity, FusedBatchNorm,
# FusedBatchNormV3) and Placeholder, the input of the stand-in graph the tests build
# (tests/inception_standin.py).  All of them are pure tensor arithmetic on their inputs.  TensorFlow's
# summarize_graph lists the real graph's op types (INCEPTION_OP_TYPES, its documentation's example output):
# they include CheckNumerics, which only raises an error on NaN or infinite values.
INCEPTION_OP_TYPES = (
    "Const", "CheckNumerics", "Identity", "BatchNormWithGlobalNormalization", "Conv2D", "Relu", "Concat",
    "AvgPool", "MaxPool", "Sub", "Softmax", "ResizeBilinear", "Reshape", "Mul", "MatMul", "ExpandDims",
    "DecodeJpeg", "Cast", "BiasAdd",
)
ALLOWED_OPS = frozenset(INCEPTION_OP_TYPES) | frozenset({
    "Const", "Placeholder", "Identity", "DecodeJpeg", "Cast", "ExpandDims", "ResizeBilinear",
    "Sub", "Mul", "Add", "AddV2", "BiasAdd", "Conv2D", "BatchNormWithGlobalNormalization",
    "FusedBatchNorm", "FusedBatchNormV3", "Relu", "MaxPool", "AvgPool", "Concat", "ConcatV2",
    "Reshape", "MatMul", "Softmax",
})


BACKENDS = ("tf", "torch")


class InceptionGraph(NamedTuple):
    """A parsed Inception ``GraphDef``, the file it came from, and the SHA-256 of its bytes (its identity).

    ``graph_def`` is TensorFlow's ``GraphDef`` message when parsed for the tf backend, an
    ``evaluations.graph_def.GraphDef`` when parsed for the torch backend.
    """

    graph_def: Any
    source: str
    sha256: str


def _graph(path: Path, data: bytes, graph_def: Any) -> InceptionGraph:
    return InceptionGraph(graph_def, str(path), hashlib.sha256(data).hexdigest())


def default_cache_dir() -> Path:
    """``$GUIDED_DIFFUSION_CACHE``, else ``$XDG_CACHE_HOME/guided_diffusion``, else ``~/.cache/guided_diffusion``."""
    if os.environ.get("GUIDED_DIFFUSION_CACHE"):
        return Path(os.environ["GUIDED_DIFFUSION_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "guided_diffusion"


def check_ops(label: str, graph_def: Any) -> None:
    """Refuse a graph with an op outside ``ALLOWED_OPS`` or with graph functions (which could hide any op).

    Runs before the graph is imported, so that nothing of a refused file is ever executed; ``label``
    names the file in the error (e.g. ``--inception_path FILE``).
    """
    if isinstance(graph_def, GraphDef):
        functions = graph_def.functions
    else:
        functions = [function.signature.name for function in graph_def.library.function]
    if functions:
        name = functions[0]
        raise EvaluatorError(
            f"{label}: the graph defines function {name}, which the Inception graph does not use; refusing to run it"
        )
    for node in graph_def.node:
        if node.op not in ALLOWED_OPS:
            raise EvaluatorError(
                f"{label}: the graph contains op {node.op} (node {node.name}), which the Inception graph does "
                "not use; refusing to run it"
            )


def _parse_with_tensorflow(data: bytes, label: str) -> Any:
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except DecodeError as err:
        raise EvaluatorError(f"{label}: corrupt or truncated Inception file (not a GraphDef: {err})") from None
    return graph_def


def parse_graph_def(path: Path, data: bytes, label: str | None = None, backend: str = "tf") -> Any:
    """Parse ``data`` as a ``GraphDef`` that has the Inception nodes and only its op types, or raise an
    error naming ``label`` (default: ``path``).

    ``backend`` picks the reader: ``"tf"`` gives TensorFlow's message, ``"torch"`` an
    ``evaluations.graph_def.GraphDef`` read without TensorFlow.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    label = label or str(path)
    graph_def = read_graph_def(data, label) if backend == "torch" else _parse_with_tensorflow(data, label)
    names = {node.name for node in graph_def.node}
    missing = [name for name in REQUIRED_NODES if name not in names]
    if missing:
        raise EvaluatorError(
            f"{label}: corrupt, truncated or not the Inception graph (missing nodes: {', '.join(missing)})"
        )
    check_ops(label, graph_def)
    return graph_def


def _verify(path: Path, data: bytes, url: str, backend: str) -> Any:
    if url in KNOWN_DIGESTS:
        size, md5 = KNOWN_DIGESTS[url]
        if len(data) != size:
            raise EvaluatorError(f"{path}: corrupt or truncated Inception file ({len(data)} bytes, expected {size})")
        if hashlib.md5(data).hexdigest() != md5:
            raise EvaluatorError(f"{path}: corrupt Inception file (MD5 differs from {md5})")
    return parse_graph_def(path, data, backend=backend)


def _download(url: str, target: Path, backend: str) -> InceptionGraph:
    temp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(temp, "wb") as out:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=FILE_NAME) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        data = temp.read_bytes()
        try:
            graph_def = _verify(target, data, url, backend)
        except EvaluatorError as err:
            raise EvaluatorError(f"the download from {url} is unusable: {err}") from None
        os.replace(temp, target)
        return _graph(target, data, graph_def)
    except OSError as err:
        raise EvaluatorError(
            f"cannot download the Inception graph from {url} ({err}); fetch it by hand and pass --inception_path"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def load_graph(path: str | None = None, url: str = INCEPTION_URL, cache_dir: str | None = None,
               backend: str = "tf") -> InceptionGraph:
    """The Inception graph from ``path``, else from the cache, downloading (again) when missing or corrupt;
    parsed for ``backend`` (``"tf"`` or ``"torch"``, see ``parse_graph_def``)."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise EvaluatorError(f"{path}: cannot read Inception file ({err.strerror})") from None
        return _graph(Path(path), data, parse_graph_def(Path(path), data, f"--inception_path {path}", backend))
    target = (Path(cache_dir) if cache_dir else default_cache_dir()) / FILE_NAME
    if target.exists():
        data = target.read_bytes()
        try:
            return _graph(target, data, _verify(target, data, url, backend))
        except EvaluatorError as err:
            print(f"warning: {err}; downloading it again", file=sys.stderr)
            target.unlink()
    print(f"downloading the Inception graph from {url} to {target}...")
    return _download(url, target, backend)
