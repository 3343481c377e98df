"""Image folders as training batches: discovery, labels, preprocessing, sharding, resuming, bad files."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.image_datasets import (
    BadImageError,
    ImageDataset,
    center_crop_arr,
    class_labels,
    list_image_files_recursively,
    load_data,
    load_superres_data,
)

from launch import make_image_folder


def _save(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path)


def test_recursive_search_is_sorted_and_case_insensitive(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    for name in ("b/x_2.PNG", "a/x_1.jpg", "a/deeper/y_3.JpEg", "c/z_4.gif"):
        _save(str(tmp_path / name), pixels)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files = list_image_files_recursively(str(tmp_path))
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/x_1.jpg", "a/deeper/y_3.JpEg", "b/x_2.PNG",
                                                             "c/z_4.gif"]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir not found: .*nowhere"):
        list_image_files_recursively(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images \(jpg, jpeg, png, gif, any case\) found under .*empty"):
        list_image_files_recursively(str(tmp_path / "empty"))


def test_labels_from_prefixes():
    labels, classes = class_labels(["/d/n02_1.png", "/d/n01_7.png", "/d/n02_a_b.png"], "/d")
    assert classes == ["n01", "n02"] and labels == [1, 0, 1]
    with pytest.raises(ValueError, match="holds 2 classes .* but --num_classes is 1"):
        class_labels(["/d/n02_1.png", "/d/n01_7.png"], "/d", num_classes=1)


def _reference_center_crop(image, size):
    """The preprocessing spelled out: BOX halving while short side >= 2x, BICUBIC to size, central crop."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


@pytest.mark.parametrize("shape", [(100, 70), (33, 90), (8, 8), (5, 12)])
def test_center_crop(shape):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    out = center_crop_arr(image, 16)
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out, _reference_center_crop(image, 16))


def test_modes_become_rgb_and_values_scale_to_unit_range(tmp_path):
    gray = np.full((16, 16), 255, np.uint8)
    _save(str(tmp_path / "a_gray.png"), gray)
    _save(str(tmp_path / "a_rgba.png"), np.zeros((16, 16, 4), np.uint8))
    _save(str(tmp_path / "a_palette.png"), np.zeros((16, 16, 3), np.uint8), mode="P")
    paths = list_image_files_recursively(str(tmp_path))
    dataset = ImageDataset(16, paths, random_flip=False)
    arrays = {os.path.basename(p): dataset[i][0] for i, p in enumerate(paths)}
    assert all(a.shape == (3, 16, 16) and a.dtype == np.float32 for a in arrays.values())
    assert (arrays["a_gray.png"] == 1.0).all() and (arrays["a_rgba.png"] == -1.0).all()


def test_random_crop_and_flip_are_deterministic_per_epoch_and_index(tmp_path):
    rng = np.random.default_rng(0)
    _save(str(tmp_path / "a_0.png"), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    paths = list_image_files_recursively(str(tmp_path))
    dataset = ImageDataset(16, paths, random_crop=True, random_flip=True, seed=3)
    first = dataset[(0, 0)][0]
    assert np.array_equal(first, dataset[(0, 0)][0])
    views = {dataset[(epoch, 0)][0].tobytes() for epoch in range(12)}
    assert len(views) > 3  # crops and flips vary across epochs


def test_corrupt_files(tmp_path):
    make_image_folder(tmp_path, count=3)
    (tmp_path / "c0_bad.png").write_bytes(b"\x89PNG broken")
    paths = list_image_files_recursively(str(tmp_path))
    bad = paths.index(str(tmp_path / "c0_bad.png"))
    with pytest.raises(BadImageError, match="cannot read image .*c0_bad.png.*--skip_bad_images"):
        ImageDataset(8, paths)[bad]
    with pytest.warns(UserWarning, match="skipping cannot read image .*c0_bad.png"):
        image, _ = ImageDataset(8, paths, skip_bad_images=True)[bad]
    assert image.shape == (3, 8, 8)
    running = set(multiprocessing.active_children())
    data = load_data(data_dir=str(tmp_path), batch_size=4, image_size=8, deterministic=True, num_workers=1)
    with pytest.raises(BadImageError) as info:
        next(data)
    assert str(info.value).startswith("cannot read image") and "c0_bad.png" in str(info.value)
    assert set(multiprocessing.active_children()) == running  # the loader's worker has stopped


def test_load_data_batches_labels_and_resume(tmp_path):
    make_image_folder(tmp_path, count=10, classes=2)
    data = load_data(data_dir=str(tmp_path), batch_size=4, image_size=8, class_cond=True, num_workers=0, seed=5)
    assert data.classes == ["c0", "c1"]
    batches = [next(data) for _ in range(6)]  # 2 batches per epoch (the partial third is dropped)
    images, cond = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    assert -1 <= images.min() and images.max() <= 1
    assert cond["y"].dtype == torch.int64 and set(cond["y"].tolist()) <= {0, 1}
    assert data.position == 6
    resumed = load_data(data_dir=str(tmp_path), batch_size=4, image_size=8, class_cond=True, num_workers=0,
                        seed=5, start_batch=3)
    for images, cond in batches[3:]:
        again, again_cond = next(resumed)
        assert torch.equal(images, again) and torch.equal(cond["y"], again_cond["y"])
    epoch0 = torch.cat([batches[0][0], batches[1][0]])
    epoch1 = torch.cat([batches[2][0], batches[3][0]])
    assert not torch.equal(epoch0, epoch1)  # reshuffled each epoch


def test_shards_partition_the_files(tmp_path):
    make_image_folder(tmp_path, count=7)
    paths = list_image_files_recursively(str(tmp_path))
    shards = [ImageDataset(8, paths, shard=r, num_shards=3).local_images for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(paths)
    assert [len(s) for s in shards] == [3, 2, 2]


def test_too_few_images_for_the_batch(tmp_path):
    make_image_folder(tmp_path, count=3)
    with pytest.raises(ValueError, match="has 3 images, 3 for each of 1 processes: fewer than --batch_size 4"):
        load_data(data_dir=str(tmp_path), batch_size=4, image_size=8)


def test_superres_batches(tmp_path):
    make_image_folder(tmp_path, count=4, size=32)
    images, cond = next(load_superres_data(data_dir=str(tmp_path), batch_size=2, large_size=32, small_size=8,
                                           num_workers=0))
    assert images.shape == (2, 3, 32, 32) and cond["low_res"].shape == (2, 3, 8, 8)
    assert torch.allclose(cond["low_res"], torch.nn.functional.avg_pool2d(images, 4), atol=1e-6)
