"""Inception Score, FID, sFID, precision and recall of a sample batch against a reference batch.

Run from the project root:

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json metrics.json]
    python evaluations/evaluator.py --ref_stats_out MY_REF.npz IMAGES.npz|IMAGE_FOLDER

Same graph, tensors and metric definitions as guided-diffusion's ``evaluations/evaluator.py``,
with streamed npz reading, one feature pass per batch and eigenvalue-based Fréchet distances.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the project root (evaluations, guided_diffusion) on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluations.distances import Float16FirstDistances, PairwiseDistances
from evaluations.errors import EvaluatorError
from evaluations.image_folder import FolderImages
from evaluations.inception import InceptionNetwork
from evaluations.inception_file import INCEPTION_URL, InceptionGraph, default_cache_dir, load_graph
from evaluations.metrics import (
    NEIGHBOURHOOD,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from evaluations.npz_io import CONVERSION, NpzImages, ReferenceFile, read_reference
from evaluations.reference import (
    Images,
    cached_reference_radii,
    reference_arrays,
    reference_features,
    subset_indices,
)
from guided_diffusion.fileio import write_npz_stream

RESULTS = (
    ("inception_score", "Inception Score"),
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("precision", "Precision"),
    ("recall", "Recall"),
)
PR_PURPOSE = f"precision/recall (k={NEIGHBOURHOOD} nearest neighbours)"
DISTANCE_KERNELS = {"float32": PairwiseDistances, "float16": Float16FirstDistances}


def open_images(path: str, image_size: int | None = None) -> Images:
    """The images of an ``.npz`` file's ``arr_0`` or of a folder of PNG/JPEG files."""
    if os.path.isdir(path):
        return FolderImages(path, image_size)
    if image_size is not None:
        raise EvaluatorError(f"{path}: --image_size applies to image folders only")
    return NpzImages(path)


def check_count(images: Images, minimum: int, purpose: str) -> None:
    """Refuse inputs with too few images for a metric."""
    if images.count < minimum:
        raise EvaluatorError(f"{images.path}: has {images.count} image(s); {purpose} needs at least {minimum}")


def load_network(args: argparse.Namespace) -> tuple[InceptionGraph, InceptionNetwork]:
    """Import the Inception graph (given, cached or downloaded) into a TensorFlow session."""
    graph = load_graph(args.inception_path, args.inception_url, args.cache_dir)
    return graph, InceptionNetwork(graph.graph_def, graph.source)


def evaluate(args: argparse.Namespace) -> dict[str, float | str]:
    """The five metrics of ``args.sample_batch`` against ``args.ref_batch``, and the k-NN distance precision."""
    ref = open_images(args.ref_batch, args.image_size)
    sample = open_images(args.sample_batch, args.image_size)
    for images in (ref, sample):
        check_count(images, 2, "FID statistics")
        check_count(images, NEIGHBOURHOOD + 1, PR_PURPOSE)
    reference = read_reference(ref.path) if isinstance(ref, NpzImages) else ReferenceFile()
    graph, network = load_network(args)

    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    ref_features = reference_features(ref, reference, network, graph, args.batch_size, cache_dir)
    ref_stats = ref_features.stats
    print("computing sample batch activations...")
    sample_features = network.features(sample.batches(args.batch_size), sample.count, softmax=True, desc="sample")

    print("computing evaluations...")
    fids = {}
    for name, key, features in (("fid", "", sample_features.pool), ("sfid", "_s", sample_features.spatial)):
        mu, sigma = feature_statistics(features)
        if ref_stats[f"mu{key}"].shape != mu.shape:
            raise EvaluatorError(
                f"{ref.path}: mu{key} has {ref_stats[f'mu{key}'].shape[0]} dimensions, the features have {mu.shape[0]}"
            )
        fids[name] = frechet_distance(mu, sigma, ref_stats[f"mu{key}"], ref_stats[f"sigma{key}"])
    kernels = DISTANCE_KERNELS[args.distance_precision]()
    ref_radii = cached_reference_radii(ref_features, kernels, args.distance_precision)
    precision, recall = precision_recall(ref_features.acts[0], sample_features.pool, kernels, ref_radii=ref_radii)
    return {
        "inception_score": inception_score(sample_features.softmax),
        **fids,
        "precision": precision,
        "recall": recall,
        "distance_precision": args.distance_precision,
    }


