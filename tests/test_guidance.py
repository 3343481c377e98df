"""Guidance (guided_diffusion/guidance/compose.py): intervals, network calls saved outside them, autoguidance, the
composition against closed-form denoisers, DDPM/DDIM through the same module, and the scripts' guidance flags."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.guidance.compose import Guidance, Interval, broadcast, per_sample
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sampler

from launch import read_samples, run_main, run_script
from tiny import TinyNet, make_diffusion

# ----- intervals --------------------------------------------------------------------------------------------


def test_interval_edges_and_parsing():
    interval = Interval.parse("0.5,2", "cfg_interval")
    sigma = torch.tensor([0.5, 0.5000001, 2.0, 2.0000001, 1.0], dtype=torch.float64)
    assert interval.contains(sigma).tolist() == [False, True, True, False, True]  # lo < sigma <= hi
    assert Interval.parse("", "cfg_interval").always and Interval.parse("0,inf", "x").always
    assert Interval.parse("1,inf", "x") == Interval(1.0, math.inf)


@pytest.mark.parametrize("text, message", [
    ("2,1", "--cfg_interval '2,1': lo must be below hi"),
    ("1,1", "--cfg_interval '1,1': lo must be below hi"),
    ("1", "--cfg_interval '1': expected two noise levels lo,hi"),
    ("a,b", "--cfg_interval 'a,b': expected two noise levels lo,hi"),
    ("-1,2", "--cfg_interval '-1,2': lo and hi must be numbers with lo >= 0"),
    ("nan,2", "--cfg_interval 'nan,2': lo and hi must be numbers with lo >= 0"),
])
def test_bad_intervals(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Interval.parse(text, "cfg_interval")


def test_an_interval_must_reach_a_noise_level_and_needs_its_guidance():
    levels = torch.tensor([10.0, 3.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    Interval(2.9, 3.0).check_reaches(levels, "cfg_interval")  # hi is inclusive
    with pytest.raises(ValueError, match=re.escape("--guide_interval 3,5 contains none of the sampler's noise "
                                                   "levels (0.2 to 10)")):
        Interval(3.0, 5.0).check_reaches(levels, "guide_interval")
    with pytest.raises(ValueError, match="--cfg_interval is given without its guidance: it needs --cfg_scale"):
        Guidance(cfg_interval=Interval(1, 2))
    with pytest.raises(ValueError, match="--guide_interval is given without its guidance: it needs --guide_model"):
        Guidance(guide_interval=Interval(1, 2))
    with pytest.raises(ValueError, match="--classifier_interval is given without its guidance: it needs --classif"):
        Guidance(classifier_interval=Interval(1, 2))
    with pytest.raises(ValueError, match="--guide_interval .* needs --guide_model_path and --guide_scale other than"):
        Guidance(guide=lambda x, sigma, **kw: x, guide_interval=Interval(1, 2))
    with pytest.raises(ValueError, match="--guide_scale 2.0 needs a guide model: --guide_model_path"):
        Guidance(guide_scale=2.0)


# ----- closed-form denoisers -----------------------------------------------------------------------------------
# Data x_0 ~ N(m_y, s^2 I) per class y: D(x; sigma) = m_y + s^2 / (s^2 + sigma^2) (x - m_y) exactly.

MEANS = torch.tensor([[0.6, -0.2, 0.1], [-0.4, 0.5, -0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)  # row 2: null


def gaussian_denoise(x, sigma, y, std):
    m = MEANS[y].reshape(len(y), -1, 1, 1)
    return m + std**2 / (std**2 + broadcast(sigma, x) ** 2) * (x - m)


class ClosedForm:
    """A main-model stand-in with a closed-form D that counts its calls (and the samples they held)."""

    def __init__(self, std: float):
        self.std = std
        self.calls: list[int] = []

    def with_extra(self, x, sigma, y):
        self.calls.append(len(x))
        sigma = per_sample(sigma, x)
        return gaussian_denoise(x, sigma, y, self.std), x[:, :0]

    def __call__(self, x, sigma, y):
        return self.with_extra(x, sigma, y)[0]

    def timestep(self, sigma):
        return sigma * 10


class CountingCondFn:
    """cond_fn = scale (m_y - x_t) t / 10: a closed-form 'gradient' whose inputs are easy to check."""

    def __init__(self, scale: float):
        self.scale = scale
        self.calls: list[int] = []

    def __call__(self, x_t, t, y):
        self.calls.append(len(x_t))
        return self.scale * (MEANS[y].reshape(len(y), -1, 1, 1).float() - x_t) * broadcast(t, x_t).float() / 10


def test_composition_equals_the_formula():
    main, guide, cond_fn = ClosedForm(0.3), ClosedForm(0.6), CountingCondFn(0.7)
    guidance = Guidance(cfg_scale=2.0, null_label=2, guide=guide, guide_scale=1.5, cond_fn=cond_fn)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    y = torch.tensor([0, 1, 1, 0])
    for clip in (False, True):
        for sigma in (0.05, 0.8, 7.0):
            got = guidance.bind(main, clip_denoised=clip)(x, sigma, y=y)
            s = torch.full((4,), sigma, dtype=torch.float64)
            d, d_u, d_g = gaussian_denoise(x, s, y, 0.3), gaussian_denoise(x, s, torch.full_like(y, 2), 0.3), \
                gaussian_denoise(x, s, y, 0.6)
            mixed = d + (2.0 - 1) * (d - d_u) + (1.5 - 1) * (d - d_g)
            if clip:
                mixed = mixed.clamp(-1, 1)
            c_in = 1 / math.sqrt(sigma**2 + 1)
            want = mixed + sigma**2 * c_in * cond_fn((c_in * x).float(), s * 10, y).double()
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_autoguidance_scale_one_is_the_main_model_and_zero_the_guide():
    main, guide = ClosedForm(0.3), ClosedForm(0.6)
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0])
    one = Guidance(guide=guide, guide_scale=1.0).bind(main)(x, 0.7, y=y)
    torch.testing.assert_close(one, main(x, 0.7, y=y), rtol=0, atol=0)
    assert guide.calls == []  # w = 1 never evaluates the guide
    zero = Guidance(guide=guide, guide_scale=0.0).bind(main)(x, 0.7, y=y)
    torch.testing.assert_close(zero, guide(x, 0.7, y=y), rtol=1e-12, atol=1e-12)


def test_no_network_calls_outside_the_intervals():
    main, guide, cond_fn = ClosedForm(0.3), ClosedForm(0.6), CountingCondFn(1.0)
    guidance = Guidance(cfg_scale=3.0, null_label=2, cfg_interval=Interval(1.0, 5.0), guide=guide, guide_scale=2.0,
                        guide_interval=Interval(0.5, 2.0), cond_fn=cond_fn, classifier_interval=Interval(0.0, 1.0))
    guided = guidance.bind(main)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    sigma = torch.tensor([0.3, 1.0, 1.5, 6.0], dtype=torch.float64)  # 1.0 sits on both a hi and a lo edge
    got = guided(x, sigma, y=y)
    # main: every sample; its null-label pass (CFG, (1, 5]): 1.5 only; guide ((0.5, 2]): 1.0 and 1.5;
    # classifier ((0, 1]): 0.3 and 1.0.
    assert main.calls == [4, 1] and guide.calls == [2] and cond_fn.calls == [2]
    for k in range(4):  # each sample as if alone
        alone = guided(x[k:k + 1], sigma[k:k + 1], y=y[k:k + 1])
        torch.testing.assert_close(got[k:k + 1], alone, rtol=1e-12, atol=1e-12)
    main.calls.clear(), guide.calls.clear(), cond_fn.calls.clear()
    plain = guided(x, 10.0, y=y)  # outside every interval: the plain conditional denoiser, one call
    assert main.calls == [4] and guide.calls == [] and cond_fn.calls == []
    torch.testing.assert_close(plain, main(x, 10.0, y=y))


# ----- DDPM, DDIM and the sigma-space samplers through the same module -----------------------------------------

@pytest.mark.parametrize("respacing, rescale", [(None, False), ("ddim7", False), ("13", True)])
def test_sigma_of_timestep_inverts_the_networks_timesteps(respacing, rescale):
    diffusion = make_diffusion(100, "linear", respacing=respacing, rescale=rescale)
    denoiser = Denoiser(diffusion, lambda x, t: x)
    timesteps = diffusion._model_timesteps(torch.arange(diffusion.num_timesteps))
    torch.testing.assert_close(denoiser.sigma_of_timestep(timesteps), denoiser.sigmas, rtol=0, atol=0)
    with pytest.raises(ValueError, match="are not all among the process's"):
        denoiser.sigma_of_timestep(timesteps[:2].double() + 0.5)


class Counted:
    def __init__(self, fn):
        self.fn, self.samples = fn, 0

    def __call__(self, x, t, **kwargs):
        self.samples += len(x)
        return self.fn(x, t, **kwargs)


def _diffusion(respacing: str):
    return make_diffusion(100, "linear", var=gd.ModelVarType.LEARNED_RANGE, respacing=respacing)


def _net(seed: int) -> TinyNet:
    """eps and 3 learned-variance channels; label 4 is the null label."""
    torch.manual_seed(seed)
    return TinyNet(out_channels=6, num_classes=5)


def test_ddim_with_cfg_and_autoguidance_equals_euler_on_the_models_levels():
    """DDIM (eta 0) is Euler on the model's levels: with the same guidance the two paths agree."""
    diffusion = _diffusion("ddim10")
    model, guide_net = _net(0), _net(1)
    guidance = Guidance(cfg_scale=2.0, null_label=4, guide=Denoiser(_diffusion("100"), guide_net), guide_scale=1.5,
                        guide_interval=Interval(0.5, 50))
    kwargs = {"y": torch.tensor([0, 3])}
    runs, steps = {}, {}
    for name in ("ddim", "euler"):
        options = SamplerOptions(sampler=name, sigma_schedule="model", clip_denoised=False)
        steps[name] = []
        runs[name] = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options, guidance,
                                 callback=lambda *step, name=name: steps[name].append(step))
    torch.testing.assert_close(runs["ddim"], runs["euler"], rtol=1e-4, atol=1e-4)
    # The callbacks see the same steps: (i, sigma_i, the step's input x_i, its denoised estimate).
    assert len(steps["ddim"]) == len(steps["euler"]) == 10
    for (i, sigma, x, denoised), (j, sigma_e, x_e, denoised_e) in zip(steps["ddim"], steps["euler"]):
        assert i == j and float(sigma) == pytest.approx(float(sigma_e))
        torch.testing.assert_close(x.double(), x_e.double(), rtol=1e-4, atol=1e-4 * (1 + float(sigma)))
        torch.testing.assert_close(denoised.double(), denoised_e.double(), rtol=1e-4, atol=1e-4)
    plain = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]),
                        SamplerOptions(sampler="ddim", clip_denoised=False))
    assert (runs["ddim"] - plain).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_interval_in_the_original_samplers(sampler):
    diffusion = _diffusion("20")
    model = _net(0)
    options = SamplerOptions(sampler=sampler, clip_denoised=True)
    kwargs = {"y": torch.tensor([0, 3])}
    cond_fn = Counted(lambda x_t, t, y: torch.ones_like(x_t) * 0.5)
    levels = Denoiser(diffusion, model).sigmas

    def sample(interval):
        cond_fn.samples = 0
        out = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options,
                          Guidance(cond_fn=cond_fn, classifier_interval=interval))
        return out, cond_fn.samples

    always, calls_always = sample(Interval())
    everywhere, calls_everywhere = sample(Interval(0.0, float(levels.max())))
    torch.testing.assert_close(everywhere, always, rtol=0, atol=0)  # the original mean shift / score correction
    assert calls_always == calls_everywhere == 2 * 20
    inside = Interval(float(levels[4]), float(levels[12]))  # levels 5..12: 8 of the 20 steps
    part, calls_part = sample(inside)
    assert calls_part == 2 * 8
    plain = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options)
    assert (part - plain).abs().max() > 1e-3 and (part - always).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "edm_stochastic"])
