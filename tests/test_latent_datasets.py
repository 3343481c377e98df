"""Datasets in NVlabs EDM2's layout: datasets/encode_latents.py (images -> VAE latents, a folder or a zip of .npy
files with dataset.json, resumable, one-line errors) and the training loader's readers for it and for EDM2's pixel
datasets (guided_diffusion/training/latent_datasets.py through image_datasets.load_data)."""

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.image_datasets import center_crop_arr, class_flag_layer, load_data
from guided_diffusion.training.latent_datasets import is_archive_dataset, read_archive_index

from launch import ROOT, make_image_folder

VAE_DIR = os.path.join(ROOT, "tests", "fixtures", "encoders", "vae")


def _load_tool():
    spec = importlib.util.spec_from_file_location("datasets_encode_latents",
                                                  os.path.join(ROOT, "datasets", "encode_latents.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _encode(capsys, *args):
    """encode_latents.py's main in this process with the tiny VAE: (exit code, stdout, stderr)."""
    code = 0
    try:
        tool.main([str(a) for a in args] + ["--vae", VAE_DIR, "--progress", "False"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six 70x70 class-prefixed PNGs of three classes (c0, c1, c2)."""
    return make_image_folder(tmp_path_factory.mktemp("images"), count=6, size=70, classes=3)


@pytest.fixture(scope="module")
def encoded(images, tmp_path_factory):
    """The images encoded at resolution 64 into a folder (8x8 latents)."""
    pytest.importorskip("diffusers")
    dest = tmp_path_factory.mktemp("latents") / "lat"
    tool.main([images, str(dest), "--resolution", "64", "--vae", VAE_DIR, "--progress", "False"])
    return dest


def _read_like_edm2(path):
    """What EDM2's ImageFolderDataset reads, restated with numpy and json only: the .npy files sorted by name,
    each reshaped to (C, H, W), and the label of each from dataset.json."""
    if os.path.isdir(path):
        names = sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)
        read = lambda n: open(os.path.join(path, n), "rb").read()  # noqa: E731
    else:
        archive = zipfile.ZipFile(path)
        names, read = sorted(archive.namelist()), archive.read
    files = [n for n in names if n.endswith(".npy")]
    arrays = [np.load(io.BytesIO(read(n))) for n in files]
    labels = dict(json.loads(read("dataset.json"))["labels"])
    return files, [a.reshape(-1, *a.shape[-2:]) for a in arrays], [labels[n] for n in files]


def test_encode_writes_edm2_layout_with_the_vae_posterior(encoded, images):
    from guided_diffusion.networks.encoders import StabilityVAEEncoder

    files, arrays, labels = _read_like_edm2(encoded)
    assert files == [f"00000/img-mean-std-{i:08d}.npy" for i in range(6)]
    assert all(a.dtype == np.float32 and a.shape == (8, 8, 8) for a in arrays)
    assert labels == [0, 0, 1, 1, 2, 2]  # c0_000, c0_003, c1_001, ... sorted by name
    meta = json.load(open(encoded / "dataset.json"))
    assert meta["class_names"] == ["c0", "c1", "c2"] and meta["vae"] == VAE_DIR
    # The raw latents are the VAE's posterior mean and std of ADM's center crop, bit for bit.
    encoder = StabilityVAEEncoder(vae_name=VAE_DIR, batch_size=1)
    names = sorted(os.listdir(images))
    crops = [center_crop_arr(Image.open(os.path.join(images, n)).convert("RGB"), 64) for n in names]
    for crop, array in zip(crops, arrays):
        expected = encoder.encode_pixels(torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous())[0].numpy()
        assert np.array_equal(array, expected)
    assert np.all(arrays[0][4:] > 0) and arrays[0][:4].std() > 0  # std channels positive, means vary


def test_encode_to_zip_equals_the_folder(encoded, images, tmp_path, capsys):
    code, out, err = _encode(capsys, images, tmp_path / "lat.zip", "--resolution", 64)
    assert code == 0, err
    assert out.strip() == (f"6 images encoded into {tmp_path / 'lat.zip'} (0 done before, 0 skipped), latents of "
                           "shape (8, 8, 8)")
    assert sorted(os.listdir(tmp_path)) == ["lat.zip"]  # the .partial folder is gone
    zipped, folder = _read_like_edm2(tmp_path / "lat.zip"), _read_like_edm2(encoded)
    assert zipped[0] == folder[0] and zipped[2] == folder[2]
    assert all(np.array_equal(a, b) for a, b in zip(zipped[1], folder[1]))
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(tmp_path / "lat.zip").infolist())


def test_encode_resumes_after_a_kill(encoded, images, tmp_path, capsys):
    """A run killed midway left some files and an atomic write's temporary file: the rerun removes the temporary,
    encodes only the missing files, and the result equals an uninterrupted run's."""
    dest = tmp_path / "lat"
    code, _, err = _encode(capsys, images, dest, "--resolution", 64, "--max_images", 4)
    assert code == 0, err
    # Make it look interrupted: two of six files missing, a stale temporary file.
    os.remove(dest / "00000" / "img-mean-std-00000002.npy")
    os.remove(dest / "dataset.json")
    (dest / "00000" / ".img-mean-std-00000004.npy.abcd1234.tmp").write_bytes(b"partial")
    kept = {n: os.stat(dest / "00000" / n).st_mtime_ns for n in os.listdir(dest / "00000")
            if not n.endswith(".tmp")}
    code, out, err = _encode(capsys, images, dest, "--resolution", 64)
    assert code == 0, err
    assert out.strip() == f"6 images encoded into {dest} (3 done before, 0 skipped), latents of shape (8, 8, 8)"
    assert all(os.stat(dest / "00000" / n).st_mtime_ns == t for n, t in kept.items())  # not rewritten
    assert not [n for n in os.listdir(dest / "00000") if n.endswith(".tmp")]
    resumed, straight = _read_like_edm2(dest), _read_like_edm2(encoded)
    assert resumed[0] == straight[0] and resumed[2] == straight[2]
    assert all(np.array_equal(a, b) for a, b in zip(resumed[1], straight[1]))


def test_encode_refuses_other_settings_or_foreign_folders(encoded, images, tmp_path, capsys):
    code, _, err = _encode(capsys, images, encoded, "--resolution", 32)
    assert code == 2 and err.strip() == (f"encode_latents.py: error: {encoded} was started with other settings: "
                                         "resume it with --resolution 64 (now 32), or use another destination")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    code, _, err = _encode(capsys, images, tmp_path / "other", "--resolution", 64)
    assert code == 2 and err.strip() == (f"encode_latents.py: error: {tmp_path / 'other'} is not empty and was "
                                         "not written by encode_latents.py: use an empty or new folder")


def test_encode_class_folders_and_non_image_files(tmp_path, capsys):
    """ImageNet's tree (train/<wnid>/<wnid>_<n>.JPEG): classes from the folders; other files are named and
    ignored."""
    pytest.importorskip("diffusers")
    for wnid in ("n02", "n01"):
        make_image_folder(tmp_path / "train" / wnid, count=1, size=40, classes=1)
        os.rename(tmp_path / "train" / wnid / "c0_000.png", tmp_path / "train" / wnid / f"{wnid}_7.JPEG")
    (tmp_path / "train" / "LICENSE.txt").write_text("not an image")
    code, out, err = _encode(capsys, tmp_path / "train", tmp_path / "lat", "--resolution", 16)
    assert code == 0, err
    assert err.strip().splitlines()[0] == (f"warning: ignoring 1 files under {tmp_path / 'train'} that are not "
                                           "images by name (e.g. LICENSE.txt)")
    meta = json.load(open(tmp_path / "lat" / "dataset.json"))
    assert meta["labels"] == [["00000/img-mean-std-00000000.npy", 0], ["00000/img-mean-std-00000001.npy", 1]]
    assert meta["class_names"] == ["n01", "n02"]
    assert np.load(tmp_path / "lat" / "00000" / "img-mean-std-00000000.npy").shape == (8, 2, 2)


def test_encode_bad_images_error_or_skip(images, tmp_path, capsys):
    pytest.importorskip("diffusers")
    source = make_image_folder(tmp_path / "src", count=3, size=64, classes=3)
    bad = os.path.join(source, "c1_001.png")
    open(bad, "wb").write(b"this is not a png")
    code, _, err = _encode(capsys, source, tmp_path / "a", "--resolution", 64)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"encode_latents.py: error: cannot read image {bad}: ")
    assert err.strip().endswith("; pass --skip_bad_images True to skip bad images")
    code, out, err = _encode(capsys, source, tmp_path / "b", "--resolution", 64, "--skip_bad_images", "True")
    assert code == 0 and err.startswith(f"warning: skipping cannot read image {bad}: ")
    assert out.strip() == (f"2 images encoded into {tmp_path / 'b'} (0 done before, 1 skipped), latents of shape "
                           "(8, 8, 8)")
    labels = json.load(open(tmp_path / "b" / "dataset.json"))["labels"]
    assert labels == [["00000/img-mean-std-00000000.npy", 0], ["00000/img-mean-std-00000002.npy", 2]]
    # --transform none takes images as they are: a 70x70 image at --resolution 64 is a mismatch.
    code, _, err = _encode(capsys, images, tmp_path / "c", "--resolution", 64, "--transform", "none")
    assert code == 2 and err.strip() == (f"encode_latents.py: error: {os.path.join(images, 'c0_000.png')}: 70x70 "
                                         "pixels, but --transform none needs 64x64 images; pass --skip_bad_images "
                                         "True to skip bad images")


@pytest.mark.parametrize("args, message", [
    (["--resolution", "60"], "--resolution 60: expected a positive multiple of 8 (the VAE downsamples by 8)"),
    (["--labels", "folder"], "--labels folder: {images}/c0_000.png is not inside a class folder"),
])
def test_encode_flag_errors(images, tmp_path, capsys, args, message):
    code, _, err = _encode(capsys, images, tmp_path / "x", *args)
    assert code == 2 and err.strip() == "encode_latents.py: error: " + message.format(images=images)


def test_encode_runs_as_a_script(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "datasets", "encode_latents.py"), tmp_path / "none",
                           tmp_path / "out"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"encode_latents.py: error: source not found: {tmp_path / 'none'}"


# ---------------------------------------------------------------- the training loader


def _write_latents(folder, count=6, shape=(8, 4, 4), labels=True, zip_name=None):
    """A latent dataset written with numpy: file i holds the value i everywhere (std channels 0)."""
    files = {}
    for i in range(count):
        buf = io.BytesIO()
        np.save(buf, np.full(shape, i, np.float32))
        files[tool.output_name(i)] = buf.getvalue()
    meta = {"labels": [[n, i % 3] for i, n in enumerate(files)] if labels else None}
    files["dataset.json"] = json.dumps(meta).encode()
    if zip_name:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, zip_name)
        with zipfile.ZipFile(path, "w") as archive:
            for n, data in files.items():
                archive.writestr(n, data)
        return path
    for n, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, n)), exist_ok=True)
        open(os.path.join(folder, n), "wb").write(data)
    return str(folder)


