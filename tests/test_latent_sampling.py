"""Sampling networks on latents (EDM2's img512 networks) to pixels: guided_diffusion/sampling/latents.py and the latent
paths of guided_diffusion/sampling/pipeline.py, through scripts/image_sample.py and classifier_sample.py.

The latent network is the snapshot NVlabs' training code wrote (tests/fixtures/nvlabs/edm2_latent_snapshot.pkl:
8x8 latents of 4 channels, its encoder record naming Stability's VAE); the VAE is the tiny AutoencoderKL of
tests/fixtures/encoders/vae (four levels as Stability's: 8x8 latents decode to 64x64 images), passed with --vae so
that nothing is downloaded. Stand-ins for EDM2's preset files are small networks pickled as NVlabs' persistence
does (test_nvlabs.py's stand-ins), with the snapshots' encoder records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm2
from guided_diffusion.networks import encoders
from guided_diffusion.loading import nvlabs
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.networks.encoders import StabilityVAEEncoder

from launch import read_samples, run_main
from test_nvlabs import SMALL, _Persistent, _write, stand_ins  # noqa: F401 - stand_ins is a fixture
from test_nvlabs_snapshots import _Rec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENT = os.path.join(ROOT, "tests", "fixtures", "nvlabs", "edm2_latent_snapshot.pkl")
RGB = os.path.join(ROOT, "tests", "fixtures", "nvlabs", "edm2_snapshot.pkl")
VAE_DIR = os.path.join(ROOT, "tests", "fixtures", "encoders", "vae")
FAST = ["--sampler", "euler", "--steps", 3, "--progress", False, "--grid", False]
VAE_HINT = "(expected a directory written by AutoencoderKL.save_pretrained, or a hub name such as " \
           "stabilityai/sd-vae-ft-mse)"


_DECODE = StabilityVAEEncoder.decode  # as defined, whatever a test patches


@pytest.fixture
def decoded(monkeypatch):
    """The latents each StabilityVAEEncoder.decode call received during the test, in order."""
    calls = []

    def decode(self, x):
        calls.append(x.detach().clone())
        return _DECODE(self, x)

    monkeypatch.setattr(StabilityVAEEncoder, "decode", decode)
    return calls


def _sample(log_dir, *args, model=LATENT, script="image_sample.py", vae=VAE_DIR) -> tuple[int, str, dict | None]:
    """(exit code, stderr, samples npz or None) of one run."""
    extra = ["--vae", vae] if vae else []
    code, stderr = run_main(script, ["--model_path", model, *extra, *FAST, *args, "--log_dir", log_dir])
    found = [f for f in os.listdir(log_dir) if f.endswith(".npz")] if os.path.isdir(log_dir) else []
    return code, stderr, read_samples(os.path.join(log_dir, found[0])) if code == 0 and found else None


def _latent_pickle(path, label_dim: int, seed: int, scale_factor: float = 1.0) -> str:
    """A small EDM2 network on the fixture's 4-channel 8x8 latents, with an encoder record as the fixture's
    (its scale multiplied by scale_factor), pickled as NVlabs' snapshots are (needs the stand_ins fixture)."""
    kwargs = {**SMALL, "img_channels": 4, "label_dim": label_dim}
    torch.manual_seed(seed)
    net = edm2.Precond(**kwargs).eval()
    with torch.no_grad():
        net.unet.out_gain.fill_(0.7)  # 0 at initialisation: every network would be the same
    recorded = nvlabs.read_pickle(LATENT)["encoder"].state
    state = {"vae_name": recorded["vae_name"], "batch_size": 8,
             "scale": np.asarray(recorded["scale"], np.float32) * np.float32(scale_factor),
             "bias": np.asarray(recorded["bias"], np.float32).copy()}
    return _write(path, {"encoder": _Rec("StabilityVAEEncoder", state), "ema": _Persistent(net, kwargs)})


def _own_decoding(latents: torch.Tensor, vae_dir: str = VAE_DIR) -> np.ndarray:
    """Final latents -> uint8 NHWC through guided_diffusion.networks.encoders with EDM2's constants and the given VAE."""
    encoder = StabilityVAEEncoder(vae_name=vae_dir)
    return _DECODE(encoder, latents).permute(0, 2, 3, 1).numpy()


