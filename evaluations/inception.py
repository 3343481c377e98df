"""Inception features of image batches (pool_3, the sFID slice of mixed_6/conv, softmax) in a TF session."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from evaluations.errors import EvaluatorError

INPUT_TENSOR = "ExpandDims:0"  # float NHWC in 0..255, any size: the graph resizes to 299x299
POOL_TENSOR = "pool_3:0"  # [N, 1, 1, 2048]: FID, precision/recall and Inception Score features
SPATIAL_TENSOR = "mixed_6/conv:0"  # [N, 17, 17, C]: its first 7 channels are the sFID features
SOFTMAX_MATMUL = "softmax/logits/MatMul"  # its weight input maps pool_3 to the 1008 logits
SPATIAL_CHANNELS = 7


@dataclass
class Features:
    """Per-image features: ``pool`` [N, 2048], ``spatial`` [N, 17*17*7], ``softmax`` [N, 1008] or None."""

    pool: np.ndarray
    spatial: np.ndarray
    softmax: np.ndarray | None


def prefetch(batches: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Read/decode the next batches in a thread while TensorFlow works on the current one."""
    slots: "queue.Queue" = queue.Queue(depth)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                slots.put(batch)
        except BaseException as err:  # handed to the consumer, which re-raises it
            slots.put(err)
        slots.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := slots.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


class InceptionNetwork:
    """The frozen Inception graph imported once, fed uint8 NHWC batches (cast to float32 in the graph)."""

    def __init__(self, graph_def: Any, source: str = "Inception graph"):
        import tensorflow as tf

        v1 = tf.compat.v1
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._images = v1.placeholder(tf.uint8, [None, None, None, 3], name="images")
            try:
                pool, spatial, matmul = tf.import_graph_def(
                    graph_def,
                    input_map={INPUT_TENSOR: tf.cast(self._images, tf.float32)},
                    return_elements=[POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL],
                    name="inception",
                )
            except ValueError as err:
                raise EvaluatorError(f"{source}: cannot import the Inception graph ({err})") from None
            count = tf.shape(self._images)[0]
            self._pool = tf.reshape(pool, [count, -1])
            self._spatial = tf.reshape(spatial[..., :SPATIAL_CHANNELS], [count, -1])
            self._softmax = tf.nn.softmax(tf.matmul(self._pool, matmul.inputs[1]))
        config = v1.ConfigProto(allow_soft_placement=True)  # lets the graph's DecodeJpeg stay on CPU
        config.gpu_options.allow_growth = True
        self._session = v1.Session(graph=self._graph, config=config)
        self._errors = tf.errors.OpError

    def run(self, batch: np.ndarray, softmax: bool) -> list[np.ndarray]:
        """pool_3, the sFID slice and (if ``softmax``) the class probabilities of one uint8 NHWC batch, per image."""
        fetches = [self._pool, self._spatial] + ([self._softmax] if softmax else [])
        try:
            return self._session.run(fetches, {self._images: batch})
        except self._errors as err:
            raise EvaluatorError(f"TensorFlow failed ({err.message.splitlines()[0]})") from None

    def features(self, batches: Iterable[np.ndarray], count: int, softmax: bool, desc: str) -> Features:
        """Run ``count`` images (uint8 NHWC batches) through the graph once, fetching every feature per batch."""
        return network_features(self, batches, count, softmax, desc)


def network_features(network: Any, batches: Iterable[np.ndarray], count: int, softmax: bool, desc: str) -> Features:
    """Features of ``count`` images from ``network.run`` (either backend), batch by batch, with a progress bar."""
    with FeatureCollector(network, count, softmax, desc) as collector:
        for batch in prefetch(batches):
            collector.add(batch)
    return collector.result()


class FeatureCollector:
    """Features of a stream of batches, filled in as each batch is added (so a caller can also use the batches).

    Use it as a context manager around the pass, so that its progress bar is closed however the pass ends.
    """

    def __init__(self, network: Any, count: int, softmax: bool, desc: str):
        self.network, self.count, self.softmax, self.desc = network, count, softmax, desc
        self.done = 0
        self._outputs: list[np.ndarray] | None = None
        self._bar = tqdm(total=count, desc=desc, unit="img")

    def add(self, batch: np.ndarray) -> None:
        """Run one batch through the network and store its features."""
        if self.done + len(batch) > self.count:
            raise EvaluatorError(f"{self.desc}: expected {self.count} images, got more")
        try:
            values = self.network.run(batch, self.softmax)
        except EvaluatorError as err:
            raise EvaluatorError(f"{self.desc}: images {self.done}..{self.done + len(batch)}: {err}") from None
        if self._outputs is None:
            self._outputs = [np.empty((self.count, value.shape[1]), np.float32) for value in values]
        for output, value in zip(self._outputs, values):
            output[self.done : self.done + len(batch)] = value
        self.done += len(batch)
        self._bar.update(len(batch))

    def __enter__(self) -> "FeatureCollector":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._bar.close()

    def result(self) -> Features:
        """All features, once every image has been added."""
        if self.done != self.count:
            raise EvaluatorError(f"{self.desc}: expected {self.count} images, read {self.done}")
        pool, spatial, *probs = self._outputs
        return Features(pool, spatial, probs[0] if self.softmax else None)
