"""Judge generated digits: do they show the requested digit, and how close is their distribution to real digits.

    python datasets/digits_judge.py --out_dir DIR NAME=samples.npz [NAME=samples.npz ...] [--plot tradeoff.png]

Each NAME=NPZ is one set of samples (a guidance scale, a sampler, a seed, ...): arr_0 holds uint8 NHWC RGB
images whose side is a multiple of 16 (the scripts write 16x16 for the digits), arr_1 the requested digits
(--unlabelled: sets without them; recognized is then null). For each set:

- recognized: the fraction an RBF SVC trained on all real 8x8 digits reads as the requested digit. Samples are
  turned into 8x8 gray images like the real ones (channel mean, area downsampling), and every image is
  normalized by its own mean and standard deviation, so a colour cast or contrast change does not decide it.
- fd: the Fréchet distance between the features of the samples and of the 360 real test-split digits (the
  64-value penultimate layer of the network in digits_features.py), computed as FID is (evaluations/metrics.py).
  Like FID it is biased upwards for small sets: compare sets of equal size.
- precision, recall: improved precision and recall (Kynkäänniemi et al. 2019, k = 3) against the same test
  split, with the evaluator's implementation (evaluations/metrics.py) on exact float64 distances.
- classes_present: how many digits make up at least 1% of the set (as the SVC reads them), and class_entropy:
  the entropy of that predicted-class histogram in bits (log2 10 = 3.32 for a uniform one).

Writes results.json ({NAME: metrics}), table.md and grid_NAME.png (row k: samples that asked for digit k, or
that read as k when unlabelled) into --out_dir; --plot draws FD, recall and recognized against numeric NAMEs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from digits import load_digit_arrays  # noqa: E402
from digits_features import image_features, load_feature_net, real_images  # noqa: E402

from evaluations.distances import NumpyDistances  # noqa: E402
from evaluations.inception_file import default_cache_dir  # noqa: E402
from evaluations.metrics import (  # noqa: E402
    NEIGHBOURHOOD,
    covariance_problem,
    feature_statistics,
    frechet_distance,
    precision_recall,
    reference_radii,
)
from guided_diffusion.cli.fileio import atomic_write  # noqa: E402

PRESENT_SHARE = 0.01  # a digit counts as present when at least this share of a set reads as it


def normalize(images: np.ndarray) -> np.ndarray:
    """Flatten and standardize each image by its own mean and standard deviation."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / (flat.std(axis=1, keepdims=True) + 1e-6)


def to_digit_scale(samples: np.ndarray) -> np.ndarray:
    """uint8 NHWC samples (side a multiple of 8) -> [N, 8, 8] gray values in 0..255, as load_digit_arrays."""
    gray = samples.astype(np.float64).mean(axis=3)
    n, h, w = gray.shape
    if h % 8 or w % 8:
        raise ValueError(f"samples of {h}x{w} pixels cannot be area-downsampled to 8x8")
    return gray.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))


def train_svc():
    """An RBF SVC fit on all 1797 real 8x8 digits (normalized per image): the judge of which digit is shown."""
    from sklearn.svm import SVC

    images, labels = load_digit_arrays()
    return SVC(gamma="scale", C=10.0).fit(normalize(images), labels)


class DigitsJudge:
    """Every metric of a set of samples against the real test split; build once, measure many sets."""

    def __init__(self, verbose: bool = True, cache: str | None = None):
        self.net = load_feature_net(verbose, cache)
        self.svc = train_svc()
        self.kernels = NumpyDistances()
        real, _ = real_images("test")
        self.ref_features = image_features(self.net, real, "the test split")
        self.ref_stats = feature_statistics(self.ref_features)
        problem = covariance_problem(*self.ref_stats)
        if problem:  # e.g. a damaged cached network: refuse rather than print FD nan or a negative FD
            folder = os.path.join(cache or default_cache_dir(), "digits_features")
            raise ValueError(f"the digits feature network cached in {folder} gives unusable test-split statistics: "
                             f"{problem}; delete the folder to retrain it")
        self.ref_radii = reference_radii(self.ref_features, self.kernels)

    def read_digits(self, samples: np.ndarray) -> np.ndarray:
        """The digit the SVC reads in each uint8 NHWC sample."""
        return self.svc.predict(normalize(to_digit_scale(samples)))

    def measure(self, samples: np.ndarray, requested: np.ndarray | None = None, source: str = "samples") -> dict:
        """recognized (None without requested digits), fd, precision, recall, classes_present, class_entropy."""
        if len(samples) <= NEIGHBOURHOOD:
            raise ValueError(f"{source}: has {len(samples)} images; precision/recall (k={NEIGHBOURHOOD}) needs at "
                             f"least {NEIGHBOURHOOD + 1}")
        features = image_features(self.net, samples, source)
        read = self.read_digits(samples)
        share = np.bincount(read, minlength=10) / len(read)
        nonzero = share[share > 0]
        precision, recall = precision_recall(self.ref_features, features, self.kernels, ref_radii=self.ref_radii)
        try:
            fd = frechet_distance(*feature_statistics(features), *self.ref_stats)
        except ValueError as err:
            raise ValueError(f"{source}: cannot compute FD ({err})") from None
        return {
            "recognized": None if requested is None else float(np.mean(read == requested)),
            "fd": fd,
            "precision": precision,
            "recall": recall,
            "classes_present": int((share >= PRESENT_SHARE).sum()),
            "class_entropy": float((nonzero * np.log2(1 / nonzero)).sum()),
            "samples": len(samples),
        }