def test_a_latent_snapshot_samples_to_decoded_uint8_pixels(tmp_path, decoded):
    code, stderr, samples = _sample(tmp_path / "run", "--num_samples", 3, "--batch_size", 2, "--classes", "1,3")
    assert code == 0, stderr
    images = samples["arr_0"]
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8 and samples["arr_1"].tolist() == [1, 3, 1]
    assert [tuple(c.shape) for c in decoded] == [(2, 4, 8, 8), (1, 4, 8, 8)]  # decoded batch by batch
    np.testing.assert_array_equal(np.concatenate([_own_decoding(c) for c in decoded]), images)
    assert 0.2 < float(torch.cat(decoded).std()) < 5 and len(np.unique(images)) > 50  # real latents and images
    record = json.loads((tmp_path / "run" / "samples_3x64x64x3.json").read_text())["settings"]
    assert (record["vae"], record["image_size"], record["latent_size"], record["latent_channels"]) == \
        (VAE_DIR, 64, 8, 4)


def test_the_trajectory_of_a_latent_run_is_decoded(tmp_path, decoded):
    from PIL import Image

    code, stderr, samples = _sample(tmp_path / "run", "--num_samples", 2, "--save_trajectory", 2)
    assert code == 0, stderr
    assert [tuple(c.shape) for c in decoded] == [(2, 4, 8, 8)] * 4  # three steps' estimates, then the samples
    strip = np.asarray(Image.open(tmp_path / "run" / "trajectory.png"))
    assert strip.shape == (2 * 66 + 2, 4 * 66 + 2, 3)  # two images, four 64x64 columns with 2-pixel gaps
    for row in range(2):  # each row ends with its final image
        np.testing.assert_array_equal(strip[2 + 66 * row:66 * (row + 1), 200:264], samples["arr_0"][row])
    np.testing.assert_array_equal(strip[2:66, 2:66], _own_decoding(decoded[0])[0])  # the first estimate


def test_the_recorded_vae_is_used_unless_vae_overrides_it(tmp_path, monkeypatch, decoded):
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_pretrained(VAE_DIR)
    with torch.no_grad():
        other.decoder.conv_out.weight.mul_(-1)  # a VAE that decodes to other images
    other.save_pretrained(tmp_path / "other_vae")
    asked = []
    real_load = encoders.load_stability_vae

    def load(name, device="cpu", cache_dir=None):  # the hub is not reached from the tests: its name, our weights
        asked.append(name)
        return real_load(VAE_DIR if name == encoders.DEFAULT_VAE else name, device)

    monkeypatch.setattr(encoders, "load_stability_vae", load)
    sampling._latent_encoder.cache_clear()  # each run below loads its VAE
    runs = {}
    for name, vae in (("recorded", ""), ("fixture", VAE_DIR), ("other", str(tmp_path / "other_vae"))):
        code, stderr, samples = _sample(tmp_path / name, "--num_samples", 2, "--classes", 2, vae=vae)
        assert code == 0, stderr
        runs[name] = samples["arr_0"]
    assert asked == ["stabilityai/sd-vae-ft-mse", VAE_DIR, str(tmp_path / "other_vae")]
    np.testing.assert_array_equal(runs["recorded"], runs["fixture"])
    assert not np.array_equal(runs["other"], runs["fixture"])
    np.testing.assert_array_equal(runs["other"], _own_decoding(decoded[-1], str(tmp_path / "other_vae")))


def test_a_converted_latent_network_decodes_with_edm2s_encoder(tmp_path):
    converted = tmp_path / "converted" / "latent.safetensors"  # converted networks keep no encoder record
    code, stderr = run_main("convert_checkpoint.py", [LATENT, converted])
    assert code == 0, stderr
    runs = [_sample(tmp_path / name, "--num_samples", 2, "--classes", 1, model=model)
            for name, model in (("pkl", LATENT), ("converted", converted))]
    assert [code for code, _, _ in runs] == [0, 0], runs
    np.testing.assert_array_equal(runs[0][2]["arr_0"], runs[1][2]["arr_0"])


