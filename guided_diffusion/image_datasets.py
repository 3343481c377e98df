"""Image folders as endless, sharded, resumable batches for training.

A folder is searched recursively for jpg/jpeg/png/gif files (any case). With class_cond, a file's class is its
name's prefix before the first "_" (ImageNet's n01440764_10026.JPEG is class n01440764); the sorted class names
map to labels 0..K-1, numeric names by value (2 before 10) ahead of the others; an empty name is refused. The
training scripts save the names in label order as "class_names" in the run's args.json. Each rank reads every
world_size-th file. The order of an epoch and each image's random crop/flip depend only on (seed, epoch, index),
so a run resumed at batch N sees exactly the batches an uninterrupted run would. A zip, or a folder with a
dataset.json, is a dataset in NVlabs EDM2's layout (latents or images, labels from dataset.json): latent_datasets.py.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import dist_util
from guided_diffusion.training.image_modes import to_rgb
from guided_diffusion.training.latent_datasets import (
    BadDataFileError,
    archive_class_names,
    first_readable,
    is_archive_dataset,
    open_archive_dataset,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")


class BadImageError(BadDataFileError):
    """An image file that cannot be decoded."""


def _is_image(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def list_image_files_recursively(data_dir: str) -> list[str]:
    """Every image file below data_dir, sorted (so every rank sees the same list)."""
    if "://" in data_dir:
        import blobfile as bf

        return sorted(p for p in bf.scanglob(os.path.join(data_dir, "**", "*")) if _is_image(p))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir not found: {data_dir}")
    files = []
    for root, dirs, names in os.walk(data_dir, followlinks=True):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if _is_image(n)]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under {data_dir}")
    return files


def class_sort_key(name: str) -> tuple:
    """Numeric class names by value (so "2" comes before "10"), ahead of the other names, which sort as text."""
    return (0, int(name), name) if name.isascii() and name.isdigit() else (1, 0, name)


def class_labels(paths: list[str], data_dir: str, num_classes: int | None = None,
                 class_names: list[str] | None = None) -> tuple[list[int], list[str]]:
    """Labels from the file-name prefixes before the first "_", and the class names in label order (sorted by
    class_sort_key, or ``class_names`` when given: a training set's classes for its validation set)."""
    names = [os.path.basename(p) for p in paths]
    unprefixed = [n for n in names if "_" not in n]
    if unprefixed:
        raise ValueError(
            f"class_cond needs class-prefixed file names like <class>_<name>.png (e.g. n01440764_10026.JPEG), "
            f"but {len(unprefixed)} of {len(names)} files under {data_dir} have no '_' (e.g. {unprefixed[0]}): "
            "rename them (python datasets/prepare_folder.py) or use --class_cond False"
        )
    prefixes = [n.split("_")[0] for n in names]
    if "" in prefixes:
        path = paths[prefixes.index("")]
        raise ValueError(
            f"{path}: empty class name (the file name starts with '_'; the class is the name's part before the "
            f"first '_', e.g. 3_0001.png): rename the file or move it out of {data_dir}"
        )
    if class_names is not None:
        unknown = sorted(set(prefixes) - set(class_names), key=class_sort_key)
        if unknown:
            path = paths[prefixes.index(unknown[0])]
            raise ValueError(f"{path}: class {unknown[0]!r} is not among the {len(class_names)} classes of the "
                             f"training data ({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''})")
    classes = list(class_names) if class_names is not None else sorted(set(prefixes), key=class_sort_key)
    if num_classes is not None and len(classes) > num_classes:
        raise ValueError(
            f"{data_dir} holds {len(classes)} classes ({', '.join(classes[:5])}, ...) but --num_classes is "
            f"{num_classes}: raise --num_classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    return [index[p] for p in prefixes], classes


def class_flag_layer(flags, explicit: set[str], class_cond: bool | None = None) -> dict:
    """The flags the data of a class-conditional run (--data_dir) implies, as a layer for settings.resolve (`flags`
    is not changed): --num_classes, the data's class count unless given in `explicit` (then it must hold them all),
    and class_names, the label order (written to args.json). Resolved before the network is built and args.json
    written, so sampling rebuilds the same label set. class_cond: whether the run is class-conditional (default
    flags.class_cond); an unconditional run implies nothing."""
    if not (flags.class_cond if class_cond is None else class_cond):
        return {}
    given = flags.num_classes if "num_classes" in explicit else None
    if is_archive_dataset(flags.data_dir):
        names = archive_class_names(flags.data_dir, given)
    else:
        names = class_labels(list_image_files_recursively(flags.data_dir), flags.data_dir, given)[1]
    return {"class_names": names} if given is not None else {"num_classes": len(names), "class_names": names}


def _open_rgb(path: str) -> Image.Image:
    if "://" in path:
        import blobfile as bf

        with bf.BlobFile(path, "rb") as f:
            image = Image.open(f)
            image.load()
    else:
        with Image.open(path) as image:
            image.load()
    return to_rgb(image)  # grayscale (16-bit too), RGBA and palette images become RGB


def _box(arr: np.ndarray, top: int, left: int, image_size: int) -> tuple[float, float, float, float]:
    """The crop box (x0, y0, x1, y1) relative to the (resized) image it was cut from."""
    height, width = arr.shape[:2]
    return left / width, top / height, (left + image_size) / width, (top + image_size) / height


def center_crop_arr(pil_image: Image.Image, image_size: int, with_box: bool = False):
    """Halve with a box filter while the short side is >= 2x the target, resize it to the target with BICUBIC,
    and take the central image_size x image_size crop (the original's preprocessing); with_box: (crop, box)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    crop = arr[top:top + image_size, left:left + image_size]
    return (crop, _box(arr, top, left, image_size)) if with_box else crop


def random_crop_arr(pil_image: Image.Image, image_size: int, rng: np.random.Generator,
                    min_crop_frac: float = 0.8, max_crop_frac: float = 1.0, with_box: bool = False):
    """Resize the short side to a random size in [image_size / max_frac, image_size / min_frac], then crop a
    random image_size square (covering min_frac^2 to max_frac^2 of the short side's square); with_box:
    (crop, box)."""
    smaller = int(rng.integers(math.ceil(image_size / max_crop_frac), math.ceil(image_size / min_crop_frac) + 1))
    while min(*pil_image.size) >= 2 * smaller:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = int(rng.integers(arr.shape[0] - image_size + 1))
    left = int(rng.integers(arr.shape[1] - image_size + 1))
    crop = arr[top:top + image_size, left:left + image_size]
    return (crop, _box(arr, top, left, image_size)) if with_box else crop


def parse_random_resize(spec: str) -> tuple[float, float] | None:
    """--random_resize "0.5,1": rescale each source image by a factor drawn uniformly from [lo, hi] ("" = off)."""
    if not spec:
        return None
    try:
        lo, hi = (float(v) for v in spec.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0 < lo <= hi:
        raise ValueError(f"--random_resize {spec!r}: expected lo,hi with 0 < lo <= hi, e.g. 0.5,1")
    return lo, hi


class ImageDataset(Dataset):
    """One rank's shard of an image list; items are addressed by (epoch, index) for deterministic augmentation.

    random_resize (lo, hi) rescales each source by a random factor first; with_control adds each image's control
    record [x0, y0, x1, y1, flip, size] (control.py: crop box relative to the rescaled source, flip flag, the
    rescaled source's short side in pixels) as cond["control"]."""

    def __init__(self, resolution: int, image_paths: list[str], classes: list[int] | None = None,
                 shard: int = 0, num_shards: int = 1, random_crop: bool = False, random_flip: bool = True,
                 seed: int = 0, skip_bad_images: bool = False, random_resize: tuple[float, float] | None = None,
                 min_crop_frac: float = 0.8, with_control: bool = False):
        super().__init__()
        self.resolution = resolution
        self.local_images = image_paths[shard::num_shards]
        self.local_classes = None if classes is None else classes[shard::num_shards]
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.seed = seed
        self.shard = shard
        self.skip_bad_images = skip_bad_images
        self.random_resize = random_resize
        self.min_crop_frac = min_crop_frac
        self.with_control = with_control

    def __len__(self) -> int:
        return len(self.local_images)

    def __getitem__(self, key):
        epoch, idx = key if isinstance(key, tuple) else (0, key)
        return first_readable(lambda i: self._item(epoch, i), idx, len(self.local_images), self.skip_bad_images,
                              "image", BadImageError)

    def _item(self, epoch: int, idx: int):
        path = self.local_images[idx]
        try:
            image = _open_rgb(path)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            hint = "" if self.skip_bad_images else "; pass --skip_bad_images True to skip unreadable files"
            raise BadImageError(f"cannot read image {path}: {e}{hint}") from None
        rng = np.random.default_rng([self.seed, self.shard, epoch, idx])
        if self.random_resize is not None:
            factor = rng.uniform(*self.random_resize)
            image = image.resize(tuple(max(1, round(x * factor)) for x in image.size), resample=Image.BICUBIC)
        if self.random_crop:
            arr, box = random_crop_arr(image, self.resolution, rng, self.min_crop_frac, with_box=True)
        else:
            arr, box = center_crop_arr(image, self.resolution, with_box=True)
        flip = self.random_flip and rng.random() < 0.5
        if flip:
            arr = arr[:, ::-1]
        arr = arr.astype(np.float32) / 127.5 - 1
        out = {}
        if self.local_classes is not None:
            out["y"] = np.array(self.local_classes[idx], dtype=np.int64)
        if self.with_control:
            out["control"] = np.array([*box, float(flip), float(min(image.size))], dtype=np.float32)
        return np.transpose(arr, [2, 0, 1]), out


class EpochBatches:
    """Endless batches of (epoch, index) keys: shuffled per epoch from (seed, epoch), the last partial batch of
    each epoch dropped, starting at global batch `start`."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, start: int = 0):
        self.size, self.batch_size, self.shuffle, self.seed, self.start = size, batch_size, shuffle, seed, start
        self.per_epoch = size // batch_size

    def __iter__(self) -> Iterator[list]:
        batch = self.start
        while True:
            epoch, offset = divmod(batch, self.per_epoch)
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.size) if self.shuffle
                     else np.arange(self.size))
            for b in range(offset, self.per_epoch):
                yield [(epoch, int(i)) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
            batch = (epoch + 1) * self.per_epoch


class ImageBatches:
    """The iterator load_data returns: (images [N, 3, H, W] in [-1, 1], {"y": labels}) forever; with
    low_res_size, cond["low_res"] also holds the images area-downsampled to that size (super-resolution).

    `position` is the number of batches taken since the start of training (pass it back as start_batch).
    """

    def __init__(self, loader: DataLoader, start: int, low_res_size: int | None = None):
        self._it = iter(loader)
        self.position = start
        self.low_res_size = low_res_size
        self.classes: list[str] | None = None

    def __iter__(self):
        return self

    def __next__(self):
        try:
            batch = next(self._it)
        except BadDataFileError as e:  # a worker's error arrives wrapped in its traceback: keep the message
            lines = [line for line in str(e).splitlines() if line.strip()]
            message = lines[-1].split(f"{type(e).__name__}: ", 1)[-1]
        else:
            self.position += 1
            if self.low_res_size:
                images, cond = batch
                cond["low_res"] = F.interpolate(images, self.low_res_size, mode="area")
            return batch
        # Stop the workers now (DataLoader has no public close): left to garbage collection, this took 5 s.
        getattr(self._it, "_shutdown_workers", lambda: None)()
        raise BadImageError(message)


def load_data(*, data_dir: str, batch_size: int, image_size: int, class_cond: bool = False,
              deterministic: bool = False, random_crop: bool = False, random_flip: bool = True,
              skip_bad_images: bool = False, num_classes: int | None = None, seed: int = 0,
              start_batch: int = 0, num_workers: int = 1, random_resize: tuple[float, float] | None = None,
              min_crop_frac: float = 0.8, with_control: bool = False,
              class_names: list[str] | None = None) -> ImageBatches:
    """Endless batches from an image folder, sharded over the ranks of the process group.

    deterministic keeps file order (no shuffling); start_batch resumes the stream after that many batches;
    random_resize, min_crop_frac and with_control as ImageDataset; class_names: the labels' names in order (as
    class_flag_layer recorded them), else sorted from the folder.
    """

    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    if is_archive_dataset(data_dir):  # EDM2's layout: latents or images, labels from dataset.json
        if random_crop or random_resize or with_control:
            raise ValueError(f"--random_crop, --random_resize and --control_cond apply to image folders, but "
                             f"{data_dir} is a dataset in EDM2's layout (stored at its training size)")
        dataset, index = open_archive_dataset(data_dir, image_size, class_cond, num_classes, shard=rank,
                                              num_shards=world, random_flip=random_flip, seed=seed,
                                              skip_bad_images=skip_bad_images)
        paths, class_names = index.files, (class_names or index.class_names) if class_cond else None
    else:
        paths = list_image_files_recursively(data_dir)
        labels, class_names = (class_labels(paths, data_dir, num_classes, class_names) if class_cond
                               else (None, None))
        dataset = ImageDataset(image_size, paths, classes=labels, shard=rank, num_shards=world,
                               random_crop=random_crop, random_flip=random_flip, seed=seed,
                               skip_bad_images=skip_bad_images, random_resize=random_resize,
                               min_crop_frac=min_crop_frac, with_control=with_control)
    if len(dataset) < batch_size:
        raise ValueError(
            f"{data_dir} has {len(paths)} images, {len(dataset)} for each of {world} processes: fewer than "
            f"--batch_size {batch_size}; lower the batch size or add images"
        )
    sampler = EpochBatches(len(dataset), batch_size, shuffle=not deterministic, seed=seed + rank, start=start_batch)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
    batches = ImageBatches(loader, start_batch)
    batches.classes = class_names
    return batches


def load_superres_data(*, data_dir: str, batch_size: int, large_size: int, small_size: int,
                       class_cond: bool = False, **kwargs) -> ImageBatches:
    """load_data at large_size, with cond["low_res"] = the batch area-downsampled to small_size."""
    batches = load_data(data_dir=data_dir, batch_size=batch_size, image_size=large_size, class_cond=class_cond,
                        **kwargs)
    batches.low_res_size = small_size
    return batches
