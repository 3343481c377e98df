"""Finds, downloads (atomically, with a progress bar) and verifies the frozen Inception ``GraphDef``."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from evaluations.errors import EvaluatorError

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


class InceptionGraph(NamedTuple):
    """A parsed Inception ``GraphDef``, the file it came from, and the SHA-256 of its bytes (its identity)."""

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


def parse_graph_def(path: Path, data: bytes) -> Any:
    """Parse ``data`` as a ``GraphDef`` that has the Inception nodes, or raise an error naming ``path``."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except DecodeError as err:
        raise EvaluatorError(f"{path}: corrupt or truncated Inception file (not a GraphDef: {err})") from None
    names = {node.name for node in graph_def.node}
    missing = [name for name in REQUIRED_NODES if name not in names]
    if missing:
        raise EvaluatorError(
            f"{path}: corrupt, truncated or not the Inception graph (missing nodes: {', '.join(missing)})"
        )
    return graph_def


def _verify(path: Path, data: bytes, url: str) -> Any:
    if url in KNOWN_DIGESTS:
        size, md5 = KNOWN_DIGESTS[url]
        if len(data) != size:
            raise EvaluatorError(f"{path}: corrupt or truncated Inception file ({len(data)} bytes, expected {size})")
        if hashlib.md5(data).hexdigest() != md5:
            raise EvaluatorError(f"{path}: corrupt Inception file (MD5 differs from {md5})")
    return parse_graph_def(path, data)


def _download(url: str, target: Path) -> InceptionGraph:
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
            graph_def = _verify(target, data, url)
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


def load_graph(path: str | None = None, url: str = INCEPTION_URL, cache_dir: str | None = None) -> InceptionGraph:
    """The Inception graph from ``path``, else from the cache, downloading (again) when missing or corrupt."""
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise EvaluatorError(f"{path}: cannot read Inception file ({err.strerror})") from None
        return _graph(Path(path), data, parse_graph_def(Path(path), data))
    target = (Path(cache_dir) if cache_dir else default_cache_dir()) / FILE_NAME
    if target.exists():
        data = target.read_bytes()
        try:
            return _graph(target, data, _verify(target, data, url))
        except EvaluatorError as err:
            print(f"warning: {err}; downloading it again", file=sys.stderr)
            target.unlink()
    print(f"downloading the Inception graph from {url} to {target}...")
    return _download(url, target)