def build_reference(args: argparse.Namespace) -> None:
    """Write ``args.ref_stats_out``: statistics of all images of ``args.ref_batch``, a subset and its activations."""
    images = open_images(args.ref_batch, args.image_size)
    check_count(images, 2, "FID statistics")
    check_count(images, NEIGHBOURHOOD + 1, PR_PURPOSE)
    keep = subset_indices(images.count, args.ref_max_images)
    graph, network = load_network(args)
    print("computing reference batch activations...")
    try:
        write_npz_stream(args.ref_stats_out, reference_arrays(images, keep, network, graph, args.batch_size))
    except OSError as err:
        raise EvaluatorError(f"{args.ref_stats_out}: cannot write the reference ({err})") from None
    print(f"wrote {args.ref_stats_out}: statistics of {images.count} images, {len(keep)} images for precision/recall")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and cross-check the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Images are uint8 NHWC arrays with 3 channels (0..255). Float arrays are refused rather than "
        "guessing their range: convert samples in [-1, 1] as guided-diffusion's sampling scripts do, "
        f"with {CONVERSION}.",
    )
    parser.add_argument(
        "ref_batch",
        help="reference: .npz with images in arr_0 (and optionally precomputed mu, sigma, mu_s, sigma_s), "
        "or a folder of .png/.jpg images",
    )
    parser.add_argument("sample_batch", nargs="?", help="samples: .npz with images in arr_0, or an image folder")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics to PATH as JSON")
    parser.add_argument("--inception_path", metavar="PB", help="frozen Inception GraphDef to use (no download)")
    parser.add_argument("--inception_url", default=INCEPTION_URL, help="where to download the graph from")
    parser.add_argument(
        "--cache_dir",
        help="folder for the downloaded graph and the reference activation cache (default: "
        "$GUIDED_DIFFUSION_CACHE, else $XDG_CACHE_HOME/guided_diffusion, else ~/.cache/guided_diffusion)",
    )
    parser.add_argument(
        "--no_cache",
        action="store_true",
        help="neither use nor store cached reference activations (by default the activations of a reference "
        ".npz are kept in the cache dir, keyed by a hash of its bytes and of the Inception file)",
    )
    parser.add_argument("--batch_size", type=_positive_int, default=64, help="images per Inception batch")
    parser.add_argument(
        "--distance_precision",
        choices=list(DISTANCE_KERNELS),
        default="float16",
        help="k-NN distances for precision/recall. float16 (default): the original evaluator's float16-first "
        "rule with its TensorFlow ops (each 10000x10000 batch in float16, in float32 if that overflows), which "
        "every published ADM-suite precision/recall used; float16 sums depend on the device, so bit-for-bit "
        "agreement needs the device kind of the run being reproduced (see evaluations/README.md). float32: the "
        "exact definition (equal to a float64 brute force), about 0.02 below the original's numbers; named in "
        "the output when used",
    )
    parser.add_argument(
        "--ref_stats_out",
        metavar="OUT.npz",
        help="instead of evaluating, build a reference from REF_BATCH: mu, sigma, mu_s, sigma_s of all its "
        "images plus up to --ref_max_images of them (a fixed random subset) as arr_0 for precision/recall, "
        "with their activations (acts, acts_spatial) so that evaluating against it needs no reference pass",
    )
    parser.add_argument("--ref_max_images", type=_positive_int, default=10000, help="images kept in arr_0")
    parser.add_argument(
        "--image_size",
        type=_positive_int,
        help="center-crop and resize folder images to this size, as guided-diffusion's data loader does "
        "(needed when they differ in size)",
    )
    args = parser.parse_args(argv)
    if args.ref_stats_out is None and args.sample_batch is None:
        parser.error("a sample batch is required (or pass --ref_stats_out to build a reference)")
    if args.ref_stats_out is not None and args.sample_batch is not None:
        parser.error("--ref_stats_out builds a reference from one input; drop the sample batch")
    if args.ref_max_images <= NEIGHBOURHOOD:
        parser.error(f"--ref_max_images must exceed {NEIGHBOURHOOD} for {PR_PURPOSE}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input, with a one-line error on stderr)."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported later, on first use
    try:
        if args.ref_stats_out is not None:
            build_reference(args)
            return 0
        results = evaluate(args)
        if args.json:
            try:
                with open(args.json, "w") as out:
                    json.dump(results, out, indent=2)
            except OSError as err:
                raise EvaluatorError(f"{args.json}: cannot write JSON ({err.strerror})") from None
    except EvaluatorError as err:
        print(f"evaluator.py: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name != "tensorflow":
            raise
        message = "TensorFlow is required: pip install tensorflow-cpu (or tensorflow)"
        print(f"evaluator.py: error: {message}", file=sys.stderr)
        return 2
    if args.distance_precision != "float16":
        print(f"Precision and recall use exact {args.distance_precision} k-NN distances "
              f"(--distance_precision {args.distance_precision}), not the original evaluator's float16 rule")
    for key, label in RESULTS:
        print(f"{label}:", results[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