@pytest.mark.parametrize("zip_name", [None, "lat.zip"])
def test_load_data_reads_latents_with_their_labels(tmp_path, zip_name):
    path = _write_latents(tmp_path / "d", zip_name=zip_name)
    assert is_archive_dataset(path) and read_archive_index(path).kind == "latent"
    batches = load_data(data_dir=path, batch_size=3, image_size=4, class_cond=True, deterministic=True,
                        num_workers=0 if zip_name else 1)
    for expected in ([0, 1, 2], [3, 4, 5], [0, 1, 2]):
        x, cond = next(batches)
        assert x.shape == (3, 8, 4, 4) and x.dtype == torch.float32
        assert x[:, 0, 0, 0].tolist() == expected and torch.all(x == x[:, :1, :1, :1])  # as stored, never flipped
        assert cond["y"].tolist() == [i % 3 for i in expected]
    assert batches.classes == ["0", "1", "2"] and batches.position == 3


def test_load_data_reads_edm2_pixel_datasets(tmp_path):
    """EDM2's pixel layout (00000/img00000000.png + dataset.json), folder and zip: images in [-1, 1] with their
    labels, flipped per (seed, epoch, index)."""
    folder = tmp_path / "px"
    for i in range(4):
        os.makedirs(folder / "00000", exist_ok=True)
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[:, :4] = 255  # left half white: a flip shows
        Image.fromarray(pixels).save(folder / "00000" / f"img{i:08d}.png")
    json.dump({"labels": [[f"00000/img{i:08d}.png", 3 - i] for i in range(4)]}, open(folder / "dataset.json", "w"))
    with zipfile.ZipFile(tmp_path / "px.zip", "w") as archive:
        for root, _, files in os.walk(folder):
            for f in files:
                archive.write(os.path.join(root, f), os.path.relpath(os.path.join(root, f), folder))
    for path in (str(folder), str(tmp_path / "px.zip")):
        x, cond = next(load_data(data_dir=path, batch_size=4, image_size=8, class_cond=True, deterministic=True,
                                 num_workers=0, seed=3))
        assert x.shape == (4, 3, 8, 8) and x.min() == -1 and x.max() == 1
        assert cond["y"].tolist() == [3, 2, 1, 0]
        flipped = (x[:, 0, 0, 0] == -1).tolist()
        assert flipped == [bool(np.random.default_rng([3, 0, 0, i]).random() < 0.5) for i in range(4)]
        assert any(flipped) and not all(flipped)


