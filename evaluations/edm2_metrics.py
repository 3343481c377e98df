"""EDM2's metrics in the evaluator: FD_DINOv2 features and statistics, references given as statistics files,
and EDM2 ``.pkl`` references built from images.

torch (for DINOv2) is imported only when FD_DINOv2 is asked for.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from evaluations.errors import EvaluatorError
from evaluations.metrics import feature_statistics, frechet_distance
from evaluations.npz_io import IMAGES_KEY, array_names
from evaluations.stats_files import Stats, read_edm2_pkl, read_edm_npz

RESIZE_MODES = ("torch", "pil")  # as evaluations.dinov2.RESIZE_MODES, without importing torch


def reference_statistics_file(path: str) -> Stats | None:
    """The statistics of a reference given as statistics only (EDM2 ``.pkl``, or EDM ``.npz`` with ``mu`` and
    ``sigma`` but no ``arr_0``), or None for an image batch or folder."""
    if os.path.isdir(path):
        return None
    if os.path.splitext(path)[1].lower() == ".pkl":
        return read_edm2_pkl(path)
    names = array_names(path)
    if IMAGES_KEY not in names and "mu" in names and "sigma" in names:
        return read_edm_npz(path)
    return None


def dinov2_network(args: argparse.Namespace) -> Any:
    """The DINOv2 ViT-L/14 feature network (weights given, cached or downloaded) in EDM2's preprocessing."""
    from evaluations import dinov2
    from evaluations.dinov2_weights import DINOV2_URL, load_weights

    config = dinov2.VITL14
    state = load_weights(args.dinov2_weights, DINOV2_URL, args.cache_dir, config)
    return dinov2.DinoV2Features(config, state, args.dinov2_resize)


def dinov2_statistics(network: Any, images: Any, batch_size: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of the DINOv2 features of ``images``."""
    print(f"computing {desc} DINOv2 features...")
    features = network.features(images.batches(batch_size), images.count, desc)
    if not np.isfinite(features).all():
        raise EvaluatorError(f"{images.path}: DINOv2 features hold NaN or infinite values (broken weights?)")
    return feature_statistics(features)


def fd(metric: str, sample: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], sample_path: str,
       ref_path: str) -> float:
    """Fréchet distance of sample and reference statistics, with errors naming the files."""
    if ref[0].shape != sample[0].shape:
        raise EvaluatorError(
            f"{ref_path}: {metric} mu has {ref[0].shape[0]} dimensions, the features have {sample[0].shape[0]}"
        )
    try:
        return frechet_distance(*sample, *ref)
    except ValueError as err:
        raise EvaluatorError(f"{sample_path} against {ref_path}: cannot compute {metric} ({err})") from None
