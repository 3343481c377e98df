"""
Export scikit-learn's embedded handwritten digits as class-prefixed RGB PNGs.

The 1797 real 8x8 digit scans ship inside scikit-learn, so this gives a tiny
class-conditional dataset with no download: files are named
``<digit>_<index:05d>.png`` so the training loader reads the digit as the class.

    python datasets/digits.py --out_dir digits_train --split train
"""

import argparse
import os
from typing import Tuple

import numpy as np
from PIL import Image

SPLITS = ("all", "train", "test")
TEST_EVERY = 5  # dataset index i is in the test split when i % TEST_EVERY == 0
MAX_VALUE = 16  # scikit-learn digit pixels range over 0..16


def load_digit_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """Return the digits as uint8 images [N, 8, 8] (0..255, white on black) and int labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / MAX_VALUE)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_indices(num_images: int, split: str = "all") -> np.ndarray:
    """Return the dataset indices in a split; every TEST_EVERY-th index is test, the rest train."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    indices = np.arange(num_images)
    if split == "all":
        return indices
    is_test = indices % TEST_EVERY == 0
    return indices[is_test] if split == "test" else indices[~is_test]


def digit_to_pil(image: np.ndarray, image_size: int) -> Image.Image:
    """Upscale one 8x8 uint8 digit with BICUBIC (crisper strokes than BILINEAR) to an RGB image."""
    gray = Image.fromarray(image)
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), resample=Image.BICUBIC)
    return gray.convert("RGB")


def export_digits(
    out_dir: str, image_size: int = 16, split: str = "all", limit: int = 0
) -> int:
    """Write the split's digits to out_dir as <digit>_<index:05d>.png and return how many were written."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    images, labels = load_digit_arrays()
    indices = split_indices(len(images), split)
    if limit > 0:
        indices = indices[:limit]
    os.makedirs(out_dir, exist_ok=True)
    for i in indices:
        path = os.path.join(out_dir, f"{labels[i]}_{i:05d}.png")
        digit_to_pil(images[i], image_size).save(path)
    return len(indices)


def create_argparser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Export scikit-learn's 1797 handwritten 8x8 digits as class-prefixed "
        "RGB PNGs (<digit>_<index:05d>.png, white digit on black).",
    )
    parser.add_argument("--out_dir", required=True, help="folder to write the PNGs to")
    parser.add_argument(
        "--image_size", type=int, default=16, help="output side in pixels, >= 8 (default 16)"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="all",
        help=f"'test' is every {TEST_EVERY}th image (index %% {TEST_EVERY} == 0, 360 images), "
        "'train' the other 1437 (default all)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="export at most N images of the split (0 = all)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the export from the command line."""
    parser = create_argparser()
    args = parser.parse_args(argv)
    if args.image_size < 8:
        parser.error(f"--image_size must be at least 8, got {args.image_size}")
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    count = export_digits(args.out_dir, args.image_size, args.split, args.limit)
    print(f"wrote {count} digit images ({args.split}, {args.image_size}x{args.image_size}) to {args.out_dir}")


if __name__ == "__main__":
    main()
