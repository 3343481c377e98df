"""Decoded images of any PIL mode as 8-bit RGB, without torch (the evaluator's image folders use it too).

PIL's own ``convert("RGB")`` clips the 16-bit grayscale modes ("I;16", and "I" as PNG decoders give it) to
0..255 instead of scaling them, so every pixel brighter than 255/65535 becomes white; those modes are scaled
from 0..65535 to 0..255 here first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: 16-bit grayscale scaled (v * 255 / 65535, rounded), other modes by PIL."""
    if image.mode in WIDE_GRAY_MODES:
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray)  # 2-D uint8: mode "L"
    return image.convert("RGB")
