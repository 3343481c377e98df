"""Datasets in NVlabs EDM2's layout: a folder or a zip of `.npy` latents or of images, with labels in `dataset.json`.

EDM2's `dataset_tool.py` writes `00000/img00000000.png` (pixels) or `00000/img-mean-std-00000000.npy` (the raw
latents of its VAE encoder: posterior mean and standard deviation, 8 float32 channels) and a `dataset.json` at
the root, `{"labels": [[name, label], ...]}` (or `"labels": null`). `datasets/encode_latents.py` writes the same
layout (and adds `"class_names"`). This module reads it for training: every supported file, sorted by name as
EDM2 does, with its integer label; each rank reads every world_size-th file, and an item depends only on
(seed, epoch, index), as for image folders (image_datasets.py). Latents are returned as stored (the encoder turns
them into the network's input per batch; they are never flipped, since a flipped latent is not the latent of the
flipped image); pixels as float32 in [-1, 1], flipped at random with random_flip.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from guided_diffusion.training.image_modes import to_rgb

LABELS_FILE = "dataset.json"
PIXEL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif")


class BadDataFileError(ValueError):
    """A training file that cannot be read or does not fit the dataset (shape, size); its message names it."""


def first_readable(item: Callable[[int], Any], idx: int, count: int, skip_bad: bool, what: str,
                   error: type[BadDataFileError] = BadDataFileError) -> Any:
    """item(i) for the first of this rank's `count` files from idx on (cyclically) that reads: a bad file raises
    its BadDataFileError, or with skip_bad is skipped with a warning naming it; none readable raises `error`."""
    for attempt in range(count):
        try:
            return item((idx + attempt) % count)
        except BadDataFileError as e:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {e}")
    raise error(f"no readable {what} among the {count} files of this rank")


def is_archive_dataset(path: str) -> bool:
    """Whether `path` is a dataset in EDM2's layout: a zip file, or a folder with dataset.json at its root."""
    if "://" in path:
        return False
    if os.path.isfile(path):
        return path.lower().endswith(".zip")
    return os.path.isfile(os.path.join(path, LABELS_FILE))


@dataclass
class ArchiveIndex:
    """What a dataset holds: its data files (sorted names relative to its root), their integer labels (None when
    dataset.json has none), the class names in label order, the kind of its files ("latent" or "pixel") and the
    VAE its dataset.json names (encode_latents.py writes it; None for EDM2's own datasets)."""

    path: str
    files: list[str]
    labels: list[int] | None
    class_names: list[str] | None
    kind: str
    vae: str | None = None


def _kind(name: str) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    return "latent" if ext == ".npy" else "pixel" if ext in PIXEL_EXTENSIONS else None


class _Reader:
    """Opens the files of a folder or a zip; a zip is opened anew in each process (DataLoader workers)."""

    def __init__(self, path: str):
        self.path = path
        self.is_zip = os.path.isfile(path)
        self._zip, self._pid = None, None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None, _pid=None)

    def names(self) -> list[str]:
        if self.is_zip:
            return [n for n in self._archive().namelist() if not n.endswith("/")]
        out = []
        for root, dirs, files in os.walk(self.path, followlinks=True):
            dirs.sort()
            out += [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, "/") for f in files]
        return out

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
            except (OSError, zipfile.BadZipFile) as e:
                raise ValueError(f"{self.path}: not a readable zip archive ({e})") from None
        return self._zip

    def read(self, name: str) -> bytes:
        if self.is_zip:
            return self._archive().read(name)
        with open(os.path.join(self.path, name), "rb") as f:
            return f.read()

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.is_zip else os.path.join(self.path, name)


