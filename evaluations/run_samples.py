"""What the evaluator measures of a sampling run: the run's images, the seed of each, and the sets of them that
``--num_images`` and ``--seeds`` choose (EDM2's protocol: 50,000 images, several seed sets, minimum and mean).

The sample argument may be

* a run's output folder: the sampling scripts (``guided_diffusion/sampling/writer.py``) write
  ``samples_{N}x{H}x{W}x3.npz`` there, with its record ``samples_...json`` beside it (the flags that made it,
  ``--seed`` included) and a PNG grid that is not a sample; the folder's one such npz is evaluated (also one level
  down, as ``cascade_sample.py``'s ``base/`` and ``upsampled/``: several are an error asking for one);
* such an npz, or any npz with images in ``arr_0``;
* a folder of PNG/JPEG images (searched recursively), e.g. EDM/EDM2's ``generate_images.py --outdir out
  --subdirs --seeds 0-49999``, which names each image by its seed (``out/000000/000123.png``).

Seeds: image i of a sampling run's npz was drawn from seed ``--seed + i`` (``guided_diffusion/sampling/pipeline.py``),
which its record gives; an image file's seed is its name's number (``000123.png``, or ``seed000123.png``).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from evaluations.errors import EvaluatorError
from evaluations.image_folder import FolderImages
from evaluations.npz_io import NpzImages
from evaluations.seed_sets import SeedSet, describe_seeds
from guided_diffusion.sampling.record import read_record

RUN_NPZ = re.compile(r"samples_\d+x\d+x\d+x3\.npz")  # sample_writer.output_name(...) + ".npz"
RUN_PARTS = re.compile(r"samples_\d+x\d+x\d+x3\.parts")  # an unfinished run's batches
SEED_NAME = re.compile(r"(?:seed)?(\d+)\.(?:png|jpe?g)", re.IGNORECASE)
SEED_NAMES = "named by seed as EDM/EDM2's generate scripts write them (000123.png) or seed000123.png"
PUBLISHED_COUNT = 50000  # images per evaluation in ADM's, EDM's and EDM2's papers


@dataclass
class Samples:
    """A sample argument opened: its images, the seed of each image (None when unknown) and, then, why not."""

    images: NpzImages | FolderImages
    seeds: np.ndarray | None
    no_seeds: str = ""


def run_sample_files(folder: str) -> list[str]:
    """The sampling scripts' final npz files in a run folder or its immediate subfolders (the first level that
    has any)."""
    top = sorted(str(p) for p in Path(folder).iterdir() if RUN_NPZ.fullmatch(p.name) and p.is_file())
    if top:
        return top
    return sorted(str(p) for p in Path(folder).glob("*/samples_*.npz") if RUN_NPZ.fullmatch(p.name) and p.is_file())


def _unfinished(folder: str) -> list[str]:
    return sorted(str(p) for p in [*Path(folder).glob("samples_*.parts"), *Path(folder).glob("*/samples_*.parts")]
                  if RUN_PARTS.fullmatch(p.name) and p.is_dir())


def open_samples(path: str, image_size: int | None = None) -> Samples:
    """The images (and their seeds) of a sample argument: a run's output folder, an npz or an image folder."""
    if os.path.isdir(path):
        found, unfinished = run_sample_files(path), _unfinished(path)
        if len(found) > 1:
            raise EvaluatorError(f"{path}: holds {len(found)} sampling outputs ({', '.join(found)}); pass the npz "
                                 "to evaluate")
        if not found and unfinished:
            raise EvaluatorError(f"{path}: the sampling run is unfinished ({unfinished[0]} holds only some "
                                 "batches); rerun its sampling command to finish it")
        if found:
            print(f"using the sampling run's output {found[0]}")
            path = found[0]
        else:
            images = FolderImages(path, image_size)
            return Samples(images, *file_seeds(images.files))
    if image_size is not None:
        raise EvaluatorError(f"{path}: --image_size applies to image folders only")
    images = NpzImages(path)
    return Samples(images, *recorded_seeds(path, images.count))


def file_seeds(files: list[Path]) -> tuple[np.ndarray | None, str]:
    """The seed in each image file's name, or (None, why not)."""
    seeds, owner = [], {}
    for file in files:
        match = SEED_NAME.fullmatch(file.name)
        if match is None:
            return None, f"{file}: no seed in its name; --seeds needs image files {SEED_NAMES}"
        seed = int(match.group(1))
        if seed in owner:
            return None, f"{owner[seed]} and {file} both have seed {seed}; --seeds needs one image per seed"
        owner[seed] = file
        seeds.append(seed)
    return np.array(seeds, dtype=np.int64), ""


def recorded_seeds(npz: str, count: int) -> tuple[np.ndarray | None, str]:
    """The seed of each image of a sampling run's npz (``--seed + i``) from its record, or (None, why not)."""
    record_path = os.path.splitext(npz)[0] + ".json"
    if not os.path.isfile(record_path):
        return None, (f"{npz}: no record of its images' seeds ({os.path.basename(record_path)}, written by the "
                      f"sampling scripts, is not beside it); --seeds needs a sampling run's npz with its record, or "
                      f"image files {SEED_NAMES}")
    record = read_record(record_path)
    settings = record.get("settings") if record else None
    if not isinstance(settings, dict):
        return None, f"{record_path}: not a readable sample record (JSON with the run's settings)"
    seed, num_samples = settings.get("seed"), settings.get("num_samples")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None, f"{record_path}: records no --seed, so the seeds of {npz}'s images are unknown"
    if num_samples != count:
        return None, f"{record_path}: records --num_samples {num_samples}, but {npz} holds {count} images"
    return seed + np.arange(count, dtype=np.int64), ""


