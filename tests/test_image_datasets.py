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
from guided_diffusion.training.image_modes import to_rgb

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


def test_numeric_class_names_sort_by_value():
    """0..11: "10" and "11" are labels 10 and 11, not 2 and 3 as a text sort makes them."""
    paths = [f"/d/{k}_{i}.png" for i in range(2) for k in (11, 2, 0, 10, 1, 3, 4, 5, 6, 7, 8, 9)]
    labels, classes = class_labels(paths, "/d")
    assert classes == [str(k) for k in range(12)]
    assert labels == [int(os.path.basename(p).split("_")[0]) for p in paths]
    _, mixed = class_labels(["/d/b_1.png", "/d/10_1.png", "/d/a_1.png", "/d/9_1.png", "/d/09_1.png"], "/d")
    assert mixed == ["09", "9", "10", "a", "b"]  # numbers by value first, then text


def test_empty_class_name_is_refused():
    paths = [f"/d/{k}_0.png" for k in range(12)] + ["/d/_x.png"]
    with pytest.raises(ValueError) as info:
        class_labels(sorted(paths), "/d")
    assert str(info.value) == ("/d/_x.png: empty class name (the file name starts with '_'; the class is the name's "
                               "part before the first '_', e.g. 3_0001.png): rename the file or move it out of /d")


def test_given_class_names_fix_the_labels():
    """A validation folder missing a class keeps the training labels; a class training never saw is refused."""
    labels, classes = class_labels(["/v/2_0.png", "/v/0_0.png"], "/v", class_names=["0", "1", "2"])
    assert classes == ["0", "1", "2"] and labels == [2, 0]
    with pytest.raises(ValueError, match=r"^/v/7_0.png: class '7' is not among the 3 classes of the training data "
                                         r"\(0, 1, 2\)$"):
        class_labels(["/v/2_0.png", "/v/7_0.png"], "/v", class_names=["0", "1", "2"])


def test_sixteen_bit_grayscale_png_scales_to_eight_bits(tmp_path):
    """A 16-bit grayscale PNG (PIL mode "I;16" or "I") keeps its gray levels instead of turning white."""
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(values).save(tmp_path / "a_wide.png")
    with Image.open(tmp_path / "a_wide.png") as image:
        assert image.mode in ("I;16", "I")
        assert np.array_equal(np.asarray(to_rgb(image))[0, :, 0], [0, 1, 128, 255])
        assert np.array_equal(np.asarray(to_rgb(image.convert("I")))[0, :, 0], [0, 1, 128, 255])
    item = ImageDataset(4, [str(tmp_path / "a_wide.png")], random_flip=False)[0][0]
    expected = np.array([0, 1, 128, 255], np.float32) / 127.5 - 1
    assert np.allclose(item[:, 0, :], expected[None, :])


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


def test_the_skip_hint_is_given_only_without_the_flag(tmp_path):
    make_image_folder(tmp_path, count=2)
    (tmp_path / "c0_bad.png").write_bytes(b"\x89PNG broken")
    paths = list_image_files_recursively(str(tmp_path))
    bad = paths.index(str(tmp_path / "c0_bad.png"))
    with pytest.warns(UserWarning) as warned:
        ImageDataset(8, paths, skip_bad_images=True)[bad]
    messages = [str(w.message) for w in warned]
    assert any(m.startswith(f"skipping cannot read image {tmp_path / 'c0_bad.png'}: ") for m in messages), messages
    assert not any("--skip_bad_images" in m for m in messages), messages
    with pytest.warns(UserWarning), pytest.raises(BadImageError) as info:
        ImageDataset(8, [str(tmp_path / "c0_bad.png")], skip_bad_images=True)[0]
    assert str(info.value) == "no readable image among the 1 files of this rank"  # nor does the error


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