def test_cfg_interval_saves_the_unconditional_passes_in_every_sampler(sampler):
    diffusion = _diffusion("10")
    model = Counted(_net(0))
    options = SamplerOptions(sampler=sampler, steps=6, s_churn=5.0 if sampler == "edm_stochastic" else 0.0)
    kwargs = {"y": torch.tensor([0, 3])}
    run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options)
    plain = model.samples
    model.samples = 0
    run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options,
                Guidance(cfg_scale=3.0, null_label=4))
    assert model.samples == 2 * plain  # always on: a null-label pass per evaluation
    model.samples = 0
    run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options,
                Guidance(cfg_scale=3.0, null_label=4, cfg_interval=Interval(1.0, 20.0)))
    assert plain < model.samples < 2 * plain


# ----- the scripts ----------------------------------------------------------------------------------------------

def _fake_guide(tmp_path, checkpoint, **changes) -> str:
    """A copy of a checkpoint whose args.json says something else (to test the guide checks)."""
    folder = tmp_path / "_".join(f"{k}{v}" for k, v in changes.items())
    folder.mkdir()
    shutil.copy(checkpoint, folder / "model.pt")
    with open(os.path.join(os.path.dirname(checkpoint), "args.json")) as f:
        flags = json.load(f)
    flags.update(changes)
    with open(folder / "args.json", "w") as f:
        json.dump(flags, f)
    return str(folder / "model.pt")


