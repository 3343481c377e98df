"""Classifier-free guidance: label dropout in training, the null-label embedding, the guided prediction in every
sampler, and both scripts end to end."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from launch import call_main, read_samples, run_main

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import logger
from guided_diffusion.sampling import samplers
from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.guidance.compose import Guidance, null_labels
from guided_diffusion.sampling.dispatch import SamplerOptions, noise_levels
from guided_diffusion.script_util import (
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    null_label,
)
from guided_diffusion.train_util import TrainLoop

TINY = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
            num_head_channels=16, class_cond=True, num_classes=4, diffusion_steps=20, noise_schedule="cosine")


def _model_and_diffusion(**changes):
    args = model_and_diffusion_defaults()
    args.update(TINY, **changes)
    torch.manual_seed(0)
    return create_model_and_diffusion(**args)


def test_label_dropout_adds_a_null_label_row():
    model, _ = _model_and_diffusion(class_dropout_prob=0.1)
    assert model.label_emb.weight.shape[0] == 5
    assert _model_and_diffusion()[0].label_emb.weight.shape[0] == 4
    assert null_label(4, 0.1) == 4 and null_label(4, 0.0) is None
    model(torch.randn(2, 3, 8, 8), torch.tensor([3, 5]), y=torch.tensor([4, 0]))  # the null label is accepted


@pytest.mark.parametrize("changes, message", [
    (dict(class_dropout_prob=1.0), "--class_dropout_prob must be in [0, 1), got 1.0"),
    (dict(class_dropout_prob=-0.1), "--class_dropout_prob must be in [0, 1), got -0.1"),
    (dict(class_dropout_prob=0.1, class_cond=False), "--class_dropout_prob 0.1 needs a class-conditional model"),
])
def test_bad_label_dropout(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _model_and_diffusion(**changes)


class LabelSpy(torch.nn.Module):
    """Records the labels it is called with; its output depends on a weight, so there is a gradient."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y.clone())
        return x * self.weight


@pytest.mark.parametrize("probability", [0.0, 0.3, 0.9])
def test_training_replaces_labels_by_the_null_label(tmp_path, probability):
    _, diffusion = _model_and_diffusion()
    spy = LabelSpy()
    logger.configure(dir=str(tmp_path), format_strs=[])
    loop = TrainLoop(model=spy, diffusion=diffusion, data=None, batch_size=400, microbatch=-1, lr=1e-3,
                     ema_rate="0.9", log_interval=100, save_interval=100, resume_checkpoint="",
                     label_dropout=probability, null_label=4)
    labels = torch.arange(400) % 4
    torch.manual_seed(0)
    loop.forward_backward(torch.zeros(400, 3, 2, 2), {"y": labels})
    seen = spy.seen[0]
    dropped = seen == 4
    assert torch.equal(seen[~dropped], labels[~dropped])  # kept labels are unchanged
    assert abs(float(dropped.float().mean()) - probability) < 0.07
    with pytest.raises(ValueError, match="label dropout needs the model's null label"):
        TrainLoop(model=spy, diffusion=diffusion, data=None, batch_size=4, microbatch=-1, lr=1e-3, ema_rate="0.9",
                  log_interval=1, save_interval=1, resume_checkpoint="", label_dropout=0.1)


def _toy_model_fn(x, t, y=None):
    """eps = x / 10 + y, and 3 "variance" channels = y + 100: easy to check combinations of."""
    offset = y.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.cat([x / 10 + offset, x * 0 + offset + 100], dim=1)


