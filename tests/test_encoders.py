"""guided_diffusion.networks.encoders against what NVlabs' EDM2 encoders compute (tests/fixtures/encoders, written by
tests/make_encoder_fixture.py with EDM2's own code on a tiny random AutoencoderKL), plus its one-line errors."""

import os
import pickle
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

from guided_diffusion.cli import run as cli
from guided_diffusion.networks.encoders import (
    INSTALL_HINT,
    StabilityVAEEncoder,
    StandardRGBEncoder,
    VAEUnavailableError,
    encoder_from_record,
)
from guided_diffusion.loading.nvlabs_pickle import read_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "encoders")
VAE_DIR = os.path.join(FIXTURE, "vae")
NOISE_SEED, BATCH_SIZE = 7, 2  # as tests/make_encoder_fixture.py wrote them


@pytest.fixture(scope="module")
def data():
    inputs, outputs = np.load(os.path.join(FIXTURE, "inputs.npz")), np.load(os.path.join(FIXTURE, "edm2_outputs.npz"))
    return {**{k: inputs[k] for k in inputs.files}, **{k: outputs[k] for k in outputs.files}}


@pytest.fixture(scope="module")
def vae_encoder():
    pytest.importorskip("diffusers")
    encoder = StabilityVAEEncoder(vae_name=VAE_DIR, batch_size=BATCH_SIZE)
    encoder.init("cpu")
    return encoder


def test_vae_encoder_matches_edm2(vae_encoder, data):
    assert np.array_equal(vae_encoder.scale, data["scale"]) and np.array_equal(vae_encoder.bias, data["bias"])
    raw = vae_encoder.encode_pixels(torch.from_numpy(data["pixels"]))
    assert raw.dtype == torch.float32 and raw.shape == (5, 8, 4, 4)
    np.testing.assert_allclose(raw.numpy(), data["raw"], rtol=1e-5, atol=1e-6)
    # The same noise: a generator seeded as EDM2's global one, or the global one itself.
    final = vae_encoder.encode_latents(torch.from_numpy(data["raw"]),
                                       generator=torch.Generator().manual_seed(NOISE_SEED))
    assert np.array_equal(final.numpy(), data["final"])
    torch.manual_seed(NOISE_SEED)
    assert np.array_equal(vae_encoder.encode_latents(torch.from_numpy(data["raw"])).numpy(), data["final"])
    encoded = vae_encoder.encode(torch.from_numpy(data["pixels"]), generator=torch.Generator().manual_seed(NOISE_SEED))
    np.testing.assert_allclose(encoded.numpy(), data["final"], rtol=1e-5, atol=1e-6)
    for latents, expected in ((data["final"], data["decoded"]), (data["latents"], data["decoded_latents"])):
        pixels = vae_encoder.decode(torch.from_numpy(latents))
        assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape
        assert np.abs(pixels.numpy().astype(int) - expected).max() <= 1
        assert expected.std() > 30  # the tiny VAE's images span the range: the comparison means something


def test_vae_decode_streams_batches(vae_encoder, data):
    """The VAE sees batch_size images at a time, each batch's full-size float output is gone before the next
    batch is decoded, and decoding in other batch sizes changes nothing."""
    latents = torch.from_numpy(data["final"])
    seen, outputs = [], []
    decode = vae_encoder._vae.decode

    def spy(z):
        assert all(ref() is None for ref in outputs), "an earlier batch's float output is still alive"
        seen.append(tuple(z.shape))
        result = decode(z)
        outputs.append(weakref.ref(result["sample"]))
        return result

    vae_encoder._vae.decode = spy
    try:
        pixels = vae_encoder.decode(latents)
    finally:
        del vae_encoder._vae.decode
    assert seen == [(2, 4, 4, 4), (2, 4, 4, 4), (1, 4, 4, 4)]
    whole = StabilityVAEEncoder(vae_name=VAE_DIR, batch_size=8)
    whole._vae = vae_encoder._vae
    assert np.abs(whole.decode(latents).numpy().astype(int) - pixels.numpy()).max() <= 1


def test_rgb_encoder_matches_edm2(data):
    encoder = StandardRGBEncoder()
    assert np.array_equal(encoder.encode(torch.from_numpy(data["pixels"])).numpy(), data["rgb_final"])
    assert np.array_equal(encoder.decode(torch.from_numpy(data["rgb_values"])).numpy(), data["rgb_decoded"])
    assert torch.equal(encoder.encode_pixels(torch.from_numpy(data["pixels"])), torch.from_numpy(data["pixels"]))


def test_pickle_keeps_edm2_attributes_not_the_vae(vae_encoder):
    state = vae_encoder.__getstate__()
    assert set(state) == {"vae_name", "scale", "bias", "batch_size", "_vae"} and state["_vae"] is None
    copy = pickle.loads(pickle.dumps(vae_encoder))
    assert copy._vae is None and copy.vae_name == VAE_DIR and copy.batch_size == BATCH_SIZE
    assert np.array_equal(copy.scale, vae_encoder.scale) and vae_encoder._vae is not None