def test_guidance_flag_errors_are_one_line(trained, tmp_path):
    cfg = trained["cfg"]
    base = ["--model_path", cfg, "--num_samples", 2, "--log_dir", tmp_path / "out", "--progress", False]
    cases = [
        (["--guide_model_path", _fake_guide(tmp_path, cfg, image_size=32), "--guide_scale", 2],
         "makes 32x32 images but the model makes 16x16"),
        (["--guide_model_path", _fake_guide(tmp_path, cfg, num_classes=7), "--guide_scale", 2],
         "is conditioned on 7 classes but the model on 4 classes"),
        (["--guide_model_path", tmp_path / "missing.pt"], "--guide_model_path not found"),
        (["--guide_flags", "--num_channels 8"], "--guide_flags is given without --guide_model_path"),
        (["--guide_scale", 2], "--guide_scale 2.0 needs a guide model: --guide_model_path"),
        (["--cfg_interval", "1,5"], "--cfg_interval is given without its guidance"),
        (["--cfg_scale", 2, "--cfg_interval", "5,1"], "--cfg_interval '5,1': lo must be below hi"),
        (["--cfg_scale", 2, "--cfg_interval", "500,900"], "--cfg_interval 500,900 contains none of the sampler's"),
        (["--guide_model_path", trained["cfg_early"], "--guide_scale", 2, "--guide_interval", "0,0.001",
          "--sampler", "heun"], "--guide_interval 0,0.001 contains none of the sampler's noise levels"),
        (["--sampler", "plms"], "--sampler 'plms': choose one of ddpm, ddim, euler, heun, edm_stochastic"),
    ]
    for extra, message in cases:
        code, stderr = run_main("image_sample.py", base + extra)
        assert code == 2 and message in stderr and "\n" not in stderr, (extra, stderr)
    code, stderr = run_main("classifier_sample.py", ["--model_path", cfg, "--classifier_path", trained["classifier"],
                                                     "--classifier_interval", "3,2", "--num_samples", 2])
    assert code == 2 and stderr == "classifier_sample.py: error: --classifier_interval '3,2': lo must be below hi"


