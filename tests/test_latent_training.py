"""Training EDM2's network on VAE latents (image_train.py --arch edm2 --encoder stability_vae): a fresh posterior
sample per batch, seeded so that a killed and resumed run is the uninterrupted one; the encoder recorded in
args.json; EDM2's img512 presets; one-line errors for data that does not fit the flags."""

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

from guided_diffusion.networks import sigma_space
from guided_diffusion.networks.encoders import StabilityVAEEncoder
from guided_diffusion.training.latent_training import EncodedBatches, encoder_from_args, network_channels

from launch import ROOT, call_main, make_image_folder, run_main, run_script, train_straight_and_killed

VAE_DIR = os.path.join(ROOT, "tests", "fixtures", "encoders", "vae")
TINY_LATENT = ["--arch", "edm2", "--encoder", "stability_vae", "--image_size", "8", "--model_channels", "16",
               "--channel_mult", "1,2", "--num_blocks", "1", "--attn_resolutions", "4", "--class_cond", "True",
               "--class_dropout_prob", "0.2"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """Eight 64x64 images of four classes through the tiny VAE: 8x8 latents in EDM2's layout."""
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("latent_data")
    images = make_image_folder(root / "images", count=8, size=64, classes=4)
    spec = importlib.util.spec_from_file_location("encode_latents", os.path.join(ROOT, "datasets", "encode_latents.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([images, str(root / "lat"), "--resolution", "64", "--vae", VAE_DIR, "--progress", "False"])
    return str(root / "lat")


def test_latent_run_trains_and_records_the_encoder(latents, tmp_path):
    run = tmp_path / "run"
    call_main("image_train.py", ["--data_dir", latents, "--log_dir", run, "--batch_size", 4, "--max_steps", 2,
                                 "--save_interval", 2, "--lr", 1e-2, "--phema_stds", "0.05", *TINY_LATENT])
    saved = json.load(open(run / "args.json"))
    assert (saved["encoder"], saved["vae"], saved["num_classes"]) == ("stability_vae", VAE_DIR, 4)
    assert saved["encoder_kwargs"]["class_name"] == "StabilityVAEEncoder"
    assert os.path.getsize(run / "args.json") < 10_000  # names and numbers, never weights
    encoder, reference = encoder_from_args(saved), StabilityVAEEncoder(vae_name=VAE_DIR)
    assert encoder.vae_name == VAE_DIR and encoder._vae is None
    assert np.array_equal(encoder.scale, reference.scale) and np.array_equal(encoder.bias, reference.bias)
    # The checkpoint is a 4-channel EDM2 network (the VAE's latent channels), with its power-function EMA.
    flags = argparse.Namespace(**{**sigma_space.architecture_defaults(), **saved})
    assert network_channels(flags) == 4
    net = sigma_space.create_sigma_space_network(flags, None)
    net.load_state_dict(torch.load(run / "model000002.pt", weights_only=True))
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.eye(4)[:2])
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert (run / "phema_0.050_000002.pt").exists()


def test_each_batch_draws_its_own_reproducible_posterior_sample():
    """EncodedBatches: encode_latents with a generator seeded by (seed, rank, position); another position, seed
    or rank draws another sample; torch's global generator plays no part."""
    raw = torch.cat([torch.full((2, 4, 3, 3), 5.0), torch.full((2, 4, 3, 3), 2.0)], dim=1)  # mean 5, std 2

    class Stream:
        position = 0

        def __next__(self):
            self.position += 1
            return raw, {}

    encoder = StabilityVAEEncoder(vae_name="unused")

    def draw(position, seed=0, rank=0):
        stream = Stream()
        stream.position = position
        batches = EncodedBatches(stream, encoder, "cpu", seed, rank)
        torch.manual_seed(position * 7 + 1)  # the global generator must not matter
        final, _ = next(batches)
        assert batches.position == position + 1
        expected = encoder.encode_latents(raw, generator=batches.generator(position))
        assert torch.equal(final, expected)
        return final

    first = draw(3)
    assert torch.equal(first, draw(3))
    assert not torch.equal(first, draw(4)) and not torch.equal(first, draw(3, seed=1))
    assert not torch.equal(first, draw(3, rank=1))
    # A sample of the posterior: (mean + std * noise) * scale + bias, noise standard normal.
    noise = (first / torch.as_tensor(encoder.scale).reshape(1, -1, 1, 1) - 5.0 -
             torch.as_tensor(encoder.bias / encoder.scale).reshape(1, -1, 1, 1)) / 2.0
    assert 0.5 < float(noise.std()) < 1.5 and abs(float(noise.mean())) < 0.6


def test_img512_presets_follow_edm2(tmp_path):
    def resolve(preset, **given):
        args = argparse.Namespace(**{**sigma_space.architecture_defaults(), "arch": "edm2", "edm2_preset": preset,
                                     "lr": 1e-4, "lr_ref_images": 0.0, "lr_rampup_images": 0.0, **given})
        flags = {**vars(args), **sigma_space.edm_flag_layer(args, set(given))}
        return tuple(flags[k] for k in ("model_channels", "dropout", "lr", "lr_ref_images", "lr_rampup_images",
                                        "p_mean", "p_std"))

    assert resolve("img512-xs") == (128, 0.0, 0.0120, 70000 * 2048, 10e6, -0.4, 1.0)
    assert resolve("img512-m") == (256, 0.1, 0.0090, 70000 * 2048, 10e6, -0.4, 1.0)
    assert resolve("img512-xxl") == (448, 0.1, 0.0065, 70000 * 2048, 10e6, -0.4, 1.0)
    assert resolve("img64-s") == (192, 0.0, 0.0100, 35000 * 2048, 10e6, -0.8, 1.6)
    assert resolve("img512-s", lr=2e-3, model_channels=32) == (32, 0.0, 2e-3, 70000 * 2048, 10e6, -0.4, 1.0)
    assert resolve("m") == (256, 0.1, 1e-4, 0.0, 0.0, -1.2, 1.2)  # the width-and-dropout presets as before
    with pytest.raises(ValueError) as e:
        resolve("img512-xxxl")
    assert str(e.value) == ("--edm2_preset 'img512-xxxl': choose one of xs, s, m, l, xl (width and dropout), or "
                            "img512-xxs, img512-xs, img512-s, img512-m, img512-l, img512-xl, img512-xxl, img64-xs, "
                            "img64-s, img64-m, img64-l, img64-xl (EDM2's full presets)")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=4, size=16)


@pytest.mark.parametrize("change, message", [
    ({"--encoder": None}, "{lat} holds latents (.npy): add --encoder stability_vae"),
    ({"--data_dir": "{images}"}, "--encoder stability_vae trains on latents, but {images} holds images: encode them "
                                 "first (python datasets/encode_latents.py SOURCE DEST), or leave --encoder out"),
    ({"--arch": "adm"}, "--encoder stability_vae trains EDM2's network on latents: add --arch edm2"),
    ({"--encoder": "sd"}, "--encoder 'sd': choose stability_vae (latents), or leave it out (pixels)"),
    ({"--image_size": "16", "--attn_resolutions": "8"},
     "{lat}/00000/img-mean-std-00000000.npy: shape (8, 8, 8) (channels, height, width), expected (8, 16, 16) as "
     "--image_size 16 says; pass --skip_bad_images True to skip unreadable files"),
])
def test_flags_that_do_not_fit_the_data_are_one_line_errors(latents, images, tmp_path, change, message):
    flags = dict(zip(TINY_LATENT[::2], TINY_LATENT[1::2]))
    flags.update({"--data_dir": latents, "--log_dir": str(tmp_path / "run"), "--batch_size": "2"})
    for key, value in change.items():
        if value is None:
            flags.pop(key)
        else:
            flags[key] = value.format(images=images)
    argv = [token for pair in flags.items() for token in pair]
    code, stderr = run_main("image_train.py", argv)
    assert code == 2 and stderr == "image_train.py: error: " + message.format(lat=latents, images=images)
    assert not (tmp_path / "run" / "args.json").exists()


@pytest.mark.slow
def test_sigkill_then_auto_resume_gives_identical_weights(latents, tmp_path):
    """A latent run killed after its first checkpoint and resumed with --resume_checkpoint auto ends with the
    weights, EMA and power-function EMA snapshots of an uninterrupted run, bit for bit."""
    def args(log_dir):
        return ["--data_dir", latents, "--log_dir", log_dir, "--batch_size", 4, "--max_steps", 16,
                "--save_interval", 2, "--log_interval", 2, "--lr", 1e-2, "--ema_rate", "0.9",
                "--phema_stds", "0.05,0.10", "--phema_interval", 16, "--resume_checkpoint", "auto", *TINY_LATENT]

    straight, killed = train_straight_and_killed(args, tmp_path, "model000016.pt")
    names = ["model000016.pt", "ema_0.9_000016.pt", *json.load(open(straight / "phema.json"))]
    assert json.load(open(killed / "phema.json")) == json.load(open(straight / "phema.json"))
    for name in names:
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# args.json's encoder record of a latent run on the tiny VAE (EDM2's latent statistics: scale 0.5 / std, bias
# -mean * scale per channel), as the training scripts wrote it before their flags resolved into frozen settings.
ENCODER_RECORD = {"batch_size": 8, "class_name": "StabilityVAEEncoder", "vae_name": VAE_DIR,
                  "bias": [-0.6966426372528076, -0.3517315983772278, -0.016172505915164948, 0.32774391770362854],
                  "scale": [0.11990407109260559, 0.10822510719299316, 0.13477088510990143, 0.15243902802467346]}


@pytest.mark.parametrize("vae", [None, "", "vae"], ids=["left_out", "empty", "relative_folder"])
def test_a_latent_run_resolves_its_flags_once(latents, tmp_path, monkeypatch, vae):
    """--vae left out or "": the dataset's VAE; a local folder given relative to the working directory: by its
    absolute path. args.json is the parsed flags with exactly these values changed or added; the namespace is left
    as it is and the settings are frozen."""
    from test_training_settings import run_resolving

    monkeypatch.chdir(os.path.dirname(VAE_DIR))
    given = [] if vae is None else ["--vae", vae]
    code, stderr, as_parsed, namespace, settings = run_resolving(monkeypatch, "image_train.py", [
        "--data_dir", latents, "--log_dir", tmp_path / "run", "--batch_size", 2, "--max_steps", 1, *given,
        *TINY_LATENT])
    assert code == 0, stderr
    assert vars(namespace) == as_parsed and as_parsed["vae"] == (vae or "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.vae = "other"
    saved = json.load(open(tmp_path / "run" / "args.json"))
    assert saved == vars(settings) == {**as_parsed, "objective": "edm2", "num_classes": 4,
                                       "class_names": ["c0", "c1", "c2", "c3"], "vae": VAE_DIR,
                                       "encoder_kwargs": ENCODER_RECORD}


def test_vae_defaults_to_the_one_the_dataset_names(latents, tmp_path, monkeypatch):
    """--vae left out: the VAE the dataset.json of encode_latents.py names (a zip too), else EDM2's; a local VAE is
    recorded by its absolute path."""
    from guided_diffusion.networks.encoders import DEFAULT_VAE
    from guided_diffusion.training.latent_training import latent_flag_layer, spelled_out_vae

    zipped = tmp_path / "lat.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for root, _, files in os.walk(latents):
            for f in files:
                archive.write(os.path.join(root, f), os.path.relpath(os.path.join(root, f), latents))
    args = argparse.Namespace(encoder="stability_vae", vae="", data_dir=str(zipped), arch="edm2", image_size=8)
    layer = latent_flag_layer(args)
    assert layer["vae"] == VAE_DIR and layer["encoder_kwargs"]["vae_name"] == VAE_DIR and args.vae == ""
    meta = json.load(open(os.path.join(latents, "dataset.json")))
    edm2_made = tmp_path / "edm2"
    shutil.copytree(latents, edm2_made)
    json.dump({"labels": meta["labels"]}, open(edm2_made / "dataset.json", "w"))
    args = argparse.Namespace(encoder="stability_vae", vae="", data_dir=str(edm2_made), arch="edm2", image_size=8)
    assert latent_flag_layer(args)["vae"] == DEFAULT_VAE
    monkeypatch.chdir(os.path.dirname(VAE_DIR))
    args = argparse.Namespace(encoder="stability_vae", vae="vae", data_dir=str(edm2_made), arch="edm2", image_size=8)
    assert spelled_out_vae(vars(args)) == {"vae": VAE_DIR} and spelled_out_vae({"vae": DEFAULT_VAE}) == {}
    assert latent_flag_layer(args, {"vae"})["encoder_kwargs"]["vae_name"] == VAE_DIR


_DECODE = StabilityVAEEncoder.decode  # as defined, whatever a test patches
FAST_SAMPLING = ["--sampler", "euler", "--steps", 3, "--progress", False, "--grid", False, "--num_samples", 2,
                 "--classes", "1,3"]


@pytest.fixture(scope="module")
def latent_checkpoint(latents, tmp_path_factory):
    """The EMA weights of a tiny class-conditional latent run (label dropout 0.2), trained in-process."""
    run = tmp_path_factory.mktemp("latent_run")
    call_main("image_train.py", ["--data_dir", latents, "--log_dir", run, "--batch_size", 4, "--max_steps", 2,
                                 "--save_interval", 2, "--lr", 1e-2, "--ema_rate", "0.9", *TINY_LATENT])
    return str(run / "ema_0.9_000002.pt")


def _sample_latent_run(checkpoint, log_dir, monkeypatch, *args, script="image_sample.py"):
    """(exit code, stderr, images or None, [(VAE name, latents) of each decode call]) of one sampling run."""
    from guided_diffusion.sampling import pipeline as sampling

    calls = []

    def decode(self, x):
        calls.append((self.vae_name, x.detach().clone()))
        return _DECODE(self, x)

    monkeypatch.setattr(StabilityVAEEncoder, "decode", decode)
    sampling._latent_encoder.cache_clear()
    code, stderr = run_main(script, ["--model_path", checkpoint, *FAST_SAMPLING, *args, "--log_dir", log_dir])
    found = [f for f in os.listdir(log_dir) if f.endswith(".npz")] if os.path.isdir(log_dir) else []
    images = np.load(os.path.join(log_dir, found[0]))["arr_0"] if code == 0 and found else None
    return code, stderr, images, calls


def _decode_with(vae_dir, latents_batch):
    return _DECODE(StabilityVAEEncoder(vae_name=vae_dir), latents_batch).permute(0, 2, 3, 1).numpy()


def test_a_latent_run_samples_to_pixels_decoded_by_its_recorded_vae(latent_checkpoint, tmp_path, monkeypatch):
    code, stderr, images, calls = _sample_latent_run(latent_checkpoint, tmp_path / "plain", monkeypatch)
    assert code == 0, stderr
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8  # 8x8 latents, decoded 8x larger
    assert [(name, tuple(x.shape)) for name, x in calls] == [(VAE_DIR, (2, 4, 8, 8))]
    np.testing.assert_array_equal(images, _decode_with(VAE_DIR, calls[0][1]))
    assert len(np.unique(images)) > 20
    # Classifier-free guidance: the run was trained with label dropout.
    code, stderr, guided, _ = _sample_latent_run(latent_checkpoint, tmp_path / "cfg", monkeypatch,
                                                 "--cfg_scale", 3.0)
    assert code == 0, stderr
    assert guided.shape == (2, 64, 64, 3) and not np.array_equal(guided, images)


def test_vae_overrides_the_recorded_one_when_sampling_a_latent_run(latent_checkpoint, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    other = AutoencoderKL.from_pretrained(VAE_DIR)
    with torch.no_grad():
        other.decoder.conv_out.weight.mul_(-1)  # a VAE that decodes to other images
    other.save_pretrained(tmp_path / "other_vae")
    other_dir = str(tmp_path / "other_vae")
    code, stderr, images, calls = _sample_latent_run(latent_checkpoint, tmp_path / "run", monkeypatch,
                                                     "--vae", other_dir)
    assert code == 0, stderr
    assert [name for name, _ in calls] == [other_dir]
    np.testing.assert_array_equal(images, _decode_with(other_dir, calls[0][1]))
    assert not np.array_equal(images, _decode_with(VAE_DIR, calls[0][1]))


def test_classifier_guidance_is_refused_on_a_latent_run(latent_checkpoint, tmp_path, monkeypatch):
    classifier = tmp_path / "classifier.pt"
    classifier.write_bytes(b"")
    code, stderr, _, _ = _sample_latent_run(latent_checkpoint, tmp_path / "run", monkeypatch, "--classifier_path",
                                            classifier, script="classifier_sample.py")
    assert code == 2 and stderr == (
        f"classifier_sample.py: error: --classifier_path {classifier}: the classifier sees pixels but the model "
        f"{latent_checkpoint} works in latent space (4-channel 8x8 latents of the VAE {VAE_DIR}), so its gradient "
        "cannot guide it; guide it with image_sample.py --cfg_scale or --guide_model_path")
    assert not (tmp_path / "run").exists()


def test_an_unusable_encoder_record_of_a_latent_run_is_one_line():
    from guided_diffusion.sampling.latents import trained_encoder

    assert trained_encoder({"encoder": "", "image_size": 8}, "--model_path m.pt") is None
    encoder, channels, size = trained_encoder({"encoder": "stability_vae", "image_size": 8, "encoder_kwargs": {
        "class_name": "StabilityVAEEncoder", "vae_name": VAE_DIR, "scale": [0.5] * 4, "bias": [0.0] * 4,
        "batch_size": 8}}, "--model_path m.pt")
    assert (encoder.vae_name, channels, size, encoder.scale.tolist()) == (VAE_DIR, 4, 8, [0.5] * 4)
    with pytest.raises(ValueError) as e:
        trained_encoder({"encoder": "stability_vae", "image_size": 8}, "--model_path m.pt")
    assert str(e.value) == ("--model_path m.pt: its args.json records --encoder stability_vae but no usable "
                            "\"encoder_kwargs\" (an object with a class_name) and \"image_size\"")
    with pytest.raises(ValueError) as e:
        trained_encoder({"encoder": "stability_vae", "image_size": 8, "encoder_kwargs": {
            "class_name": "StabilityVAEEncoder", "vae_name": "v", "scale": [1.0] * 3, "bias": [0.0] * 3,
            "batch_size": 8}}, "--model_path m.pt")
    assert str(e.value) == "--model_path m.pt works on 4-channel latents but its encoder record scales 3 channels " \
                           "([1.0, 1.0, 1.0])"
