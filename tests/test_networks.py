"""The ADM networks: released-checkpoint layouts, golden outputs, attention kernels, precision and options."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from guided_diffusion import script_util as su
from guided_diffusion.networks.attention import (
    QKVAttention,
    QKVAttentionLegacy,
    get_attention_backend,
    set_attention_backend,
)
from guided_diffusion.unet import EncoderUNetModel, SuperResModel, UNetModel

from reference import MANIFESTS, build, golden_network, kind_of, load_json, manifest_names


@pytest.fixture
def attention_backend():
    """Run a test under a chosen attention backend and restore the setting afterwards."""
    before = get_attention_backend()
    yield set_attention_backend
    set_attention_backend(before)


@pytest.mark.parametrize("name", manifest_names())
def test_released_checkpoint_layout(name):
    manifest = load_json(f"{MANIFESTS}/{name}.json")
    with torch.device("meta"):
        model, _, _ = build(kind_of(name), manifest["flags"])
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def _golden_output(part: str) -> tuple[np.ndarray, np.ndarray]:
    model, _, io, _ = golden_network(part)
    kwargs = {k: torch.from_numpy(io[k]) for k in ("y", "low_res") if k in io}
    with torch.no_grad():
        out = model(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]), **kwargs)
    return out.numpy(), io["out"]


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
@pytest.mark.parametrize("part", ["unet", "classifier", "sr"])
def test_golden_outputs(part, backend, attention_backend):
    # The U-Net uses the legacy head order, the classifier's attention pool the new one.
    attention_backend(backend)
    out, want = _golden_output(part)
    assert out.shape == want.shape
    assert np.abs(out - want).max() < 1e-4


def _random_qkv(batch=2, heads=3, ch=8, length=10, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.randn(batch, 3 * heads * ch, length, dtype=dtype), heads, ch


def _naive_attention(q, k, v):
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / q.shape[1] ** 0.5, dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v)


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_head_orders_against_definition(backend, attention_backend):
    attention_backend(backend)
    qkv, heads, ch = _random_qkv()
    batch, _, length = qkv.shape
    # Legacy: heads first, then q/k/v within each head.
    q, k, v = qkv.reshape(batch * heads, 3 * ch, length).split(ch, dim=1)
    want = _naive_attention(q, k, v).reshape(batch, -1, length)
    assert torch.allclose(QKVAttentionLegacy(heads)(qkv), want, atol=1e-5)
    # New order: q/k/v first, then heads.
    q, k, v = (part.reshape(batch * heads, ch, length) for part in qkv.chunk(3, dim=1))
    want = _naive_attention(q, k, v).reshape(batch, -1, length)
    assert torch.allclose(QKVAttention(heads)(qkv), want, atol=1e-5)


def test_auto_backend_picks_by_device_and_grad_mode(attention_backend, monkeypatch):
    import guided_diffusion.networks.attention as attention

    attention_backend("auto")
    called = []
    real = attention.F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        called.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    qkv, heads, _ = _random_qkv()
    with torch.no_grad():
        assert QKVAttention(heads)(qkv).shape == (2, qkv.shape[1] // 3, 10)
    assert called == []
    QKVAttention(heads)(qkv.requires_grad_(True))  # training on CPU: sdpa
    assert called == [1]
    with pytest.raises(ValueError, match="attention backend"):
        set_attention_backend("flash")


def _small_unet(**overrides) -> UNetModel:
    args = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, num_classes=5,
                use_scale_shift_norm=True, resblock_updown=True)
    args.update(overrides)
    return UNetModel(**args)


def _inputs(batch=2, size=16, channels=3, dims=2):
    torch.manual_seed(1)
    shape = (batch, channels) + (size,) * dims
    return torch.randn(shape), torch.tensor([3, 700][:batch]), torch.tensor([1, 4][:batch])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_low_precision_outputs_are_finite(dtype, backend, attention_backend):
    attention_backend(backend)
    model = _small_unet(use_new_attention_order=True)
    torch.nn.init.normal_(model.out[2].weight, std=0.1)  # zero-initialized layers would hide the torso
    x, t, y = _inputs()
    reference = model(x, t, y).detach()
    if dtype == torch.float16:
        model.convert_to_fp16()
        out = model(x, t, y)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == (torch.float32 if dtype == torch.float16 else torch.bfloat16)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1


def test_convert_to_fp16_keeps_norms_embeddings_and_head_in_fp32():
    model = _small_unet()
    model.convert_to_fp16()
    assert model.dtype == torch.float16
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.output_blocks[0][0].in_layers[2].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # group norm
    assert model.time_embed[0].weight.dtype == torch.float32
    assert model.label_emb.weight.dtype == torch.float32
    assert model.out[2].weight.dtype == torch.float32
    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _small_unet(dropout=0.0)
    for p in plain.parameters():  # non-zero everywhere so every gradient path is exercised
        torch.nn.init.normal_(p, std=0.05)
    checkpointed = _small_unet(use_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, t, y = _inputs()
    grads = []
    for model in (plain, checkpointed):
        xi = x.clone().requires_grad_(True)
        model.zero_grad()
        (model(xi, t, y) ** 2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dims", [1, 3])
def test_unet_in_1d_and_3d(dims):
    model = _small_unet(dims=dims, attention_resolutions=(), num_classes=None, channel_mult=(1, 2),
                        resblock_updown=False)
    x, t, _ = _inputs(size=8, dims=dims)
    out = model(x, t)
    assert out.shape == (2, 6) + x.shape[2:]


def test_unet_options_without_adaptive_norm_and_with_plain_resampling():
    model = _small_unet(use_scale_shift_norm=False, resblock_updown=False, conv_resample=False,
                        num_heads=2, num_head_channels=-1, num_heads_upsample=4, num_classes=None)
    assert model.output_blocks[0][1].num_heads == 4 and model.input_blocks[3][1].num_heads == 2
    x, t, _ = _inputs()
    assert model(x, t).shape == (2, 6, 16, 16)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_pools(pool):
    model = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
                             attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16,
                             use_scale_shift_norm=True, resblock_updown=True, pool=pool)
    x, t, _ = _inputs()
    assert model(x, t).shape == (2, 7)


def test_super_res_model_resizes_the_low_resolution_input():
    model = SuperResModel(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                          attention_resolutions=(), channel_mult=(1, 2))
    x, t, _ = _inputs()
    assert model(x, t, low_res=torch.randn(2, 3, 4, 4)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="low_res"):
        model(x, t)


def test_labels_required_exactly_for_class_conditional_models():
    model = _small_unet()
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with pytest.raises(ValueError, match="class-conditional"):
        _small_unet(num_classes=None)(x, t, y)


def test_classifier_channel_mult_builds_small_classifiers():
    args = su.classifier_defaults()
    args.update(image_size=16, classifier_width=64, classifier_depth=1, classifier_attention_resolutions="4",
                classifier_channel_mult="1,2", classifier_pool="adaptive", num_classes=10)
    classifier = su.create_classifier(**args)
    assert classifier.channel_mult == (1, 2)
    x, t, _ = _inputs()
    assert classifier(x, t).shape == (2, 10)
    args.update(image_size=32, classifier_channel_mult="")
    with pytest.raises(ValueError, match="classifier_channel_mult"):
        su.create_classifier(**args)


def _model_args(**overrides):
    args = su.model_and_diffusion_defaults()
    args.update(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8")
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(image_size=48, channel_mult=""), "no default --channel_mult for image size 48"),
        (dict(channel_mult="1;2"), "--channel_mult '1;2'"),
        (dict(attention_resolutions="8;4"), "--attention_resolutions '8;4'"),
        (dict(attention_resolutions="5"), "do not divide the image size 16"),
        (dict(num_head_channels=24), "num_head_channels=24 does not divide the 64 channels"),
        (dict(noise_schedule="cosin"), "unknown noise_schedule 'cosin'"),
        (dict(timestep_respacing="ddim1500"), "ddim1500"),
    ],
)
def test_bad_model_flags(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        su.create_model_and_diffusion(**_model_args(**overrides))


def test_bad_classifier_flags():
    args = su.classifier_defaults()
    args.update(classifier_pool="max")
    with pytest.raises(ValueError, match="unknown classifier pool 'max'.*adaptive, attention, spatial, spatial_v2"):
        su.create_classifier(**args)
    args.update(classifier_pool="attention", classifier_width=96)
    with pytest.raises(ValueError, match="--classifier_width 96"):
        su.create_classifier(**args)


def test_defaults_and_argparse_helpers():
    import argparse

    assert su.NUM_CLASSES == 1000
    defaults = su.model_and_diffusion_defaults()
    assert defaults["num_channels"] == 128 and defaults["attention_resolutions"] == "16,8"
    assert set(su.diffusion_defaults()) <= set(defaults)
    sr = su.sr_model_and_diffusion_defaults()
    assert sr["large_size"] == 256 and sr["small_size"] == 64 and "image_size" not in sr
    assert su.classifier_and_diffusion_defaults()["classifier_pool"] == "attention"
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    args = parser.parse_args(["--class_cond", "True", "--num_channels", "64", "--dropout", "0.1"])
    picked = su.args_to_dict(args, ["class_cond", "num_channels", "dropout"])
    assert picked == {"class_cond": True, "num_channels": 64, "dropout": 0.1}
    assert su.str2bool("no") is False
    with pytest.raises(argparse.ArgumentTypeError):
        su.str2bool("maybe")