def _sample_args(out, *extra):
    return ["--num_samples", 3, "--batch_size", 2, "--classes", "1,2", "--log_dir", out, "--progress", False,
            "--seed", 5, *extra]


SAMPLER_FLAGS = {
    "ddpm": ["--timestep_respacing", "8"],
    "ddim": ["--use_ddim", True, "--timestep_respacing", "ddim8"],
    "euler": ["--sampler", "euler", "--steps", 4],
    "heun": ["--sampler", "heun", "--steps", 3],
    "dpmpp_2m": ["--sampler", "dpmpp_2m", "--steps", 4],
    "edm_stochastic": ["--sampler", "edm_stochastic", "--steps", 3, "--s_churn", 10],
}


@pytest.mark.slow
def test_every_guidance_through_every_sampler_in_the_scripts(trained, tmp_path):
    """In-process runs of image_sample.py and classifier_sample.py: each guidance (with and without its
    interval) changes the samples, on every sampler, and an interval covering every level changes nothing."""
    guide = ["--guide_model_path", trained["cfg_early"], "--guide_scale", 3]
    classifier = ["--classifier_path", trained["classifier"], "--classifier_scale", 20]
    methods = {
        "none": ("image_sample.py", []),
        "cfg": ("image_sample.py", ["--cfg_scale", 4]),
        "cfg_all_levels": ("image_sample.py", ["--cfg_scale", 4, "--cfg_interval", "0,1e6"]),
        "cfg_interval": ("image_sample.py", ["--cfg_scale", 4, "--cfg_interval", "0.5,20"]),
        "autoguidance": ("image_sample.py", guide),
        "autoguidance_interval": ("image_sample.py", [*guide, "--guide_interval", "0.5,20"]),
        "classifier": ("classifier_sample.py", classifier),
        "classifier_interval": ("classifier_sample.py", [*classifier, "--classifier_interval", "0.5,20"]),
        "all": ("classifier_sample.py", [*classifier, "--cfg_scale", 4, *guide]),
    }
    for sampler, flags in SAMPLER_FLAGS.items():
        images = {}
        for method, (script, extra) in methods.items():
            out = tmp_path / sampler / method
            code, stderr = run_main(script, ["--model_path", trained["cfg"], *_sample_args(out, *flags, *extra)])
            assert code == 0, (sampler, method, stderr)
            samples = read_samples(out / "samples_3x16x16x3.npz")
            assert samples["arr_1"].tolist() == [1, 2, 1]
            images[method] = samples["arr_0"].astype(np.int64)
        np.testing.assert_array_equal(images["cfg_all_levels"], images["cfg"])
        for method in methods:
            if method not in ("none", "cfg_all_levels"):
                change = np.abs(images[method] - images["none"]).mean()
                assert change > 0.5, (sampler, method, change)  # mean change in uint8 levels


def test_guided_sampling_and_trajectory_as_users_run_it(trained, tmp_path):
    """One subprocess: autoguidance with an interval, CFG and a trajectory strip of the first 2 images."""
    out = tmp_path / "run"
    run_script("image_sample.py", ["--model_path", trained["cfg"], *_sample_args(out, "--sampler", "heun", "--steps",
                                                                                 3, "--cfg_scale", 2),
                                   "--guide_model_path", trained["cfg_early"], "--guide_scale", 2,
                                   "--guide_interval", "0.5,20", "--save_trajectory", 2])
    assert read_samples(out / "samples_3x16x16x3.npz")["arr_0"].shape == (3, 16, 16, 3)
    strip = np.asarray(Image.open(out / "trajectory.png"))
    # 2 rows (images) x 4 columns (3 Heun steps and the final image), 16 px tiles with 2 px gaps.
    assert strip.shape == (2 * 18 + 2, 4 * 18 + 2, 3)
    final = read_samples(out / "samples_3x16x16x3.npz")["arr_0"][:2]
    np.testing.assert_array_equal(strip[2:18, 3 * 18 + 2:3 * 18 + 18], final[0])
    np.testing.assert_array_equal(strip[20:36, 3 * 18 + 2:3 * 18 + 18], final[1])