def test_guided_denoiser_and_process_prediction_are_the_cfg_combination():
    betas = gd.get_named_beta_schedule("cosine", 20)
    diffusion = gd.GaussianDiffusion(betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)
    plain = Denoiser(diffusion, _toy_model_fn)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 4
    y, null = torch.tensor([1, 2]), torch.tensor([7, 7])
    d_c, d_u = plain(x, 3.0, y=y), plain(x, 3.0, y=null)
    for scale in (0.0, 1.0, 2.5):
        guided = Guidance(cfg_scale=scale, null_label=7).bind(plain)
        torch.testing.assert_close(guided(x, 3.0, y=y), d_u + scale * (d_c - d_u), rtol=1e-12, atol=1e-12)
    # DDPM/DDIM see it as the model's eps at each timestep; the variance channels are the conditional ones.
    t = torch.tensor([5, 9])
    x_t = torch.randn(2, 3, 4, 4)
    cond, uncond = _toy_model_fn(x_t, t, y), _toy_model_fn(x_t, t, null)
    got = Guidance(cfg_scale=2.5, null_label=7).process_model_fn(plain)(x_t, t, y=y)
    torch.testing.assert_close(got[:, :3], uncond[:, :3] + 2.5 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(got[:, 3:], cond[:, 3:])
    torch.testing.assert_close(Guidance(cfg_scale=0.0, null_label=7).process_model_fn(plain)(x_t, t, y=y), uncond)
    calls = []
    counted = Denoiser(diffusion, lambda x, t, y=None: calls.append(len(x)) or _toy_model_fn(x, t, y))
    Guidance(cfg_scale=2.5, null_label=7).bind(counted)(x, 3.0, y=y)
    Guidance(cfg_scale=0.0, null_label=7).bind(counted)(x, 3.0, y=y)
    assert calls == [4, 2]  # one doubled batch; scale 0 is the unconditional pass alone
    with pytest.raises(ValueError, match="classifier-free guidance needs labels y"):
        null_labels(7)({})


def test_guidance_scale_one_is_the_conditional_model_through_heun():
    model, diffusion = _model_and_diffusion(class_dropout_prob=0.2)
    for p in model.parameters():  # ADM zero-initialises the output layer: give the labels an effect
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    denoiser = Denoiser(diffusion, lambda x, t, y=None: model(x, t, y=y))
    sigmas = noise_levels(denoiser, SamplerOptions(sampler="heun", steps=4))
    x_T = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 5
    labels = torch.tensor([1, 3])
    null = null_label(4, 0.2)
    with torch.no_grad():
        conditional = samplers.sample_heun(lambda x, s: denoiser(x, s, y=labels), x_T, sigmas)
        runs = {scale: samplers.sample_heun(lambda x, s: Guidance(cfg_scale=scale, null_label=null).bind(denoiser)(
            x, s, y=labels), x_T, sigmas) for scale in (1.0, 4.0)}
    torch.testing.assert_close(runs[1.0], conditional)
    assert (runs[4.0] - conditional).abs().max() > 1e-2


def test_cfg_scale_needs_a_model_trained_with_label_dropout():
    with pytest.raises(ValueError, match=re.escape("--cfg_scale 3.0 needs a class-conditional model trained with "
                                                   "label dropout")):
        Guidance(cfg_scale=3.0, null_label=None)


def test_train_with_label_dropout_and_sample_with_cfg_through_the_scripts(trained, tmp_path):
    """The session's model trained with --class_dropout_prob 0.25 (tests/launch.py), sampled by image_sample.py."""
    checkpoint = trained["cfg"]
    with open(os.path.join(os.path.dirname(checkpoint), "args.json")) as f:
        assert json.load(f)["class_dropout_prob"] == 0.25
    state = torch.load(checkpoint, map_location="cpu")
    assert state["label_emb.weight"].shape[0] == 5  # 4 classes and the null label
    outputs = {}
    for scale in (1.0, 3.0):
        out = tmp_path / f"heun_{scale}"
        # The model flags (and --class_dropout_prob) come from the args.json beside the checkpoint.
        call_main("image_sample.py", ["--model_path", checkpoint, "--num_samples", 3, "--batch_size", 2,
                                      "--cfg_scale", scale, "--classes", "2", "--log_dir", out, "--sampler", "heun",
                                      "--steps", 3])
        samples = read_samples(out / "samples_3x16x16x3.npz")
        assert samples["arr_0"].shape == (3, 16, 16, 3) and samples["arr_1"].tolist() == [2, 2, 2]
        assert os.path.exists(out / "samples_3x16x16x3.png")
        outputs[scale] = samples["arr_0"].astype(np.int64)
    assert np.abs(outputs[1.0] - outputs[3.0]).mean() > 0.5  # mean change in uint8 levels


def test_cfg_scale_on_a_model_without_label_dropout_is_a_one_line_error(trained, tmp_path):
    code, stderr = run_main("image_sample.py", ["--model_path", trained["model"], "--num_samples", 1, "--cfg_scale", 2,
                                                "--log_dir", tmp_path])
    assert code == 2 and stderr.startswith(
        "image_sample.py: error: --cfg_scale 2.0 needs a class-conditional model trained with label dropout")