class Selection:
    """Some images of a sample file, in the given order, read in batches of exactly ``batch_size`` (the last one
    shorter) so that a selection gives the numbers of a file holding only those images; ``path`` names both."""

    def __init__(self, images: NpzImages | FolderImages, positions: np.ndarray, what: str):
        self.images = images
        self.positions = np.asarray(positions, dtype=np.int64)
        self.path = f"{images.path} ({what})"
        self.shape = (len(self.positions), *images.shape[1:])

    @property
    def count(self) -> int:
        """Number of selected images."""
        return len(self.positions)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield uint8 batches of the selected images."""
        if isinstance(self.images, FolderImages):
            folder = copy.copy(self.images)
            folder.files = [self.images.files[i] for i in self.positions]
            folder.shape = self.shape
            yield from folder.batches(batch_size)
            return
        pending, held = [], 0
        for start, stop in _runs(self.positions):
            for piece in self.images.batches(batch_size, start, stop):
                pending.append(piece)
                held += len(piece)
                while held >= batch_size:
                    joined = np.concatenate(pending)
                    yield joined[:batch_size]
                    pending, held = [joined[batch_size:]], held - batch_size
        if held:
            yield np.concatenate(pending)


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive ascending stretches of ``positions`` as half-open ranges, in order."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(positions, breaks) if len(run)]


@dataclass
class SampleSet:
    """One evaluation of a run: its images, its seed set (None without ``--seeds``) and the warning to show before
    it is measured (fewer images than ``--num_images``), if any."""

    images: NpzImages | FolderImages | Selection
    seed_set: SeedSet | None = None
    warning: str = ""


def _short(what: str, found: int, expected: int, extra: str = "") -> str:
    published = "published numbers" if expected == PUBLISHED_COUNT else f"numbers from {expected} images"
    return (f"warning: {what} has {found} images, not the {expected} expected (--num_images{extra}); the metrics "
            f"depend on the number of images, so these are not comparable with {published}")


def sample_sets(samples: Samples, seed_sets: list[SeedSet] | None, num_images: int | None) -> list[SampleSet]:
    """The evaluations ``--seeds`` and ``--num_images`` ask for (``num_images`` None: all images); a note on
    stdout for each set cut to ``num_images``, a one-line error for a seed set without images."""
    images, path = samples.images, samples.images.path
    if seed_sets is None:
        if num_images is None or images.count == num_images:
            return [SampleSet(images)]
        if images.count < num_images:
            return [SampleSet(images, warning=_short(path, images.count, num_images))]
        print(f"using the first {num_images} of the {images.count} images of {path} (--num_images {num_images})")
        return [SampleSet(Selection(images, np.arange(num_images), f"its first {num_images} images"))]
    if samples.seeds is None:
        raise EvaluatorError(samples.no_seeds)
    sets = []
    for seed_set in seed_sets:
        positions = np.flatnonzero(seed_set.contains(samples.seeds))
        if len(positions) == 0:
            raise EvaluatorError(f"--seeds {seed_set.text}: none of the {images.count} images of {path} has one "
                                 f"of these seeds (they have {describe_seeds(samples.seeds)})")
        positions = positions[np.argsort(samples.seeds[positions], kind="stable")]
        missing = seed_set.size - len(positions)
        gap = f"; {missing} of the set's seeds have no image" if missing else ""
        what, warning = f"seeds {seed_set.text}", ""
        if num_images is not None and len(positions) > num_images:
            print(f"seed set {seed_set.text}: using its first {num_images} of {len(positions)} images "
                  f"(--num_images {num_images})")
            positions = positions[:num_images]
        elif num_images is not None and len(positions) < num_images:
            warning = _short(f"{path} for seed set {seed_set.text}", len(positions), num_images, gap)
        elif gap:
            print(f"seed set {seed_set.text}: {len(positions)} images{gap}")
        sets.append(SampleSet(Selection(images, positions, what), seed_set, warning))
    return sets


def summary(results: list[dict[str, float | str]]) -> dict[str, dict[str, float]]:
    """Per metric, the minimum and the mean over the seed sets' results (EDM2 reports the minimum)."""
    keys = [key for key, value in results[0].items() if isinstance(value, float)]
    return {
        "min": {key: min(float(r[key]) for r in results) for key in keys},
        "mean": {key: float(np.mean([float(r[key]) for r in results])) for key in keys},
    }


def seed_set_report(sets: list[SampleSet], results: list[dict[str, float | str]],
                    labels: tuple[tuple[str, str], ...]) -> tuple[list[str], dict]:
    """The printed lines and the JSON of an evaluation over seed sets: each set's metrics, then per metric the
    minimum and the mean over the sets."""
    lines, records = [], []
    for sample_set, result in zip(sets, results):
        lines.append(f"seed set {sample_set.seed_set.text} ({sample_set.images.count} images):")
        lines += [f"  {label}: {result[key]}" for key, label in labels if key in result]
        records.append({"seeds": sample_set.seed_set.text, "images": sample_set.images.count,
                        **{key: value for key, value in result.items() if isinstance(value, float)}})
    over = summary(results)
    lines.append(f"over {len(sets)} seed sets:")
    lines += [f"  {label}: min {over['min'][key]}, mean {over['mean'][key]}" for key, label in labels
              if key in over["min"]]
    report = {"seed_sets": records, **over}
    extra = {key: value for key, value in results[0].items() if not isinstance(value, float)}
    return lines, {**report, **extra}
