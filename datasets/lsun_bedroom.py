"""
Export an LSUN lmdb database to square PNG files for training.

Each LSUN lmdb entry maps a key to encoded image bytes (JPEG or WebP). Every
decodable image is resized so its short side equals --image_size, center-cropped
to a square and saved as ``out_dir/<prefix>_<index:07d>.png``.

    python datasets/lsun_bedroom.py bedroom_train_lmdb lsun_bedroom_train
"""

import argparse
import io
import os
import sys
from typing import Optional

from PIL import Image
from tqdm import tqdm


class ExportError(Exception):
    """A problem with the command's input that is reported as one line, exit status 2."""


def center_crop_resize(image: Image.Image, image_size: int) -> Image.Image:
    """Resize so the short side is image_size (BOX halving, then BICUBIC) and center-crop a square."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    width, height = (max(image_size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), resample=Image.BICUBIC)
    left = (width - image_size) // 2
    top = (height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def open_lmdb(lmdb_path: str):
    """Open an lmdb folder read-only, turning a missing path or non-lmdb folder into ExportError."""
    try:
        import lmdb
    except ImportError:
        raise ExportError("the lmdb package is required: pip install lmdb") from None
    if not os.path.exists(lmdb_path):
        raise ExportError(f"no such path: {lmdb_path}")
    if not os.path.isfile(os.path.join(lmdb_path, "data.mdb")):
        raise ExportError(f"not an lmdb folder (no data.mdb inside): {lmdb_path}")
    try:
        return lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, max_readers=1)
    except lmdb.Error as exc:
        raise ExportError(f"cannot open lmdb: {exc}") from None


def decode_image(data: bytes, image_size: int) -> Optional[Image.Image]:
    """Decode encoded image bytes into a square image, or None when the bytes are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return center_crop_resize(image, image_size)
    except (OSError, SyntaxError, ValueError):
        return None


def export_lmdb(
    lmdb_path: str,
    out_dir: str,
    prefix: str = "bedroom",
    image_size: int = 256,
    max_images: int = 0,
) -> int:
    """Write the lmdb's images to out_dir as <prefix>_<index:07d>.png and return how many were written."""
    env = open_lmdb(lmdb_path)
    total = env.stat()["entries"]
    if max_images > 0:
        total = min(total, max_images)
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    with env.begin(write=False) as txn, tqdm(total=total, unit="img", desc="export") as progress:
        for key, value in txn.cursor():
            image = decode_image(value, image_size)
            if image is None:
                name = key.decode("utf-8", errors="replace")
                tqdm.write(f"warning: skipping corrupt entry {name}", file=sys.stderr)
                continue
            image.save(os.path.join(out_dir, f"{prefix}_{written:07d}.png"))
            written += 1
            progress.update(1)
            if written == max_images:
                break
    env.close()
    return written


def create_argparser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Export an LSUN lmdb (e.g. bedroom_train_lmdb) to square PNGs "
        "<out_dir>/<prefix>_<index:07d>.png; undecodable entries are skipped with a warning.",
    )
    parser.add_argument("lmdb_path", help="lmdb folder (the one holding data.mdb)")
    parser.add_argument("out_dir", help="folder to write the PNGs to")
    parser.add_argument(
        "--prefix",
        default="bedroom",
        help="file-name prefix, read as the class name by the loader; no '_' (default bedroom)",
    )
    parser.add_argument(
        "--image_size", type=int, default=256, help="output side in pixels (default 256)"
    )
    parser.add_argument(
        "--max_images", type=int, default=0, help="stop after writing N images (0 = all)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the export from the command line, reporting input problems as one line with exit status 2."""
    parser = create_argparser()
    args = parser.parse_args(argv)
    if not args.prefix or "_" in args.prefix:
        parser.error(f"--prefix must be non-empty and contain no '_', got {args.prefix!r}")
    if args.image_size < 1:
        parser.error(f"--image_size must be positive, got {args.image_size}")
    if args.max_images < 0:
        parser.error(f"--max_images must be >= 0, got {args.max_images}")
    try:
        count = export_lmdb(
            args.lmdb_path, args.out_dir, args.prefix, args.image_size, args.max_images
        )
    except ExportError as exc:
        print(f"lsun_bedroom.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {count} images to {args.out_dir}")


if __name__ == "__main__":
    main()
