"""A feature space for the embedded digits: a small CNN trained on the real train split, whose 64-value
penultimate layer plays the role Inception's pool_3 plays for ImageNet (Fréchet distance, precision, recall).

Inputs are uint8 NHWC RGB images as the sampling scripts write them (16x16 for the digits). Real and generated
images are reduced the same way (`reduce_images`): the mean of the three channels, scaled to [0, 1], one
16x16 gray image; larger sizes divisible by 16 are area-averaged to 16x16. The real images are rendered exactly
as `datasets/digits.py` exports the training data (8x8 scans upscaled with BICUBIC to 16x16 RGB).

The network is trained at first use (fixed seed, deterministic on CPU, about 10 s on 2 cores) and cached
under the evaluator's cache dir ($GUIDED_DIFFUSION_CACHE, else $XDG_CACHE_HOME/guided_diffusion, else
~/.cache/guided_diffusion) as digits_features/<key>.pt, where the key hashes the training pixels, the labels
and every training setting, so a change to any of them trains a new network.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (HERE, os.path.dirname(HERE)) if p not in sys.path]

from digits import digit_to_pil, load_digit_arrays, split_indices  # noqa: E402

from evaluations.inception_file import default_cache_dir  # noqa: E402
from guided_diffusion.cli.fileio import atomic_write  # noqa: E402

SIZE = 16  # the side the digits are trained and judged at
FEATURES = 64
TRAINING = dict(version=1, seed=0, epochs=15, batch_size=64, lr=3e-3, weight_decay=1e-4, shift=2)


@functools.lru_cache(maxsize=None)
def real_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's digits as uint8 [N, 16, 16, 3] images rendered like the training data, and their labels
    (rendered once per process; read-only)."""
    images, labels = load_digit_arrays()
    indices = split_indices(len(images), split)
    rendered = np.stack([np.asarray(digit_to_pil(images[i], SIZE)) for i in indices])
    labels = labels[indices]
    rendered.flags.writeable = labels.flags.writeable = False
    return rendered, labels


def reduce_images(images: np.ndarray, source: str = "images") -> torch.Tensor:
    """uint8 [N, H, W, 3] (H = W a multiple of 16) -> float32 [N, 1, 16, 16] gray in [0, 1] (see the module doc)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{source}: expected uint8 RGB images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    n, h, w, _ = images.shape
    if h != w or h % SIZE or n == 0:
        raise ValueError(f"{source}: expected square images whose side is a multiple of {SIZE}, got {n} of {h}x{w}")
    gray = torch.from_numpy(images.astype(np.float32)).mean(dim=3) / 255.0
    return F.avg_pool2d(gray[:, None], h // SIZE)


class FeatureNet(nn.Module):
    """Three 3x3 convolutions (32, 32, 64 channels, two 2x2 max-pools) -> 64 features -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURES),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(FEATURES, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (before its ReLU), [N, 64]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _shifted(x: torch.Tensor, generator: torch.Generator, shift: int) -> torch.Tensor:
    """Each image moved by its own random offset of up to `shift` pixels (zero fill): the only augmentation."""
    padded = F.pad(x, (shift,) * 4)
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(SIZE))[:, :, None]  # [N, 16, 1]
    cols = (offsets[:, 1, None] + torch.arange(SIZE))[:, None, :]  # [N, 1, 16]
    return padded[torch.arange(len(x))[:, None, None], 0, rows, cols][:, None]


def train_feature_net(epochs: int = TRAINING["epochs"], progress: bool = False) -> FeatureNet:
    """Train on the 1437-image train split with AdamW and a one-cycle schedule; the same weights on every run
    (fixed seed, deterministic algorithms)."""
    settings = {**TRAINING, "epochs": epochs}
    images, labels = real_images("train")
    x, y = reduce_images(images), torch.tensor(labels)
    generator = torch.Generator().manual_seed(settings["seed"])
    with _deterministic(settings["seed"]):
        net = FeatureNet()
        optimizer = torch.optim.AdamW(net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
        steps = epochs * -(-len(x) // settings["batch_size"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=steps)
        net.train()
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), settings["batch_size"]):
                batch = order[start:start + settings["batch_size"]]
                loss = F.cross_entropy(net(_shifted(x[batch], generator, settings["shift"])), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            if progress:
                print(f"digits features: epoch {epoch + 1}/{epochs}, loss {loss.item():.4f}", file=sys.stderr)
    return net.eval()


@contextlib.contextmanager
def _deterministic(seed: int):
    """Seed torch and use deterministic algorithms inside the block; restore both after."""
    previous, rng = torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.random.set_rng_state(rng)


def accuracy(net: FeatureNet, split: str = "test") -> float:
    """Fraction of the split's real digits the network classifies correctly."""
    images, labels = real_images(split)
    with torch.no_grad():
        predicted = net(reduce_images(images)).argmax(dim=1).numpy()
    return float(np.mean(predicted == labels))


def cache_key() -> str:
    """Hash of the training pixels, labels, settings and architecture: names the cached network."""
    images, labels = real_images("train")
    digest = hashlib.sha256(json.dumps(TRAINING, sort_keys=True).encode())
    digest.update(repr(FeatureNet()).encode())
    digest.update(images.tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def load_feature_net(verbose: bool = True, cache: str | None = None) -> FeatureNet:
    """The cached network (in `cache`, default the evaluator's cache dir), or a newly trained one, then cached
    atomically; prints its test-split accuracy."""
    path = os.path.join(cache or default_cache_dir(), "digits_features", f"{cache_key()}.pt")
    net = FeatureNet()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state_dict"])
        test_accuracy, source = float(saved["test_accuracy"]), f"cached {path}"
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        if os.path.exists(path):
            print(f"digits features: ignoring the unreadable cache entry {path} ({err})", file=sys.stderr)
        net = train_feature_net()
        test_accuracy, source = accuracy(net), "trained now"
        buffer = io.BytesIO()
        torch.save({"state_dict": net.state_dict(), "test_accuracy": test_accuracy}, buffer)
        try:
            atomic_write(path, lambda f: f.write(buffer.getvalue()))
            source += f", cached as {path}"
        except OSError as write_error:
            source += f" (not cached: {write_error})"
    if verbose:
        print(f"digits features: test-split accuracy {100 * test_accuracy:.1f}% (360 images; {source})")
    return net.eval()


def image_features(net: FeatureNet, images: np.ndarray, source: str = "images", batch_size: int = 500) -> np.ndarray:
    """Features [N, 64] (float64) of uint8 NHWC images."""
    x = reduce_images(images, source)
    with torch.no_grad():
        return np.concatenate([net.features(x[start:start + batch_size]).double().numpy()
                               for start in range(0, len(x), batch_size)])