def test_encoder_records_that_do_not_fit_the_network_are_one_line():
    from guided_diffusion.sampling import latents
    from guided_diffusion.loading.nvlabs_pickle import Record

    where = "--model_path x.pkl"
    recorded = nvlabs.read_pickle(LATENT)["encoder"]
    assert latents.encoder_for(None, 3, where) is None and latents.encoder_for(Record("StandardRGBEncoder", {}), 3,
                                                                                where) is None
    default, from_record = latents.encoder_for(None, 4, where), latents.encoder_for(recorded, 4, where)
    assert np.array_equal(default.scale, from_record.scale) and np.array_equal(default.bias, from_record.bias)
    cases = [
        (None, 5, "--model_path x.pkl works on 5-channel images and records no encoder: expected 3 channels (pixels) "
                  "or 4 (latents of Stability's VAE)"),
        (Record("StandardRGBEncoder", {}), 4,
         "--model_path x.pkl records a StandardRGBEncoder (pixels) but works on 4 channels"),
        (recorded, 3, "--model_path x.pkl works on 3-channel latents but its encoder record scales 4 channels"),
        (Record("Foo", {}), 4, "--model_path x.pkl: its encoder record: unknown class 'Foo' (expected one of "
                               "StandardRGBEncoder, StabilityVAEEncoder)"),
        (Record("StabilityVAEEncoder", {**recorded.state, "batch_size": [8]}), 4,
         "--model_path x.pkl: its encoder record StabilityVAEEncoder: int() argument must be"),
    ]
    for record, channels, message in cases:
        with pytest.raises(ValueError) as err:
            latents.encoder_for(record, channels, where)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_a_missing_or_unusable_vae_is_one_line(tmp_path):
    missing = tmp_path / "no_vae"
    code, stderr, _ = _sample(tmp_path / "a", vae=str(missing))
    assert code == 2 and stderr == f"image_sample.py: error: --vae {missing}: no such directory {VAE_HINT}"
    assert not (tmp_path / "a").exists()  # refused before the log folder is made
    (tmp_path / "empty").mkdir()
    code, stderr, _ = _sample(tmp_path / "b", vae=str(tmp_path / "empty"))
    assert code == 2 and stderr == (f"image_sample.py: error: --vae {tmp_path / 'empty'}: no config.json in it "
                                    "(expected a directory written by AutoencoderKL.save_pretrained)")

    def offline(name, device="cpu", cache_dir=None):  # what load_stability_vae says when the hub is out of reach
        raise encoders.VAEUnavailableError(f"vae_name {name}: not in the cache C and cannot be downloaded (OSError: "
                                           "offline); connect once to download it, or pass a directory")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoders, "load_stability_vae", offline)
        sampling._latent_encoder.cache_clear()
        code, stderr, _ = _sample(tmp_path / "offline", vae="")
    assert code == 2 and stderr == (
        f"image_sample.py: error: the VAE stabilityai/sd-vae-ft-mse that --model_path {LATENT} decodes with (another "
        "one: --vae): not in the cache C and cannot be downloaded (OSError: offline); connect once to download it, "
        "or pass a directory")
    code, stderr, _ = _sample(tmp_path / "c", model=RGB)
    assert code == 2 and stderr == (f"image_sample.py: error: --vae {VAE_DIR}: the model {RGB} works on pixels; "
                                    "--vae is for networks on latents (EDM2's img512)")
    code, stderr, _ = _sample(tmp_path / "d", "--image_size", 512)
    assert code == 2 and stderr == (f"image_sample.py: error: --image_size 512: the model {LATENT} makes 8x8 "
                                    "latents, which decode to 64x64 images; leave --image_size out")


