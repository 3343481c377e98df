"""A folder of PNG/JPEG images read as uint8 NHWC batches, so users can build references from their own data."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from evaluations.errors import EvaluatorError
from guided_diffusion.training.image_modes import to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def center_crop(image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and crop the centre, as guided-diffusion's data loader does."""
    from PIL import Image

    while min(image.size) >= 2 * size:  # halve with a box filter first
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top : top + size, left : left + size]


class FolderImages:
    """The images under a folder (recursively, sorted by path), all of one size or center-cropped to one."""

    def __init__(self, path: str, image_size: int | None = None):
        self.path = str(path)
        self.image_size = image_size
        self.files: list[Path] = sorted(
            file for file in Path(path).rglob("*") if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file()
        )
        if not self.files:
            raise EvaluatorError(f"{self.path}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        if image_size is None:
            width, height = self._check_one_size()
            self.shape = (len(self.files), height, width, 3)
        else:
            self.shape = (len(self.files), image_size, image_size, 3)

    @property
    def count(self) -> int:
        """Number of images in the folder."""
        return self.shape[0]

    def _check_one_size(self) -> tuple:
        from PIL import Image

        sizes = {}
        for file in self.files:
            try:
                with Image.open(file) as image:  # reads the header only
                    sizes.setdefault(image.size, file)
            except OSError as err:
                raise EvaluatorError(f"{file}: cannot read image ({err})") from None
            if len(sizes) > 1:
                (size_a, file_a), (size_b, file_b) = sizes.items()
                raise EvaluatorError(
                    f"{self.path}: images differ in size ({file_a} is {size_a[0]}x{size_a[1]}, {file_b} is "
                    f"{size_b[0]}x{size_b[1]}); pass --image_size N to center-crop them all to NxN"
                )
        return next(iter(sizes))

    def _load(self, file: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(file) as image:
                rgb = to_rgb(image)  # 16-bit grayscale scaled to 8 bits, not clipped to white
        except OSError as err:
            raise EvaluatorError(f"{file}: cannot read image ({err})") from None
        return center_crop(rgb, self.image_size) if self.image_size else np.asarray(rgb)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield uint8 batches of up to ``batch_size`` images, in sorted file order."""
        for start in range(0, self.count, batch_size):
            yield np.stack([self._load(file) for file in self.files[start : start + batch_size]])