def test_class_flags_come_from_dataset_json(tmp_path):
    path = _write_latents(tmp_path / "d")
    args = argparse.Namespace(data_dir=path, num_classes=1000, class_cond=True)
    assert class_flag_layer(args, set()) == {"num_classes": 3, "class_names": ["0", "1", "2"]}
    assert class_flag_layer(args, {"num_classes"}) == {"class_names": ["0", "1", "2"]}  # 1000 given: it holds them
    assert class_flag_layer(args, set(), class_cond=False) == {}
    meta = json.load(open(os.path.join(path, "dataset.json")))
    json.dump({**meta, "class_names": ["cat", "dog", "eel"]}, open(os.path.join(path, "dataset.json"), "w"))
    assert class_flag_layer(args, set())["class_names"] == ["cat", "dog", "eel"]
    assert vars(args) == {"data_dir": path, "num_classes": 1000, "class_cond": True}  # never changed


def test_loader_errors_name_the_file(tmp_path):
    path = _write_latents(tmp_path / "d")
    with pytest.raises(ValueError) as e:
        load_data(data_dir=path, batch_size=2, image_size=8, num_workers=0)
    assert str(e.value) == (f"{path}/00000/img-mean-std-00000000.npy: shape (8, 4, 4) (channels, height, width), "
                            "expected (8, 8, 8) as --image_size 8 says; pass --skip_bad_images True to skip "
                            "unreadable files")
    unlabelled = _write_latents(tmp_path / "u", labels=False)
    with pytest.raises(ValueError, match=r"class_cond needs labels, but .*/u has none .*: use --class_cond False"):
        load_data(data_dir=unlabelled, batch_size=2, image_size=4, class_cond=True, num_workers=0)
    meta = json.load(open(os.path.join(path, "dataset.json")))
    json.dump({"labels": meta["labels"][:-1]}, open(os.path.join(path, "dataset.json"), "w"))
    with pytest.raises(ValueError) as e:
        load_data(data_dir=path, batch_size=2, image_size=4, class_cond=True, num_workers=0)
    assert str(e.value) == (f"{path}/dataset.json: no label for 00000/img-mean-std-00000005.npy (1 of 6 files "
                            "unlabelled)")


def test_a_corrupt_latent_file_is_an_error_or_skipped(tmp_path):
    path = _write_latents(tmp_path / "d", count=4)
    bad = os.path.join(path, "00000", "img-mean-std-00000001.npy")
    open(bad, "wb").write(b"garbage")
    batches = load_data(data_dir=path, batch_size=2, image_size=4, deterministic=True, num_workers=1)
    with pytest.raises(ValueError) as e:
        next(batches)
    assert str(e.value).startswith(f"cannot read latents {bad}: ") and "\n" not in str(e.value)
    batches = load_data(data_dir=path, batch_size=2, image_size=4, deterministic=True, num_workers=0,
                        skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipping cannot read latents"):
        x, _ = next(batches)
    assert x[:, 0, 0, 0].tolist() == [0, 2]  # the bad file's place taken by the next one
