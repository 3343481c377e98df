"""Inception Score, FID, sFID, precision and recall (and EDM2's FD_DINOv2) of a sample batch against a reference.

Run from the project root:

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json metrics.json]
    python evaluations/evaluator.py --ref_stats_out MY_REF.npz IMAGES.npz|IMAGE_FOLDER
    python evaluations/evaluator.py --metrics fid,fd_dinov2 REF.pkl SAMPLE.npz|IMAGE_FOLDER
    python evaluations/evaluator.py --ref_stats_out MY_REF.pkl --metrics fd_dinov2 IMAGES.npz|IMAGE_FOLDER
    python evaluations/evaluator.py --metrics fid,fd_dinov2 REF.pkl RUN_FOLDER --seeds 0-49999 50000-99999 ...

Same graph, tensors and metric definitions as guided-diffusion's ``evaluations/evaluator.py``,
with streamed npz reading, one feature pass per batch and eigenvalue-based Fréchet distances;
FD_DINOv2 and the ``.pkl`` statistics as NVlabs' EDM2 ``calculate_metrics.py``.  Samples may be a sampling run's
output folder; 50,000 images are expected (``--num_images``), and ``--seeds`` evaluates several seed sets of a run
and reports their minimum and mean (``run_samples.py``).
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
from evaluations.edm2_metrics import RESIZE_MODES, dinov2_network, dinov2_statistics, fd, reference_statistics_file
from evaluations.errors import EvaluatorError
from evaluations.image_folder import FolderImages
from evaluations.inception import InceptionNetwork
from evaluations.inception_file import INCEPTION_URL, InceptionGraph, default_cache_dir, load_graph
from evaluations.metrics import (
    NEIGHBOURHOOD,
    DistanceKernels,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from evaluations.npz_io import CONVERSION, NpzImages, ReferenceFile, read_reference
from evaluations.run_samples import PUBLISHED_COUNT, SampleSet, open_samples, sample_sets, seed_set_report
from evaluations.seed_sets import parse_seed_sets
from evaluations.stats_files import STATS_METRICS, Stats, write_edm2_pkl
from evaluations.reference import (
    Images,
    cached_reference_radii,
    reference_arrays,
    reference_features,
    subset_indices,
)
from guided_diffusion.cli.fileio import write_npz_stream

RESULTS = (
    ("inception_score", "Inception Score"),
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("fd_dinov2", "FD_DINOv2"),
)
METRICS = ("is", "fid", "sfid", "pr", "fd_dinov2")  # --metrics names
ADM_SUITE = ("is", "fid", "sfid", "pr")
INCEPTION_METRICS = frozenset(ADM_SUITE)
PR_PURPOSE = f"precision/recall (k={NEIGHBOURHOOD} nearest neighbours)"
DISTANCE_KERNELS = {"float32": PairwiseDistances, "float16": Float16FirstDistances}  # the TF backend's


def distance_kernels(backend: str, precision: str) -> DistanceKernels:
    """The k-NN distance kernels of a backend: TensorFlow's ops for ``tf``; for ``torch`` the same rules in PyTorch
    (imported only then), so that backend runs without TensorFlow."""
    if backend == "torch":
        from evaluations.torch_distances import TorchFloat16FirstDistances, TorchPairwiseDistances

        return {"float32": TorchPairwiseDistances, "float16": TorchFloat16FirstDistances}[precision]()
    return DISTANCE_KERNELS[precision]()


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
    """The Inception graph (given, cached or downloaded) imported into a TensorFlow session, or with
    ``--backend torch`` converted to a PyTorch module (imported only then)."""
    graph = load_graph(args.inception_path, args.inception_url, args.cache_dir, args.backend)
    if args.backend == "torch":
        from evaluations.inception_torch import TorchInceptionNetwork

        return graph, TorchInceptionNetwork(graph, Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    return graph, InceptionNetwork(graph.graph_def, graph.source)


def _needs_reference_batch(metrics: tuple[str, ...], ref_path: str, stats: Stats) -> None:
    """Refuse metrics that a statistics-only reference cannot give."""
    missing = [m for m in metrics if m in ("sfid", "pr") or (m in STATS_METRICS and m not in stats)]
    if missing:
        held = ", ".join(stats)
        raise EvaluatorError(
            f"{ref_path}: holds only {held} statistics; --metrics {','.join(missing)} needs a reference with "
            f"{'those statistics or ' if set(missing) <= set(STATS_METRICS) else ''}images (an ADM .npz batch or an "
            "image folder)"
        )


class Evaluation:
    """The reference side of an evaluation, prepared once (networks loaded, the reference's features or statistics
    read or computed), then any number of sample sets measured against it: ``--seeds`` costs one reference pass,
    not one per set."""

    def __init__(self, args: argparse.Namespace):
        """Open and check the reference; nothing is computed yet (see ``prepare``)."""
        self.args = args
        self.ref_stats_file = reference_statistics_file(args.ref_batch)
        if self.ref_stats_file is not None:
            if args.image_size is not None:
                raise EvaluatorError(f"{args.ref_batch}: --image_size applies to image folders only")
            _needs_reference_batch(args.metrics, args.ref_batch, self.ref_stats_file)
        self.ref = None if self.ref_stats_file is not None else open_images(args.ref_batch, args.image_size)
        self.ref_features = self.ref_radii = self.dinov2 = self.dinov2_ref = None

    def check(self, images: Images | None) -> None:
        """Refuse a reference or sample set with too few images for the metrics."""
        if images is not None:
            check_count(images, 2, "FID statistics")
            if "pr" in self.args.metrics:
                check_count(images, NEIGHBOURHOOD + 1, PR_PURPOSE)

    def prepare(self) -> None:
        """Load the networks and compute (or read) what the metrics need of the reference, once."""
        args, metrics, ref = self.args, self.args.metrics, self.ref
        if INCEPTION_METRICS & set(metrics):
            reference = read_reference(ref.path) if isinstance(ref, NpzImages) else ReferenceFile()
            self.graph, self.network = load_network(args)
            if ref is not None and {"fid", "sfid", "pr"} & set(metrics):
                cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
                self.ref_features = reference_features(ref, reference, self.network, self.graph, args.batch_size,
                                                       cache_dir)
        if "fd_dinov2" in metrics:
            self.dinov2 = dinov2_network(args)
            ref_stats = self.ref_stats_file["fd_dinov2"] if self.ref_stats_file else None
            if ref_stats is not None and ref_stats[0].shape != (self.dinov2.dim,):
                raise EvaluatorError(f"{args.ref_batch}: fd_dinov2 mu has {ref_stats[0].shape[0]} dimensions, the "
                                     f"DINOv2 features have {self.dinov2.dim}")
            if ref_stats is None:
                ref_stats = dinov2_statistics(self.dinov2, ref, args.batch_size, "reference")
            self.dinov2_ref = ref_stats

    def measure(self, sample: Images) -> dict[str, float | str]:
        """The chosen metrics of ``sample`` against the prepared reference (and the k-NN distance precision when
        precision/recall are among them)."""
        results: dict[str, float | str] = {}
        if INCEPTION_METRICS & set(self.args.metrics):
            results.update(self.inception_metrics(sample))
        if "fd_dinov2" in self.args.metrics:
            sample_stats = dinov2_statistics(self.dinov2, sample, self.args.batch_size, "sample")
            results["fd_dinov2"] = fd("FD_DINOv2", sample_stats, self.dinov2_ref, sample.path, self.args.ref_batch)
        return results

    def inception_metrics(self, sample: Images) -> dict[str, float | str]:
        """The ADM-suite metrics among ``args.metrics``."""
        args, metrics, ref_features = self.args, self.args.metrics, self.ref_features
        print("computing sample batch activations...")
        sample_features = self.network.features(
            sample.batches(args.batch_size), sample.count, softmax="is" in metrics, desc="sample"
        )

        print("computing evaluations...")
        results: dict[str, float | str] = {}
        if "is" in metrics:
            results["inception_score"] = inception_score(sample_features.softmax)
        for name, key, features in (("fid", "", sample_features.pool), ("sfid", "_s", sample_features.spatial)):
            if name not in metrics:
                continue
            if ref_features is None:  # a statistics file (only FID statistics are possible there)
                ref_mu, ref_sigma = self.ref_stats_file["fid"]
            else:
                ref_mu, ref_sigma = ref_features.stats[f"mu{key}"], ref_features.stats[f"sigma{key}"]
            mu, sigma = feature_statistics(features)
            if ref_mu.shape != mu.shape:
                raise EvaluatorError(
                    f"{args.ref_batch}: mu{key} has {ref_mu.shape[0]} dimensions, the features have {mu.shape[0]}"
                )
            try:
                results[name] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
            except ValueError as err:  # e.g. non-finite features from a broken graph
                raise EvaluatorError(
                    f"{sample.path} against {args.ref_batch}: cannot compute {name.upper()} ({err})"
                ) from None
        if "pr" in metrics:
            kernels = distance_kernels(args.backend, args.distance_precision)
            if self.ref_radii is None:
                self.ref_radii = cached_reference_radii(ref_features, kernels, args.distance_precision)
            precision, recall = precision_recall(
                ref_features.acts[0], sample_features.pool, kernels, ref_radii=self.ref_radii
            )
            results.update(precision=precision, recall=recall, distance_precision=args.distance_precision)
        return results


def evaluate(args: argparse.Namespace) -> tuple[list[SampleSet], list[dict[str, float | str]]]:
    """The sample sets that ``args`` ask for (the whole sample batch, its first ``--num_images`` images, or one set
    per ``--seeds`` argument) and the metrics of each against ``args.ref_batch``. Every input is checked before
    the first feature pass; warnings about short sets come after the reference is ready, before the samples."""
    evaluation = Evaluation(args)
    sets = sample_sets(open_samples(args.sample_batch, args.image_size), args.seed_sets, args.num_images)
    for images in (evaluation.ref, *(sample_set.images for sample_set in sets)):
        evaluation.check(images)
    evaluation.prepare()
    for sample_set in sets:
        if sample_set.warning:
            print(sample_set.warning, file=sys.stderr)
    results = []
    for sample_set in sets:
        if sample_set.seed_set is not None:
            print(f"seed set {sample_set.seed_set.text}: {sample_set.images.count} images")
        results.append(evaluation.measure(sample_set.images))
    return sets, results


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


def build_edm2_statistics(args: argparse.Namespace) -> None:
    """Write ``args.ref_stats_out`` as EDM2's ``.pkl``: FID (Inception pool_3) and/or FD_DINOv2 statistics of all
    images of ``args.ref_batch``, as ``args.metrics`` says."""
    images = open_images(args.ref_batch, args.image_size)
    check_count(images, 2, "FID statistics")
    stats: Stats = {}
    if "fid" in args.metrics:
        _, network = load_network(args)
        print("computing reference batch activations...")
        features = network.features(images.batches(args.batch_size), images.count, softmax=False, desc="reference")
        stats["fid"] = feature_statistics(features.pool)
    if "fd_dinov2" in args.metrics:
        stats["fd_dinov2"] = dinov2_statistics(dinov2_network(args), images, args.batch_size, "reference")
    write_edm2_pkl(args.ref_stats_out, stats, images.count)
    print(f"wrote {args.ref_stats_out}: {', '.join(stats)} statistics of {images.count} images")


def check_ref_stats_out(args: argparse.Namespace) -> None:
    """Refuse a ``--ref_stats_out`` that is neither an ADM ``.npz`` nor an EDM2 ``.pkl``, or metrics it cannot
    hold."""
    out, extension = args.ref_stats_out, os.path.splitext(args.ref_stats_out)[1].lower()
    if extension == ".pkl":
        other = [m for m in args.metrics if m not in STATS_METRICS]
        if other:
            raise EvaluatorError(f"--ref_stats_out {out}: an EDM2 .pkl holds fid and fd_dinov2 statistics only, "
                                 f"not {','.join(other)}; use a .npz for the ADM suite")
    elif extension == ".npz":
        if "fd_dinov2" in args.metrics:
            raise EvaluatorError(f"--ref_stats_out {out}: FD_DINOv2 statistics are written to an EDM2 .pkl, not "
                                 "an ADM reference .npz")
    else:
        raise EvaluatorError(f"--ref_stats_out {out}: expected a .npz (ADM reference batch) or .pkl (EDM2 "
                             "statistics) file name")


def check_sample_choice(args: argparse.Namespace) -> None:
    """Resolve ``--num_images`` (``args.num_images``: an int, or None for all images) and ``--seeds``
    (``args.seed_sets``), with a one-line error for values that choose nothing."""
    if args.ref_stats_out is not None:
        given = [flag for flag, value in (("--num_images", args.num_images), ("--seeds", args.seeds)) if value]
        if given:
            verb = "choose" if len(given) > 1 else "chooses"
            raise EvaluatorError(f"{' and '.join(given)} {verb} sample images; --ref_stats_out uses every image of "
                                 "the reference")
        return
    text = str(PUBLISHED_COUNT) if args.num_images is None else args.num_images.strip()
    if text == "all":
        args.num_images = None
    elif text.isdigit() and int(text) > 0:
        args.num_images = int(text)
    else:
        raise EvaluatorError(f"--num_images {args.num_images}: expected a positive number of images or 'all'")
    args.seed_sets = parse_seed_sets(args.seeds) if args.seeds is not None else None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {','.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(METRICS)}")
    return names


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
        nargs="?",  # required; checked below, with a hint when --seeds took it
        help="reference: .npz with images in arr_0 (and optionally precomputed mu, sigma, mu_s, sigma_s), "
        "a folder of .png/.jpg images, EDM2's statistics .pkl (fid, fd_dinov2) or EDM's statistics .npz (mu, "
        "sigma: FID only)",
    )
    parser.add_argument("sample_batch", nargs="?", help="samples: a sampling run's output folder (its "
                        "samples_*.npz), an .npz with images in arr_0, or an image folder")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics to PATH as JSON")
    parser.add_argument(
        "--num_images",
        metavar="N|all",
        help=f"sample images per evaluation (default {PUBLISHED_COUNT}, as published FIDs): more are cut to the "
        "first N (said on stdout), fewer are evaluated with a warning that the numbers are not comparable; all: "
        "every image, as the original evaluator",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        action="extend",
        metavar="LIST",
        help="evaluate several seed sets of a sampling run, as EDM2 does (e.g. --seeds 0-49999 50000-99999 "
        "100000-149999; each set in EDM2's syntax, such as 1,2,5-10) and report each set's metrics and their "
        "minimum and mean; the seeds come from the run's record beside its npz, or from image names (000123.png)",
    )
    parser.add_argument(
        "--metrics",
        type=_metric_list,
        metavar="LIST",
        help=f"comma-separated metrics among {', '.join(METRICS)} (is: Inception Score, pr: precision and recall, "
        "fd_dinov2: EDM2's Frechet distance of DINOv2 ViT-L/14 features); default: is,fid,sfid,pr, or fid,fd_dinov2 "
        "with --ref_stats_out X.pkl",
    )
    parser.add_argument(
        "--dinov2_resize",
        choices=RESIZE_MODES,
        default="torch",
        help="FD_DINOv2 resize to 224x224, as EDM2's: torch (default, bicubic with antialias) or pil (PIL bicubic, "
        "as dgm-eval)",
    )
    parser.add_argument(
        "--dinov2_weights",
        metavar="PTH",
        help="state dict of the official dinov2_vitl14 to use (no download); by default "
        "dinov2_vitl14_pretrain.pth is downloaded once into the cache dir",
    )
    parser.add_argument("--inception_path", metavar="PB", help="frozen Inception GraphDef to use (no download)")
    parser.add_argument("--inception_url", default=INCEPTION_URL, help="where to download the graph from")
    parser.add_argument(
        "--backend",
        choices=("tf", "torch"),
        default="tf",
        help="what runs the Inception graph: tf (default, TensorFlow, as the original) or torch (the same graph "
        "converted to PyTorch, on CUDA when available, without TensorFlow; equal to tf within float32 rounding on "
        "the stand-in graph, see evaluations/README.md)",
    )
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
        "rule (each 10000x10000 batch in float16, in float32 if that overflows; TensorFlow's ops, or with --backend "
        "torch the same ops in PyTorch), which "
        "every published ADM-suite precision/recall used; float16 sums depend on the device, so bit-for-bit "
        "agreement needs the device kind of the run being reproduced (see evaluations/README.md). float32: the "
        "exact definition (equal to a float64 brute force), about 0.02 below the original's numbers; named in "
        "the output when used",
    )
    parser.add_argument(
        "--ref_stats_out",
        metavar="OUT.npz|OUT.pkl",
        help="instead of evaluating, build a reference from REF_BATCH. OUT.npz: mu, sigma, mu_s, sigma_s of all "
        "its images plus up to --ref_max_images of them (a fixed random subset) as arr_0 for precision/recall, "
        "with their activations (acts, acts_spatial) so that evaluating against it needs no reference pass. "
        "OUT.pkl: EDM2's statistics file with the fid and/or fd_dinov2 statistics that --metrics names",
    )
    parser.add_argument("--ref_max_images", type=_positive_int, default=10000, help="images kept in arr_0")
    parser.add_argument(
        "--image_size",
        type=_positive_int,
        help="center-crop and resize folder images to this size, as guided-diffusion's data loader does "
        "(needed when they differ in size)",
    )
    args = parser.parse_args(argv)
    hint = (" (--seeds takes every list that follows it: put the batches before --seeds, or end its lists with "
            "another flag)") if args.seeds else ""
    if args.ref_batch is None:
        parser.error(f"a reference batch is required{hint}")
    if args.ref_stats_out is None and args.sample_batch is None:
        parser.error(f"a sample batch is required (or pass --ref_stats_out to build a reference){hint}")
    if args.ref_stats_out is not None and args.sample_batch is not None:
        parser.error("--ref_stats_out builds a reference from one input; drop the sample batch")
    if args.ref_max_images <= NEIGHBOURHOOD:
        parser.error(f"--ref_max_images must exceed {NEIGHBOURHOOD} for {PR_PURPOSE}")
    if args.metrics is None:
        edm2_out = args.ref_stats_out is not None and args.ref_stats_out.lower().endswith(".pkl")
        args.metrics = STATS_METRICS if edm2_out else ADM_SUITE
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad input, with a one-line error on stderr)."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported later, on first use
    try:
        check_sample_choice(args)
        if args.ref_stats_out is not None:
            check_ref_stats_out(args)
            if args.ref_stats_out.lower().endswith(".pkl"):
                build_edm2_statistics(args)
            else:
                build_reference(args)
            return 0
        sets, results = evaluate(args)
        lines, report = ([], results[0]) if args.seed_sets is None else seed_set_report(sets, results, RESULTS)
        if args.json:
            try:
                with open(args.json, "w") as out:
                    json.dump(report, out, indent=2)
            except OSError as err:
                raise EvaluatorError(f"{args.json}: cannot write JSON ({err.strerror})") from None
    except EvaluatorError as err:
        print(f"evaluator.py: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name not in ("tensorflow", "torch"):
            raise
        message = "TensorFlow is required: pip install tensorflow-cpu (or tensorflow)"
        if err.name == "torch":
            message = "PyTorch is required for fd_dinov2 and --backend torch: pip install torch"
        print(f"evaluator.py: error: {message}", file=sys.stderr)
        return 2
    if "pr" in args.metrics and args.distance_precision != "float16":
        print(f"Precision and recall use exact {args.distance_precision} k-NN distances "
              f"(--distance_precision {args.distance_precision}), not the original evaluator's float16 rule")
    for line in lines or [f"{label}: {report[key]}" for key, label in RESULTS if key in report]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
