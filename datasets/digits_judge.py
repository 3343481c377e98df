"""Judge generated digits with an independent classifier: a scikit-learn SVC trained on the real digits.

    python datasets/digits_judge.py --out_dir DIR 0=samples_a.npz 1=samples_b.npz 3=samples_c.npz ...

Each argument is GUIDANCE_SCALE=NPZ, where the npz holds arr_0 (uint8 NHWC samples) and arr_1 (the requested
digits). Samples are turned into 8x8 gray images like the real ones (channel mean, 2x2 area downsampling to
8x8), and every image (real or generated) is normalized by its own mean and standard deviation
before the SVC sees it, so a colour cast or a contrast change does not decide the class. Prints a table
(scale -> fraction recognized as the requested digit), writes results.json, table.md and one PNG grid per scale
(row k = samples that asked for digit k).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def _digits_module():
    spec = importlib.util.spec_from_file_location("digits_export", os.path.join(HERE, "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalize(images: np.ndarray) -> np.ndarray:
    """Flatten and standardize each image by its own mean and standard deviation."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / (flat.std(axis=1, keepdims=True) + 1e-6)


def to_digit_scale(samples: np.ndarray) -> np.ndarray:
    """uint8 NHWC samples (any size divisible by 8) -> [N, 8, 8] gray values in 0..255, as load_digit_arrays."""
    gray = samples.astype(np.float64).mean(axis=3)
    n, h, w = gray.shape
    if h % 8 or w % 8:
        raise ValueError(f"samples of {h}x{w} pixels cannot be area-downsampled to 8x8")
    return gray.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))


def train_judge():
    """An RBF SVC fit on all 1797 real 8x8 digits (normalized per image)."""
    from sklearn.svm import SVC

    images, labels = _digits_module().load_digit_arrays()
    return SVC(gamma="scale", C=10.0).fit(normalize(images), labels)


def digit_grid(samples: np.ndarray, labels: np.ndarray, columns: int = 10, zoom: int = 2) -> Image.Image:
    """Row k shows up to `columns` samples that asked for digit k (gaps are white)."""
    h, w = samples.shape[1:3]
    canvas = np.full((10 * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, np.uint8)
    for digit in range(10):
        for c, image in enumerate(samples[labels == digit][:columns]):
            top, left = 2 + digit * (h + 2), 2 + c * (w + 2)
            canvas[top:top + h, left:left + w] = image
    image = Image.fromarray(canvas)
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def judge(paths: dict, out_dir: str) -> list[dict]:
    """Accuracy per guidance scale; writes grids, results.json and table.md into out_dir."""
    model = train_judge()
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for scale, path in paths.items():
        with np.load(path) as data:
            samples, requested = data["arr_0"], data["arr_1"]
        predicted = model.predict(normalize(to_digit_scale(samples)))
        per_digit = [float(np.mean(predicted[requested == d] == d)) if (requested == d).any() else None
                     for d in range(10)]
        grid_path = os.path.join(out_dir, f"grid_scale{scale}.png")
        digit_grid(samples, requested).save(grid_path)
        rows.append({"scale": scale, "accuracy": float(np.mean(predicted == requested)), "samples": len(samples),
                     "per_digit": per_digit, "grid": grid_path, "npz": path})
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = format_table(rows)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| guidance scale | recognized as the requested digit | samples |", "|---|---|---|"]
    lines += [f"| {r['scale']:g} | {100 * r['accuracy']:.1f}% | {r['samples']} |" for r in rows]
    return "\n".join(lines)


def parse_pairs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        scale, sep, path = pair.partition("=")
        try:
            value = float(scale)
        except ValueError:
            value = None
        if not sep or value is None:
            raise ValueError(f"expected SCALE=NPZ, got {pair!r}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"samples not found: {path}")
        out[value] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("pairs", nargs="+", metavar="SCALE=NPZ")
    args = parser.parse_args()
    try:
        rows = judge(parse_pairs(args.pairs), args.out_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"digits_judge.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(rows))


if __name__ == "__main__":
    main()
