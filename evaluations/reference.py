"""Reference-side work: its activations (stored in the file, cached, or computed) and building reference files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from evaluations.activation_cache import (
    Activations,
    Stats,
    cache_entry,
    load_entry,
    load_radii,
    radii_entry,
    store_entry,
    store_radii,
    valid_activations,
)
from evaluations.image_folder import FolderImages
from evaluations.inception import FeatureCollector, InceptionNetwork, prefetch
from evaluations.inception_file import InceptionGraph
from evaluations.metrics import DistanceKernels, fid_statistics, reference_radii
from evaluations.npz_io import ACTS_GRAPH_KEY, ACTS_KEYS, IMAGES_KEY, NpzImages, ReferenceFile

Images = NpzImages | FolderImages


def stored_activations(images: Images, reference: ReferenceFile, graph: InceptionGraph) -> Activations | None:
    """The activations a reference file carries, if they fit its ``arr_0`` and came from this Inception graph."""
    if reference.acts is None:
        return None
    if reference.acts_graph != graph.sha256:
        print(f"note: the activations stored in {images.path} come from another Inception file; recomputing them")
        return None
    if not valid_activations(reference.acts, images.count):
        print(f"note: the activations stored in {images.path} do not fit its {IMAGES_KEY}; recomputing them")
        return None
    print(f"using the reference activations stored in {images.path}")
    return reference.acts


@dataclass
class ReferenceFeatures:
    """Activations of the reference images, the FID statistics to use, and their cache entry if cached."""

    acts: Activations
    stats: Stats
    entry: Path | None = None


def reference_features(
    images: Images,
    reference: ReferenceFile,
    network: InceptionNetwork,
    graph: InceptionGraph,
    batch_size: int,
    cache_dir: Path | None,
) -> ReferenceFeatures:
    """Activations of the reference images and the FID statistics to use, computing them only when needed.

    Activations come from the file, else the cache, else one feature pass; statistics are the file's
    precomputed ones, else those of the activations (cached with them).  The entry is the reference's place
    in the cache (also for radii when the file carries its activations); ``cache_dir`` None disables the
    cache; folders of images are not cached.
    """
    use_cache = cache_dir is not None and isinstance(images, NpzImages)
    acts = stored_activations(images, reference, graph)
    backend = getattr(network, "backend", "tf")
    entry = cache_entry(cache_dir, images.path, graph.sha256, batch_size, backend) if use_cache else None
    if acts is not None:
        return ReferenceFeatures(acts, reference.stats or fid_statistics(*acts), entry)
    if entry is not None:
        cached = load_entry(entry, images.count)
        if cached is not None:
            print(f"using cached reference activations from {entry}")
            acts, stats = cached
            return ReferenceFeatures(acts, reference.stats or stats or fid_statistics(*acts), entry)
    print("computing reference batch activations...")
    features = network.features(images.batches(batch_size), images.count, softmax=False, desc="reference")
    acts = (features.pool, features.spatial)
    stats = None if reference.stats else fid_statistics(*acts)
    if entry is not None:
        store_entry(entry, acts, stats)
    return ReferenceFeatures(acts, reference.stats or stats, entry)


def cached_reference_radii(features: ReferenceFeatures, kernels: DistanceKernels, precision: str) -> np.ndarray:
    """The reference's k-NN radii for precision/recall, kept beside its cache entry (if any) for the next call."""
    path = None if features.entry is None else radii_entry(features.entry, precision)
    radii = None if path is None else load_radii(path, len(features.acts[0]))
    if radii is None:
        radii = reference_radii(features.acts[0], kernels)
        if path is not None:
            store_radii(path, radii)
    return radii


def subset_indices(count: int, limit: int) -> np.ndarray:
    """Sorted indices of a fixed pseudo-random subset of ``limit`` of ``count`` images (all if fewer)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def reference_arrays(
    images: Images, keep: np.ndarray, network: InceptionNetwork, graph: InceptionGraph, batch_size: int
) -> Iterator[tuple[str, Any]]:
    """The arrays of a reference npz, in write order, from one pass over ``images``.

    ``arr_0`` (the images at ``keep``) is streamed out while the same batches run through the network;
    then come the FID statistics of all images and the activations of the kept ones.
    """
    collector = FeatureCollector(network, images.count, softmax=False, desc="reference")

    def kept_images() -> Iterator[np.ndarray]:
        start = 0
        with collector:
            for batch in prefetch(images.batches(batch_size)):
                collector.add(batch)
                lo, hi = np.searchsorted(keep, [start, start + len(batch)])
                yield batch[keep[lo:hi] - start]
                start += len(batch)

    yield IMAGES_KEY, ((len(keep), *images.shape[1:]), np.uint8, kept_images())
    features = collector.result()
    yield from fid_statistics(features.pool, features.spatial).items()
    for key, values in zip(ACTS_KEYS, (features.pool, features.spatial)):
        yield key, values[keep]
    yield ACTS_GRAPH_KEY, np.array(graph.sha256)