def read_archive_index(path: str) -> ArchiveIndex:
    """The files, labels and class names of a dataset in EDM2's layout; a problem is a one-line ValueError naming
    the dataset (no data files, both .npy and image files, a dataset.json that does not label every file)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data_dir not found: {path}")
    reader = _Reader(path)
    names = reader.names()
    files = sorted(n for n in names if _kind(n) is not None)
    if not files:
        raise ValueError(f"{path}: no .npy latents or images ({', '.join(PIXEL_EXTENSIONS)}) in this dataset")
    kinds = {_kind(n) for n in files}
    if len(kinds) > 1:
        raise ValueError(f"{path}: holds both .npy latents and images; a dataset holds one kind")
    labels, class_names, vae = None, None, None
    if LABELS_FILE in names:
        where = reader.where(LABELS_FILE)
        try:
            meta = json.loads(reader.read(LABELS_FILE).decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: not a readable JSON file of labels ({e})") from None
        if not isinstance(meta, dict) or "labels" not in meta:
            raise ValueError(f'{where}: expected {{"labels": [[file name, label], ...]}}')
        labels, class_names = _labels(meta, files, where)
        vae = meta["vae"] if isinstance(meta.get("vae"), str) else None
    return ArchiveIndex(path, files, labels, class_names, kinds.pop(), vae)


def _labels(meta: dict, files: list[str], where: str) -> tuple[list[int] | None, list[str] | None]:
    raw = meta["labels"]
    if raw is None:
        return None, None
    try:
        table = {str(name): label for name, label in raw}
    except (TypeError, ValueError):
        raise ValueError(f'{where}: expected "labels" to be a list of [file name, label] pairs') from None
    missing = [n for n in files if n not in table]
    if missing:
        raise ValueError(f"{where}: no label for {missing[0]} ({len(missing)} of {len(files)} files unlabelled)")
    labels = [table[n] for n in files]
    bad = next((n for n, v in zip(files, labels) if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise ValueError(f"{where}: the label of {bad} is {table[bad]!r}; expected a class index (integer >= 0)")
    count = max(labels) + 1
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) >= count and all(isinstance(n, str) for n in names)):
        names = [str(i) for i in range(count)]
    return labels, list(names)


def archive_class_names(path: str, num_classes: int | None = None) -> list[str]:
    """The class names of a labelled dataset in label order (for image_datasets.class_flag_layer): its dataset.json's
    "class_names", else "0".."K-1"; a dataset without labels, or more classes than num_classes, is an error."""
    index = read_archive_index(path)
    _require_labels(index, num_classes)
    return index.class_names


def _require_labels(index: ArchiveIndex, num_classes: int | None) -> None:
    if index.labels is None:
        raise ValueError(f"class_cond needs labels, but {index.path} has none (no dataset.json, or \"labels\": "
                         "null in it): use --class_cond False")
    if num_classes is not None and len(index.class_names) > num_classes:
        raise ValueError(f"{index.path} holds {len(index.class_names)} classes but --num_classes is {num_classes}: "
                         "raise --num_classes")


class ArchiveDataset(Dataset):
    """One rank's shard of a dataset in EDM2's layout; items are addressed by (epoch, index) as ImageDataset's.

    Every item must have the shape of the first file: for latents (C, resolution, resolution) as stored, for
    images resolution x resolution pixels (EDM2's pixel datasets are stored at their training size)."""

    def __init__(self, index: ArchiveIndex, resolution: int, class_cond: bool = False, shard: int = 0,
                 num_shards: int = 1, random_flip: bool = True, seed: int = 0, skip_bad_images: bool = False):
        super().__init__()
        self.reader = _Reader(index.path)
        self.kind = index.kind
        self.resolution = resolution
        self.local_files = index.files[shard::num_shards]
        self.local_labels = index.labels[shard::num_shards] if class_cond and index.labels is not None else None
        self.random_flip = random_flip and index.kind == "pixel"
        self.seed, self.shard = seed, shard
        self.skip_bad_images = skip_bad_images
        self.channels = None

    def __len__(self) -> int:
        return len(self.local_files)

    def first_shape(self) -> tuple[int, ...]:
        """The shape of this shard's first item (checks it against the resolution: an early one-line error)."""
        return tuple(self[0][0].shape)

    def __getitem__(self, key):
        epoch, idx = key if isinstance(key, tuple) else (0, key)
        return first_readable(lambda i: self._item(epoch, i), idx, len(self.local_files), self.skip_bad_images,
                              "file")

    def _load(self, name: str) -> np.ndarray:
        where = self.reader.where(name)
        hint = "" if self.skip_bad_images else "; pass --skip_bad_images True to skip unreadable files"
        try:
            data = self.reader.read(name)
            if self.kind == "latent":
                arr = np.load(io.BytesIO(data), allow_pickle=False)
                arr = arr.reshape(-1, *arr.shape[-2:]).astype(np.float32)
            else:
                with Image.open(io.BytesIO(data)) as image:
                    arr = np.asarray(to_rgb(image)).transpose(2, 0, 1)
        except Exception as e:  # noqa: BLE001 - numpy and PIL raise many types for broken files
            what = "latents" if self.kind == "latent" else "image"
            raise BadDataFileError(f"cannot read {what} {where}: {e}{hint}") from None
        if arr.shape[1:] != (self.resolution, self.resolution) or (self.channels or arr.shape[0]) != arr.shape[0]:
            expected = f"({self.channels or arr.shape[0]}, {self.resolution}, {self.resolution})"
            raise BadDataFileError(f"{where}: shape {tuple(arr.shape)} (channels, height, width), expected "
                                   f"{expected} as --image_size {self.resolution} says{hint}")
        self.channels = arr.shape[0]
        return arr

    def _item(self, epoch: int, idx: int):
        arr = self._load(self.local_files[idx])
        if self.kind == "pixel":
            if self.random_flip and np.random.default_rng([self.seed, self.shard, epoch, idx]).random() < 0.5:
                arr = arr[:, :, ::-1]
            arr = arr.astype(np.float32) / 127.5 - 1
        out = {}
        if self.local_labels is not None:
            out["y"] = np.array(self.local_labels[idx], dtype=np.int64)
        return np.ascontiguousarray(arr), out


def open_archive_dataset(path: str, resolution: int, class_cond: bool = False, num_classes: int | None = None,
                         shard: int = 0, num_shards: int = 1, random_flip: bool = True, seed: int = 0,
                         skip_bad_images: bool = False) -> tuple[ArchiveDataset, ArchiveIndex]:
    """A rank's ArchiveDataset and the dataset's index; the first file is read now, so a dataset of the wrong
    resolution fails before training starts."""
    index = read_archive_index(path)
    if class_cond:
        _require_labels(index, num_classes)
    dataset = ArchiveDataset(index, resolution, class_cond=class_cond, shard=shard, num_shards=num_shards,
                             random_flip=random_flip, seed=seed, skip_bad_images=skip_bad_images)
    if len(dataset):
        dataset.first_shape()
    return dataset, index


def archive_kind(path: str) -> str:
    """"latent" or "pixel": what the files of a dataset in EDM2's layout hold."""
    return read_archive_index(path).kind
