"""Separate semantic and control conditioning (guided_diffusion/networks/control.py): gates, records from the data loader,
control dropout, class attention, guidance, and a script-level round trip."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from guided_diffusion.networks.control import (
    NULL,
    ControlEmbedding,
    cosine_gate,
    drop_controls,
    null_records,
    parse_control,
    parse_gates,
    parse_groups,
)
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_util import create_model

from launch import make_image_folder, read_samples, run_main


def test_gate_values_at_and_between_its_levels():
    sigma = torch.tensor([5.0, 1.0, math.sqrt(0.2), 0.2, 0.05], dtype=torch.float64)
    gate = cosine_gate(sigma, 1.0, 0.2)
    torch.testing.assert_close(gate, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    quarter = cosine_gate(torch.tensor([0.2**0.25], dtype=torch.float64), 1.0, 0.2)  # u = 1/4 in log sigma
    torch.testing.assert_close(quarter, torch.tensor([(1 - math.cos(math.pi / 4)) / 2], dtype=torch.float64))
    assert cosine_gate(torch.tensor([80.0, 1e-3]), math.inf, math.inf).tolist() == [1.0, 1.0]
    assert parse_gates("size=2:0.5")["size"] == (2.0, 0.5) and parse_gates("")["crop"] == (math.inf, math.inf)


@pytest.mark.parametrize("spec, message", [
    ("size=0.5:2", "sigma_off >= sigma_on > 0"), ("zoom=1:0.5", "a group of crop, flip, size"),
    ("size=1", "expected group=sigma_off:sigma_on")])
def test_bad_gates(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_gates(spec)


def test_control_records_parse_with_defaults_and_one_line_errors():
    assert parse_control("", 16) == [0.0, 0.0, 1.0, 1.0, 0.0, 16.0]
    assert parse_control("crop=0.25,0,1,0.75 flip=1 size=8", 16) == [0.25, 0.0, 1.0, 0.75, 1.0, 8.0]
    for bad in ("crop=0,0,1", "crop=0.5,0,0.4,1", "flip=2", "size=0", "zoom=2"):
        with pytest.raises(ValueError, match="--control"):
            parse_control(bad, 16)
    assert parse_groups("crop,size") == ("crop", "size")
    with pytest.raises(ValueError) as info:
        parse_control("flip=1 size=8 flip=0", 16)
    assert str(info.value) == ("--control 'flip=1 size=8 flip=0': flip is given twice; give each of crop, flip and "
                               "size once")
    with pytest.raises(ValueError) as info:
        parse_gates("size=1:0.2,crop=2:1,size=2:0.5")
    assert str(info.value) == ("--control_gates 'size=1:0.2,crop=2:1,size=2:0.5': size is given twice; give each "
                               "group once")
    with pytest.raises(ValueError, match="a comma-separated subset of crop, flip, size"):
        parse_groups("crop,crop")


def test_control_dropout_replaces_records_at_the_requested_rate():
    torch.manual_seed(0)
    records = torch.tensor([[0.1, 0.2, 0.9, 1.0, 1.0, 12.0]]).repeat(20000, 1)
    dropped = drop_controls(records, 0.3)
    null = (dropped == NULL).all(dim=1)
    assert abs(float(null.float().mean()) - 0.3) < 0.01
    assert torch.equal(dropped[~null], records[~null])  # the rest untouched
    assert torch.equal(drop_controls(records, 0.0), records)


def test_null_records_and_closed_gates_contribute_exactly_nothing():
    torch.manual_seed(0)
    embed = ControlEmbedding(("crop", "flip", "size"), 16)
    assert torch.equal(embed(null_records(3), torch.tensor([0.1, 1.0, 10.0])), torch.zeros(3, 16))
    records = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 16.0], [0.0, 0.0, 1.0, 1.0, 0.0, 8.0]])
    high = embed(records, torch.tensor([5.0, 5.0]))  # the size gate is closed above sigma 1
    assert torch.equal(high[0], high[1])
    low = embed(records, torch.tensor([0.1, 0.1]))
    assert not torch.allclose(low[0], low[1])
    ungated = ControlEmbedding(("crop", "flip", "size"), 16, gated=False)
    ungated.load_state_dict(embed.state_dict())
    assert not torch.allclose(*ungated(records, torch.tensor([5.0, 5.0])))


def _net(**kwargs):
    torch.manual_seed(0)
    net = create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="8", class_cond=True, num_classes=5,
                       **kwargs)
    for p in net.parameters():  # the zero-initialized layers would hide the conditioning
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def test_with_controls_off_the_forward_is_bit_identical():
    """A network with control conditioning, given null records, computes exactly what the same weights compute
    without it; with everything off, the network's state dict is the original's."""
    plain, controlled = _net(), _net(control_cond="crop,flip,size", class_attention=False)
    extra = set(controlled.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("control_embed.") for k in extra)
    controlled.load_state_dict({**controlled.state_dict(), **plain.state_dict()})
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([-1.0, 0.0, 0.5]), torch.tensor([0, 2, 4])
    with torch.no_grad():
        want = plain(x, t, y)
        got = controlled(x, t, y, control=null_records(3), control_sigma=torch.tensor([0.1, 1.0, 10.0]))
    assert torch.equal(got, want)
    assert list(_net().state_dict()) == list(create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="8",
                                                          class_cond=True, num_classes=5).state_dict())


def test_class_attention_changes_outputs_for_other_labels_only():
    net = _net(class_attention=True)
    assert any(k.endswith("context_kv.weight") for k in net.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.3])
    x[1] = x[0]
    with torch.no_grad():
        same = net(x, t, torch.tensor([3, 3]))
        other = net(x, t, torch.tensor([3, 1]))
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], other[0])
    assert (other[1] - other[0]).abs().mean() > 1e-6  # one token among 65 at these small weights: small but real
    with pytest.raises(ValueError, match="--class_attention True needs a class-conditional model"):
        create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="", class_attention=True)


def _edm2(**kwargs):
    from guided_diffusion.networks import edm2

    torch.manual_seed(0)
    net = edm2.Precond(16, 3, 5, use_fp16=False, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                       attn_resolutions=[8], **kwargs)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)  # the zero-initialized gains would hide the network's body
    return net.eval()


def test_edm2_with_controls_off_is_bit_identical_and_class_attention_reads_labels():
    plain, controlled = _edm2(), _edm2(control_cond="crop,flip,size")
    assert set(controlled.state_dict()) - set(plain.state_dict()) == {
        k for k in controlled.state_dict() if k.startswith("unet.control_embed.")}
    controlled.load_state_dict({**controlled.state_dict(), **plain.state_dict()})
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.1, 1.0, 10.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 4]), 5).float()
    with torch.no_grad():
        assert torch.equal(controlled(x, sigma, labels, control=null_records(3)), plain(x, sigma, labels))
        records = torch.tensor([parse_control("size=8", 16), parse_control("size=16", 16)])
        low = controlled(x[:1].repeat(2, 1, 1, 1), torch.tensor([0.1, 0.1]), labels[:1].repeat(2, 1), control=records)
        assert not torch.equal(low[0], low[1])
    attending = _edm2(class_attention=True)
    assert any(k.endswith("attn_context.weight") for k in attending.state_dict())
    same_x = x[:1].repeat(2, 1, 1, 1)
    with torch.no_grad():
        same = attending(same_x, torch.tensor([1.0, 1.0]), labels[[1, 1]])
        other = attending(same_x, torch.tensor([1.0, 1.0]), labels[[1, 2]])
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], other[0])
    assert (other[1] - other[0]).abs().mean() > 1e-6


def test_loader_records_are_deterministic_per_seed_and_resumable(tmp_path):
    folder = make_image_folder(str(tmp_path / "images"), count=8, size=16)
    common = dict(data_dir=folder, batch_size=4, image_size=16, class_cond=True, random_crop=True, random_flip=True,
                  random_resize=(0.5, 1.0), min_crop_frac=0.71, with_control=True, num_workers=0, seed=3)
    first = [next(iter_) for iter_ in [load_data(**common)] for _ in range(3)]
    again = load_data(**common)
    resumed = load_data(**common, start_batch=2)
    for a, b in zip(first, [next(again) for _ in range(3)]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["control"], b[1]["control"])
    assert torch.equal(next(resumed)[1]["control"], first[2][1]["control"])
    records = torch.cat([batch[1]["control"] for batch in first])
    x0, y0, x1, y1, flip, size = records.T
    area = (x1 - x0) * (y1 - y0)  # at least (16 / ceil(16 / 0.71))^2: the resized side is a whole pixel count
    assert (area >= (16 / 23) ** 2 - 1e-6).all() and (area <= 1 + 1e-6).all() and area.min() < 0.9
    assert set(flip.tolist()) <= {0.0, 1.0} and ((size >= 8) & (size <= 16)).all() and len(set(size.tolist())) > 1
    other = load_data(**{**common, "seed": 4})
    assert not torch.equal(next(other)[1]["control"], first[0][1]["control"])
    plain = load_data(**{**common, "with_control": False})
    assert "control" not in next(plain)[1]


@pytest.mark.parametrize("network", [
    ["--objective", "edm", "--num_channels", 32, "--num_res_blocks", 1, "--attention_resolutions", ""],
    ["--arch", "edm2", "--model_channels", 16, "--num_blocks", 1, "--attn_resolutions", ""]], ids=["adm", "edm2"])
def test_train_and_sample_with_controls_round_trip(tmp_path, network):
    images = make_image_folder(str(tmp_path / "images"), count=16, size=16)
    run = tmp_path / "run"
    code, stderr = run_main("image_train.py", [
        "--data_dir", images, "--log_dir", run, "--image_size", 16, "--channel_mult", "1,2", "--class_cond", True,
        "--num_classes", 4, "--class_dropout_prob", 0.2, "--batch_size", 4, "--max_steps", 4, "--save_interval", 4,
        "--lr", 1e-2, "--random_crop", True, "--random_resize", "0.5,1", "--control_cond", "crop,flip,size",
        "--control_dropout_prob", 0.2, "--class_attention", True, *network])
    assert code == 0, stderr
    saved = json.load(open(run / "args.json"))
    assert (saved["control_cond"], saved["class_attention"], saved["random_resize"]) == ("crop,flip,size", True, "0.5,1")

    def sample(name, *extra):
        code, stderr = run_main("image_sample.py", ["--model_path", run / "model000004.pt", "--num_samples", 4,
                                                    "--classes", 1, "--sampler", "heun", "--steps", 4, "--log_dir",
                                                    tmp_path / name, "--progress", False, *extra])
        assert code == 0, stderr
        return read_samples(os.path.join(tmp_path, name, "samples_4x16x16x3.npz"))["arr_0"].astype(float)

    default = sample("default")
    assert np.array_equal(default, sample("explicit", "--control", "crop=0,0,1,1 flip=0 size=16"))
    # After 4 steps the controls' effect is small (EDM2's output gain starts at 0), but it must reach the images.
    assert np.abs(default - sample("flipped", "--control", "flip=1 size=8")).mean() > 0
    assert np.abs(default - sample("guided", "--control_cfg_scale", 3, "--cfg_scale", 2)).mean() > 0
    code, stderr = run_main("image_sample.py", ["--model_path", run / "model000004.pt", "--control", "flip=3",
                                                "--log_dir", tmp_path / "bad"])
    assert code == 2 and "--control 'flip=3'" in stderr and "\n" not in stderr
    code, stderr = run_main("image_sample.py", ["--model_path", run / "model000004.pt", "--control", "size=8 size=16",
                                                "--log_dir", tmp_path / "twice"])
    assert code == 2 and stderr.endswith("error: --control 'size=8 size=16': size is given twice; give each of crop, "
                                         "flip and size once") and "\n" not in stderr, stderr


@pytest.mark.parametrize("flags, message", [
    (["--control_cond", "crop"], "need a network trained in sigma space (--objective edm or --arch edm2)"),
    (["--objective", "edm", "--control_dropout_prob", "0.1"], "--control_dropout_prob 0.1 needs --control_cond"),
    (["--objective", "edm", "--random_resize", "1,0.5"], "--random_resize '1,0.5': expected lo,hi"),
    (["--objective", "edm", "--control_cond", "zoom"], "--control_cond 'zoom'"),
])
def test_bad_control_training_flags(tmp_path, flags, message):
    images = make_image_folder(str(tmp_path / "images"), count=4, size=16)
    code, stderr = run_main("image_train.py", ["--data_dir", images, "--log_dir", tmp_path / "bad", "--image_size", 16,
                                               "--channel_mult", "1,2", "--batch_size", 2, "--max_steps", 1, *flags])
    assert code == 2 and message in stderr and "\n" not in stderr