def test_encoder_from_edm2_snapshot_record():
    record = read_pickle(os.path.join(ROOT, "tests", "fixtures", "nvlabs", "edm2_latent_snapshot.pkl"))["encoder"]
    encoder = encoder_from_record(record.class_name, record.state)
    default = StabilityVAEEncoder()
    assert isinstance(encoder, StabilityVAEEncoder) and encoder.vae_name == "stabilityai/sd-vae-ft-mse"
    assert encoder.batch_size == 8 and encoder._vae is None
    assert np.array_equal(encoder.scale, default.scale) and np.array_equal(encoder.bias, default.bias)
    record = read_pickle(os.path.join(ROOT, "tests", "fixtures", "nvlabs", "edm2_snapshot.pkl"))["encoder"]
    assert type(encoder_from_record(record.class_name, record.state)) is StandardRGBEncoder
    with pytest.raises(ValueError, match=r"^encoder record: unknown class 'Foo' \(expected one of "
                                         r"StandardRGBEncoder, StabilityVAEEncoder\)$"):
        encoder_from_record("Foo", {})


def test_missing_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an environment without the extra gives
    encoder = StabilityVAEEncoder(vae_name=VAE_DIR)
    message = f"StabilityVAEEncoder needs diffusers, which is not installed: {INSTALL_HINT}"
    with pytest.raises(ImportError) as err:
        encoder.decode(torch.zeros(1, 4, 2, 2))
    assert str(err.value) == message and INSTALL_HINT == 'pip install -e ".[latent]"'
    with pytest.raises(SystemExit) as exit_:
        cli.run(lambda: encoder.init("cpu"), script="sample.py")
    assert exit_.value.code == 2 and capsys.readouterr().err == f"sample.py: error: {message}\n"


def test_missing_vae_directory_is_one_line(tmp_path):
    pytest.importorskip("diffusers")
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError) as err:
        StabilityVAEEncoder(vae_name=missing).init("cpu")
    assert str(err.value) == (f"vae_name {missing}: no such directory (expected a directory written by "
                              "AutoencoderKL.save_pretrained, or a hub name such as stabilityai/sd-vae-ft-mse)")
    with pytest.raises(FileNotFoundError, match=r"^vae_name .*: no config.json in it \(expected a directory "
                                                r"written by AutoencoderKL.save_pretrained\)$"):
        StabilityVAEEncoder(vae_name=str(tmp_path)).encode_pixels(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_hub_name_offline_is_one_line(tmp_path, monkeypatch):
    """A hub name not in the cache: one download attempt into <GUIDED_DIFFUSION_CACHE>/diffusers, then one line."""
    diffusers = pytest.importorskip("diffusers")
    calls = []

    def offline(name, **kwargs):
        calls.append((name, kwargs.get("cache_dir"), kwargs.get("local_files_only", False)))
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path))
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", offline)
    with pytest.raises(VAEUnavailableError) as err:
        StabilityVAEEncoder().init("cpu")
    cache = tmp_path / "diffusers"
    assert calls == [("stabilityai/sd-vae-ft-mse", cache, True), ("stabilityai/sd-vae-ft-mse", cache, False)]
    assert str(err.value) == (
        f"vae_name stabilityai/sd-vae-ft-mse: not in the cache {cache} and cannot be downloaded (OSError: We "
        "couldn't connect to 'https://huggingface.co' to load the files.); connect once to download it, or pass "
        "a directory written by AutoencoderKL.save_pretrained")


@pytest.mark.slow
def test_hub_name_offline_real(tmp_path):
    """The same with the real hub client told to stay offline, in a fresh process."""
    pytest.importorskip("diffusers")
    env = dict(os.environ, GUIDED_DIFFUSION_CACHE=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    code = ("from guided_diffusion.cli import run as cli; from guided_diffusion.networks import encoders; "
            "cli.run(lambda: encoders.StabilityVAEEncoder().init('cpu'))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert f"vae_name stabilityai/sd-vae-ft-mse: not in the cache {tmp_path / 'diffusers'} and cannot be " \
           "downloaded" in lines[0]


def test_bad_inputs_are_one_line():
    encoder = StabilityVAEEncoder(vae_name=VAE_DIR)
    with pytest.raises(ValueError, match=r"^StabilityVAEEncoder.encode_pixels: expected uint8 pixels of shape "
                                         r"\(N, 3, H, W\), got torch.float32 of shape \(1, 3, 8, 8\)$"):
        encoder.encode_pixels(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^StabilityVAEEncoder.decode: expected a tensor of shape \(N, 4, H, W\), "
                                         r"got shape \(1, 8, 2, 2\)$"):
        encoder.decode(torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match=r"^StabilityVAEEncoder.encode_latents: expected a tensor of shape "
                                         r"\(N, 8, H, W\), got shape \(1, 4, 2, 2\)$"):
        encoder.encode_latents(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive integer, got 0$"):
        StabilityVAEEncoder(batch_size=0)
    assert encoder._vae is None  # refused before loading anything