def read_set(path: str, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """arr_0 (uint8 NHWC, side a multiple of 16) and arr_1 (digits 0..9, one per image) of a samples npz."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k in ("arr_0", "arr_1")}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as .npz ({err})") from None
    if "arr_0" not in arrays:
        raise ValueError(f"{path}: no arr_0 (the images)")
    images = arrays["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] \
            or images.shape[1] % 16 or images.shape[1] == 0:
        raise ValueError(f"{path}: arr_0 must be uint8 RGB images [N, S, S, 3] with S a multiple of 16, got "
                         f"{images.dtype} {list(images.shape)}")
    labels = arrays.get("arr_1")
    if labels is None:
        if need_labels:
            raise ValueError(f"{path}: no arr_1 (the requested digits), needed for 'recognized'; pass --unlabelled "
                             "to judge sets without them")
        return images, None
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: arr_1 must hold one digit 0..9 per image ({len(images)} integers), got "
                         f"{labels.dtype} {list(labels.shape)}")
    return images, labels.astype(np.int64)


def digit_grid(samples: np.ndarray, rows: np.ndarray, columns: int = 10, zoom: int = 2) -> Image.Image:
    """Row k shows up to `columns` samples whose row label is k (gaps are white)."""
    h, w = samples.shape[1:3]
    canvas = np.full((10 * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, np.uint8)
    for digit in range(10):
        for c, image in enumerate(samples[rows == digit][:columns]):
            top, left = 2 + digit * (h + 2), 2 + c * (w + 2)
            canvas[top:top + h, left:left + w] = image
    image = Image.fromarray(canvas)
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def judge(paths: dict[str, str], out_dir: str, need_labels: bool = True, judge_with: DigitsJudge | None = None) -> dict:
    """Metrics of every named set; writes results.json, table.md and one grid per set into out_dir."""
    sets = {name: read_set(path, need_labels) for name, path in paths.items()}  # check every input first
    judge_with = judge_with or DigitsJudge()
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for name, (images, labels) in sets.items():
        results[name] = {**judge_with.measure(images, labels, paths[name]), "npz": paths[name],
                         "grid": os.path.join(out_dir, f"grid_{name}.png")}
        rows = labels if labels is not None else judge_with.read_digits(images)
        atomic_write(results[name]["grid"], lambda f, im=digit_grid(images, rows): im.save(f, format="PNG"))
    text = json.dumps(results, indent=1).encode()
    atomic_write(os.path.join(out_dir, "results.json"), lambda f: f.write(text))
    return results


def format_table(results: dict, column: str = "set") -> str:
    """A markdown table of the results, one row per set."""
    lines = [f"| {column} | recognized as requested | FD | precision | recall | digits present | samples |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        recognized = "-" if r["recognized"] is None else f"{100 * r['recognized']:.1f}%"
        lines.append(f"| {name} | {recognized} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['classes_present']} | {r['samples']} |")
    return "\n".join(lines)


def plot_tradeoff(results: dict, path: str, xlabel: str) -> None:
    """FD and recall (left axis) and recognized fraction (right axis) against the numeric set names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [float(name) for name in results]
    fig, left = plt.subplots(figsize=(6, 4), dpi=120)
    left.plot(x, [r["fd"] for r in results.values()], "o-", color="tab:red", label="FD (lower is better)")
    left.set_xlabel(xlabel)
    left.set_ylabel("Fréchet distance", color="tab:red")
    if min(x) >= 0 and max(x) > 8 * max(min(x), 1):  # spread out the small values
        left.set_xscale("symlog", linthresh=1, linscale=1)
    left.set_xticks(x, list(results), minor=False)
    left.minorticks_off()
    right = left.twinx()
    right.plot(x, [r["recall"] for r in results.values()], "s--", color="tab:blue", label="recall")
    right.plot(x, [r["precision"] for r in results.values()], "^--", color="tab:green", label="precision")
    if all(r["recognized"] is not None for r in results.values()):
        right.plot(x, [r["recognized"] for r in results.values()], "d:", color="black", label="recognized")
    right.set_ylim(0, 1.02)
    right.set_ylabel("fraction")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """NAME=NPZ arguments -> {name: path}, in order; names unique, files present."""
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path or "/" in name:
            raise ValueError(f"expected NAME=NPZ (a name without '/'), got {pair!r}")
        if name in out:
            raise ValueError(f"the set name {name!r} is given twice")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder for results.json, table.md and the grids")
    parser.add_argument("--unlabelled", action="store_true", help="accept sets without arr_1 (recognized = null)")
    parser.add_argument("--column", default="set", help="header of the table's first column (default: set)")
    parser.add_argument("--plot", metavar="PNG", help="plot FD, precision, recall and recognized against the "
                        "set names, which must then be numbers (e.g. guidance scales)")
    parser.add_argument("pairs", nargs="+", metavar="NAME=NPZ")
    args = parser.parse_args(argv)
    try:
        paths = parse_pairs(args.pairs)
        if args.plot and not all(_is_number(name) for name in paths):
            raise ValueError(f"--plot needs numeric set names, got {', '.join(paths)}")
        results = judge(paths, args.out_dir, need_labels=not args.unlabelled)
        table = format_table(results, args.column)
        atomic_write(os.path.join(args.out_dir, "table.md"), lambda f: f.write((table + "\n").encode()))
        if args.plot:
            plot_tradeoff(results, args.plot, args.column)
    except (ValueError, FileNotFoundError) as err:
        print(f"digits_judge.py: error: {err}", file=sys.stderr)
        return 2
    print(table)
    return 0


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