def test_classifier_guidance_is_refused_on_latents(tmp_path):
    classifier = tmp_path / "classifier.pt"
    classifier.write_bytes(b"")
    code, stderr, _ = _sample(tmp_path / "run", "--classifier_path", classifier, script="classifier_sample.py",
                              vae="")
    assert code == 2 and "\n" not in stderr
    assert stderr == (f"classifier_sample.py: error: --classifier_path {classifier}: the classifier sees pixels but "
                      f"the model {LATENT} works in latent space (4-channel 8x8 latents of the VAE "
                      "stabilityai/sd-vae-ft-mse), so its gradient cannot guide it; guide it with image_sample.py "
                      "--cfg_scale or --guide_model_path")
    assert not (tmp_path / "run").exists()


def test_cfg_and_autoguidance_run_on_latents(tmp_path, stand_ins):
    common = ["--num_samples", 2, "--classes", "0,3"]
    runs = {}

    def run(name, *args):
        code, stderr, samples = _sample(tmp_path / name, *common, *args)
        assert code == 0, f"{name}: {stderr}"
        assert samples["arr_0"].shape == (2, 64, 64, 3) and samples["arr_0"].dtype == np.uint8
        runs[name] = samples["arr_0"]

    same = tmp_path / "same.pkl"
    shutil.copy(LATENT, same)
    guide = _latent_pickle(tmp_path / "guide.pkl", label_dim=4, seed=1)
    run("plain")
    run("cfg", "--cfg_scale", 2.0, "--class_dropout_prob", 0.1)  # the zero label row is EDM2's null label
    run("cfg_interval", "--cfg_scale", 2.0, "--class_dropout_prob", 0.1, "--cfg_interval", "5,100")
    run("self_guided", "--guide_model_path", same, "--guide_scale", 2.05)  # D_g + w (D - D_g) = D when D_g = D
    run("autoguided", "--guide_model_path", guide, "--guide_scale", 2.05)
    run("autoguided_interval", "--guide_model_path", guide, "--guide_scale", 2.05, "--guide_interval", "5,100")
    np.testing.assert_array_equal(runs["self_guided"], runs["plain"])
    distinct = ["plain", "cfg", "cfg_interval", "autoguided", "autoguided_interval"]
    assert all(not np.array_equal(runs[a], runs[b]) for i, a in enumerate(distinct) for b in distinct[i + 1:])


def test_a_guide_must_share_the_models_latent_space(tmp_path, stand_ins):
    where = "image_sample.py: error: --guide_model_path"
    code, stderr, _ = _sample(tmp_path / "a", "--guide_model_path", RGB, "--guide_scale", 2)
    assert code == 2 and stderr == (f"{where} {RGB} works on pixels but the model on 4-channel 8x8 latents of the "
                                    "VAE stabilityai/sd-vae-ft-mse: a guide must share the model's latent space")
    code, stderr, _ = _sample(tmp_path / "b", "--guide_model_path", LATENT, "--guide_scale", 2, model=RGB, vae="")
    assert code == 2 and stderr == (f"{where} {LATENT} works on 4-channel 8x8 latents of the VAE "
                                    "stabilityai/sd-vae-ft-mse but the model on pixels: a guide must share the "
                                    "model's latent space")
    rescaled = _latent_pickle(tmp_path / "rescaled.pkl", label_dim=4, seed=1, scale_factor=2.0)
    code, stderr, _ = _sample(tmp_path / "c", "--guide_model_path", rescaled, "--guide_scale", 2)
    assert code == 2 and "\n" not in stderr and stderr.startswith(f"{where} {rescaled} works on 4-channel 8x8 latents")
    assert stderr.endswith("): a guide must share the model's latent space") and "(scale (0.239" in stderr


# --- EDM2's 36 generator presets --------------------------------------------------------------------------------

_NAME = re.compile(r"edm2-(img64|img512)-(xs|s|m|l|xl|xxl)(-uncond)?-(\d{7})-(\d\.\d{3})\.pkl")
_SIZES = ["xs", "s", "m", "l", "xl", "xxl"]


