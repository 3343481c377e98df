"""Reading and writing weights, and the flag hints given when a checkpoint does not fit the flags."""

from __future__ import annotations

import os

import pytest
import torch

from guided_diffusion import script_util as su
from guided_diffusion.cli.fileio import atomic_write
from guided_diffusion.loading.checkpoint import (
    CheckpointMismatchError,
    load_state_dict,
    load_weights,
    save_state_dict,
)

from reference import MANIFESTS, build, load_json, parse_flags


def _tiny_model():
    args = su.model_and_diffusion_defaults()
    args.update(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8")
    model, _ = su.create_model_and_diffusion(**args)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    return model


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    model = _tiny_model()
    path = str(tmp_path / f"model{suffix}")
    save_state_dict(model.state_dict(), path)
    assert os.listdir(tmp_path) == [f"model{suffix}"]  # no temporary file left behind
    other = _tiny_model()
    load_weights(other, load_state_dict(path))
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_ddp_prefix_is_stripped(tmp_path):
    model = _tiny_model()
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    load_weights(_tiny_model(), load_state_dict(str(tmp_path / "ddp.pt")))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_state_dict(str(tmp_path / "nowhere.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pt"):
        load_state_dict(str(tmp_path / "junk.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict(str(tmp_path / "list.pt"))


def _released(name: str) -> dict:
    """A released checkpoint's tensors as shape-only (meta) tensors, from its manifest."""
    manifest = load_json(f"{MANIFESTS}/{name}.json")
    return {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}, manifest["flags"]


def _mismatch(kind: str, flags: str, changes: dict, name: str) -> str:
    state, _ = _released(name)
    defaults = su.classifier_defaults() if kind == "classifier" else su.model_and_diffusion_defaults()
    args = parse_flags(flags, su.classifier_and_diffusion_defaults() if kind == "classifier" else defaults)
    args.update(changes)
    with torch.device("meta"):
        if kind == "classifier":
            model = su.create_classifier(**{k: args[k] for k in su.classifier_defaults()})
        else:
            model, _ = su.create_model_and_diffusion(**args)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, state, f"{name}.pt")
    return str(info.value)


@pytest.mark.parametrize(
    "changes, hint",
    [
        (dict(num_channels=128), "input_blocks.0.0.weight is [192,3,3,3] in the checkpoint: use --num_channels 192 (now 128)"),
        (dict(learn_sigma=False), "out.2.weight is [6,192,3,3] in the checkpoint: use --learn_sigma True (now False)"),
        (dict(class_cond=False), "label_emb.weight is [1000,768] in the checkpoint: use --class_cond True (now False)"),
        (dict(num_classes=10), "use --num_classes 1000 (now 10), or --num_classes 999 with the --class_dropout_prob"),
        (dict(num_res_blocks=2), "use --num_res_blocks 3 (now 2)"),
        (dict(attention_resolutions="16,8"), "use --attention_resolutions 32,16,8 (now 16,8)"),
        (dict(resblock_updown=False), "use --resblock_updown True (now False)"),
        (dict(channel_mult="1,2,2,4"), "use --channel_mult 1,2,3,4 (now 1,2,2,4)"),
        (dict(use_scale_shift_norm=False), "use --use_scale_shift_norm True (now False)"),
    ],
)
def test_diffusion_flag_hints(changes, hint):
    _, flags = _released("64x64_diffusion")
    message = _mismatch("unet", flags, changes, "64x64_diffusion")
    assert message.startswith("64x64_diffusion.pt does not fit the network built from the flags")
    assert hint in message


@pytest.mark.parametrize(
    "name, changes, first, then",
    [
        # Attention levels differ only through the size: --image_size first, the attention flag as the other way.
        ("64x64_diffusion", dict(image_size=32, channel_mult="1,2,3,4"),
         "use --image_size 64 (now 32)", "or, keeping --image_size 32, use --attention_resolutions 16,8,4 (now 32,16,8)"),
        # Channel multipliers too: the per-size defaults of 64 and 128 differ.
        ("128x128_diffusion", dict(image_size=64),
         "use --image_size 128 (now 64)", "or, keeping --image_size 64, use --channel_mult 1,1,2,3,4 (now 1,2,3,4)"),
    ],
)
def test_image_size_is_named_first_when_it_explains_the_mismatch(name, changes, first, then):
    _, flags = _released(name)
    lines = _mismatch("unet", flags, changes, name).splitlines()
    assert first in lines[1] and "these flags fit the checkpoint at" in lines[1]
    assert any(then in line for line in lines[2:])


def test_no_image_size_hint_when_the_size_does_not_explain_it():
    _, flags = _released("64x64_diffusion")
    for changes in (dict(attention_resolutions="16,8"), dict(channel_mult="1,2,2,4"),
                    dict(image_size=32, channel_mult="1,2,3,4", attention_resolutions="16,8")):
        assert "--image_size" not in _mismatch("unet", flags, changes, "64x64_diffusion")


@pytest.mark.parametrize(
    "changes, hint",
    [
        (dict(classifier_depth=2), "use --classifier_depth 4 (now 2)"),
        (dict(classifier_width=256), "use --classifier_width 128 (now 256)"),
        (dict(classifier_pool="adaptive"), "use --classifier_pool attention (now adaptive)"),
    ],
)
def test_classifier_flag_hints(changes, hint):
    _, flags = _released("64x64_classifier")
    assert hint in _mismatch("classifier", flags, changes, "64x64_classifier")


def test_wrong_kind_of_checkpoint():
    state, _ = _released("64x64_classifier")
    with torch.device("meta"):
        model, _, _ = build("unet", load_json(f"{MANIFESTS}/64x64_diffusion.json")["flags"])
    with pytest.raises(CheckpointMismatchError, match="is a classifier"):
        load_weights(model, state, "64x64_classifier.pt")
    sr_state, _ = _released("64_256_upsampler")
    with torch.device("meta"):
        model, _, _ = build("unet", load_json(f"{MANIFESTS}/256x256_diffusion.json")["flags"])
    with pytest.raises(CheckpointMismatchError, match="super-resolution"):
        load_weights(model, sr_state, "64_256_upsampler.pt")
