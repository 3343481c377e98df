"""Tests for the dataset preparation scripts in datasets/."""

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"


def load_script(name):
    """Import datasets/<name>.py by path, as the scripts are not an installed package."""
    spec = importlib.util.spec_from_file_location(f"datasets_{name}", DATASETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, *args):
    """Run datasets/<name>.py from the project root the way users do."""
    return subprocess.run(
        [sys.executable, str(DATASETS / f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_main(module, capsys, *args):
    """Run a dataset script's main in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        module.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


digits = load_script("digits")
prepare = load_script("prepare_folder")
lsun = load_script("lsun_bedroom")


# ---------------------------------------------------------------- digits


def test_digits_export_all(tmp_path):
    count = digits.export_digits(str(tmp_path), image_size=16)
    names = sorted(os.listdir(tmp_path))
    assert count == len(names) == 1797
    assert all(re.fullmatch(r"\d_\d{5}\.png", name) for name in names)
    _, labels = digits.load_digit_arrays()
    for name in names:
        label, index = name[:-4].split("_")
        assert int(label) == labels[int(index)]
    assert {name.split("_")[0] for name in names} == {str(d) for d in range(10)}
    for name in names[::300]:
        with Image.open(tmp_path / name) as image:
            assert image.size == (16, 16)
            assert image.mode == "RGB"
            pixels = np.asarray(image)
        assert np.array_equal(pixels[..., 0], pixels[..., 2])
        assert pixels.min() == 0 and pixels.max() > 128


def test_digit_arrays_value_range():
    images, labels = digits.load_digit_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert images[:, 0, 0].max() == 0  # black background in the corner
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))


def test_digits_native_size_is_exact(tmp_path):
    images, labels = digits.load_digit_arrays()
    assert digits.export_digits(str(tmp_path), image_size=8, limit=3) == 3
    for i in range(3):
        with Image.open(tmp_path / f"{labels[i]}_{i:05d}.png") as image:
            assert np.array_equal(np.asarray(image)[..., 1], images[i])


def test_digit_splits_disjoint_and_covering(tmp_path):
    train = digits.split_indices(1797, "train")
    test = digits.split_indices(1797, "test")
    assert len(train) == 1437 and len(test) == 360
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    assert digits.split_indices(1797, "all").tolist() == list(range(1797))
    assert digits.export_digits(str(tmp_path), split="test") == 360
    exported = sorted(int(name[2:7]) for name in os.listdir(tmp_path))
    assert exported == test.tolist()
    with pytest.raises(ValueError):
        digits.split_indices(10, "val")


def test_digits_cli(tmp_path, capsys):
    result = run_script("digits", "--out_dir", tmp_path / "d", "--image_size", 32,
                        "--split", "train", "--limit", 12)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(tmp_path / "d"))
    assert len(names) == 12 and "0_00000.png" not in names  # index 0 is test
    with Image.open(tmp_path / "d" / names[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    code, _, err = run_main(digits, capsys, "--out_dir", tmp_path / "e", "--image_size", 4)
    assert code == 2 and "--image_size must be at least 8, got 4" in err


# ---------------------------------------------------------------- prepare_folder


def save_image(path, size=(5, 4), color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def class_tree(tmp_path):
    root = tmp_path / "train"
    save_image(root / "cat" / "a.png")
    save_image(root / "cat" / "b.JPG")
    save_image(root / "dog" / "dog_7.png")  # already class-prefixed, ImageNet style
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_prepare_link_mode(class_tree, tmp_path):
    out = tmp_path / "flat"
    summary = prepare.prepare_folder(str(class_tree), str(out))
    assert sorted(os.listdir(out)) == ["cat_a.png", "cat_b.JPG", "dog_7.png"]
    assert (summary.classes, summary.files, summary.methods) == (2, 3, {"link": 3})
    assert os.path.samefile(out / "cat_a.png", class_tree / "cat" / "a.png")
    prepare.prepare_folder(str(class_tree), str(out))  # a rerun replaces the links
    assert len(os.listdir(out)) == 3


def test_prepare_copy_and_symlink_modes(class_tree, tmp_path):
    copied = tmp_path / "copied"
    summary = prepare.prepare_folder(str(class_tree), str(copied), mode="copy")
    assert summary.methods == {"copy": 3}
    source = class_tree / "dog" / "dog_7.png"
    assert not os.path.samefile(copied / "dog_7.png", source)
    assert (copied / "dog_7.png").read_bytes() == source.read_bytes()
    linked = tmp_path / "symlinked"
    assert prepare.prepare_folder(str(class_tree), str(linked), mode="symlink").methods == {
        "symlink": 3
    }
    assert os.path.islink(linked / "cat_a.png")
    assert os.path.samefile(linked / "cat_a.png", class_tree / "cat" / "a.png")


def test_prepare_underscore_classes(tmp_path):
    root = tmp_path / "train"
    save_image(root / "golden_retriever" / "golden_retriever_1.png")
    save_image(root / "cat" / "x.png")
    with pytest.raises(prepare.PrepareError, match="golden_retriever"):
        prepare.prepare_folder(str(root), str(tmp_path / "out"))
    prepare.prepare_folder(str(root), str(tmp_path / "out"), underscore_to="-")
    assert sorted(os.listdir(tmp_path / "out")) == ["cat_x.png", "golden-retriever_1.png"]


def test_prepare_errors(tmp_path):
    with pytest.raises(prepare.PrepareError, match="no such folder"):
        prepare.prepare_folder(str(tmp_path / "missing"), str(tmp_path / "out"))
    save_image(tmp_path / "flat" / "a.png")
    with pytest.raises(prepare.PrepareError, match="no class subfolders"):
        prepare.prepare_folder(str(tmp_path / "flat"), str(tmp_path / "out"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(prepare.PrepareError, match="no images"):
        prepare.prepare_folder(str(tmp_path / "empty"), str(tmp_path / "out"))
    save_image(tmp_path / "clash" / "a" / "a_1.png")
    save_image(tmp_path / "clash" / "a" / "1.png")
    with pytest.raises(prepare.PrepareError, match="a_1.png"):
        prepare.prepare_folder(str(tmp_path / "clash"), str(tmp_path / "out"))
    with pytest.raises(prepare.PrepareError, match="inside"):
        prepare.prepare_folder(str(tmp_path / "clash"), str(tmp_path / "clash" / "out"))


def test_prepare_cli(class_tree, tmp_path, capsys):
    result = run_script("prepare_folder", class_tree, tmp_path / "flat", "--mode", "copy")
    assert result.returncode == 0, result.stderr
    assert "2 classes, 3 files" in result.stdout
    assert len(os.listdir(tmp_path / "flat")) == 3
    code, _, err = run_main(prepare, capsys, tmp_path / "missing", tmp_path / "out")
    assert code == 2
    assert err.strip().splitlines() == [
        f"prepare_folder.py: error: no such folder: {tmp_path / 'missing'}"
    ]


# ---------------------------------------------------------------- lsun_bedroom


def encode(size, fmt, color=(200, 100, 50)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def tiny_lmdb(tmp_path):
    import lmdb

    path = tmp_path / "bedroom_train_lmdb"
    entries = {
        b"0a": encode((300, 200), "JPEG"),
        b"0b": encode((40, 100), "PNG"),
        b"0c": b"definitely not an image",
        b"0d": encode((120, 90), "WEBP"),
    }
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return path


def test_center_crop_resize_keeps_the_middle():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))  # green middle third
    out = lsun.center_crop_resize(image, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert np.asarray(out)[:, 8:56].tolist() == [[[0, 255, 0]] * 48] * 64
    small = lsun.center_crop_resize(Image.new("L", (20, 30)), 64)  # upscales small images
    assert small.size == (64, 64) and small.mode == "RGB"


def test_export_lmdb_skips_corrupt(tiny_lmdb, tmp_path, capsys):
    out = tmp_path / "out"
    count = lsun.export_lmdb(str(tiny_lmdb), str(out), image_size=32)
    assert count == 3
    assert sorted(os.listdir(out)) == [f"bedroom_{i:07d}.png" for i in range(3)]
    for name in os.listdir(out):
        with Image.open(out / name) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert "skipping corrupt entry 0c" in capsys.readouterr().err
    assert lsun.export_lmdb(str(tiny_lmdb), str(tmp_path / "two"), max_images=2) == 2
    assert len(os.listdir(tmp_path / "two")) == 2


def test_lsun_cli(tiny_lmdb, tmp_path):
    out = tmp_path / "cats"
    result = run_script("lsun_bedroom", tiny_lmdb, out, "--prefix", "cat", "--image_size", 16)
    assert result.returncode == 0, result.stderr
    assert "warning: skipping corrupt entry 0c" in result.stderr
    assert sorted(os.listdir(out)) == ["cat_0000000.png", "cat_0000001.png", "cat_0000002.png"]
    with Image.open(out / "cat_0000002.png") as image:
        assert image.size == (16, 16)


@pytest.mark.parametrize("kind", ["missing", "not_lmdb"])
def test_lsun_cli_bad_input(tmp_path, capsys, kind):
    path = tmp_path / "missing"
    if kind == "not_lmdb":
        path = tmp_path / "plain"
        save_image(path / "a.png")
    code, _, err = run_main(lsun, capsys, path, tmp_path / "out")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsun_bedroom.py: error:")
    assert str(path) in lines[0]
    assert not (tmp_path / "out").exists()