def test_the_36_presets_name_edm2s_files_and_their_guides():
    assert len(nvlabs.EDM2_PRESETS) == 36
    for preset, (net, guide, scale) in nvlabs.EDM2_PRESETS.items():
        family, size, *_ = re.fullmatch(r"edm2-(img64|img512)-(xs|s|m|l|xl|xxl)-.*(fid|dino)", preset).groups()
        main = _NAME.fullmatch(net)
        assert main and main.group(1) == family and main.group(2) == size, preset
        assert bool(main.group(3)) == ("-uncond-" in preset), preset
        if guide is None:
            assert scale == 1.0 and ("-guid-" not in preset and "-autog-" not in preset), preset
            continue
        weak = _NAME.fullmatch(guide)
        assert weak and weak.group(1) == family and 1 < scale < 3, preset  # the model's latent (or pixel) space
        if "-guid-" in preset:  # EDM2's guidance: the unconditional XS network at the same EMA length
            assert weak.group(2) == "xs" and weak.group(3) and not main.group(3), preset
            assert weak.group(5) == main.group(5), preset
        else:  # autoguidance: a smaller network, trained for less, of the same conditioning
            assert "-autog-" in preset and bool(weak.group(3)) == bool(main.group(3)), preset
            assert _SIZES.index(weak.group(2)) < _SIZES.index(main.group(2)), preset
            assert int(weak.group(4)) < int(main.group(4)), preset


_STAND_INS: dict[tuple, bytes] = {}  # made once per kind: constructing networks is most of a run's time


def _stand_in(model_dir, file: str, role: str) -> None:
    """A stand-in for one of EDM2's files, pickled as NVlabs' are: a small float32 network (float16 ones compute
    slowly on CPUs) on 8x8 pixels with a StandardRGBEncoder record (img64) or on the latent snapshot's 8x8 latents
    with its encoder record (img512); unconditional for "-uncond-" files, else on 4 labels; the guide's weights
    differ from the model's."""
    label_dim = 0 if "-uncond-" in file else 4
    key = ("-img512-" in file, label_dim, role)
    if key not in _STAND_INS:
        path, seed = model_dir / f"{role}.stand_in", zlib.crc32(repr(key).encode())
        if key[0]:
            _latent_pickle(path, label_dim=label_dim, seed=seed)
        else:
            kwargs = {**SMALL, "label_dim": label_dim}
            torch.manual_seed(seed)
            net = edm2.Precond(**kwargs).eval()
            with torch.no_grad():
                net.unet.out_gain.fill_(0.7)
            _write(path, {"encoder": _Rec("StandardRGBEncoder", {}), "ema": _Persistent(net, kwargs)})
        _STAND_INS[key] = path.read_bytes()
        path.unlink()
    (model_dir / file).write_bytes(_STAND_INS[key])


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(nvlabs.EDM2_PRESETS))
def test_every_preset_resolves_and_samples_end_to_end(tmp_path, stand_ins, preset):
    net, guide, scale = nvlabs.EDM2_PRESETS[preset]
    models = tmp_path / "models"
    models.mkdir()
    for file, role in ((net, "net"), (guide, "guide")):
        if file:
            _stand_in(models, file, role)
    latent = "-img512-" in preset
    args = ["--preset", preset, "--model_dir", models, "--num_samples", 2, "--steps", 2, "--progress", False,
            "--grid", False, "--log_dir", tmp_path / "run", *(["--vae", VAE_DIR] if latent else [])]
    code, stderr = run_main("image_sample.py", args)
    assert code == 0, stderr
    size = 64 if latent else 8
    samples = read_samples(tmp_path / "run" / f"samples_2x{size}x{size}x3.npz")
    assert samples["arr_0"].shape == (2, size, size, 3) and samples["arr_0"].dtype == np.uint8
    record = json.loads((tmp_path / "run" / f"samples_2x{size}x{size}x3.json").read_text())
    assert os.path.basename(record["files"]["model_path"]["path"]) == net
    assert os.path.basename(record["files"].get("guide_model_path", {}).get("path", "")) == (guide or "")
    settings = record["settings"]
    assert (settings["guide_scale"], settings["sampler"], settings["steps"], settings["clip_denoised"]) == \
        (scale, "heun", 2, False)
    assert settings.get("latent_channels", 0) == (4 if latent else 0)
