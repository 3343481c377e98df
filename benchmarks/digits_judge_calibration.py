"""Calibration of the digits judge: its metrics on real digit sets whose quality is known.

    python benchmarks/digits_judge_calibration.py     # prints the markdown table of benchmarks/RESULTS.md

Sets, each judged against the 360-image test split: the 1437-image train split (real digits the judge's
reference has never seen as such), the other half of a random split of the test split, Gaussian noise images,
one digit class only (the train split's 3s), and the test split with additive Gaussian noise at three levels.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "datasets"))

from digits_features import real_images  # noqa: E402
from digits_judge import DigitsJudge  # noqa: E402

NOISE_LEVELS = (96, 128, 192)  # standard deviations in 0..255 pixel units


def noisy(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + rng.normal(0, std, images.shape), 0, 255).round().astype(np.uint8)


def calibration_sets(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Named (images, requested digits or None) sets with known quality."""
    rng = np.random.default_rng(seed)
    train, train_labels = real_images("train")
    test, test_labels = real_images("test")
    half = rng.permutation(len(test))[: len(test) // 2]
    sets = {
        "train split": (train, train_labels),
        "test split, half": (test[half], test_labels[half]),
        "Gaussian noise": (noisy(np.full(test.shape, 128.0), 64, rng), test_labels),
        "one class (3s of train)": (train[train_labels == 3], train_labels[train_labels == 3]),
    }
    for std in NOISE_LEVELS:
        sets[f"test split + noise std {std}"] = (noisy(test.astype(np.float64), std, rng), test_labels)
    return sets


def main() -> None:
    start = time.time()
    judge = DigitsJudge()
    print(f"judge ready in {time.time() - start:.1f} s")
    print("| set | images | FD | precision | recall | recognized | digits present | class entropy (bits) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (images, labels) in calibration_sets().items():
        m = judge.measure(images, labels, name)
        recognized = "-" if m["recognized"] is None else f"{100 * m['recognized']:.1f}%"
        print(f"| {name} | {m['samples']} | {m['fd']:.1f} | {m['precision']:.3f} | {m['recall']:.3f} | "
              f"{recognized} | {m['classes_present']} | {m['class_entropy']:.2f} |")
    print(f"total {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
