"""EDM-style samplers: the denoiser view of trained models, the samplers, guidance in sigma space, the flags,
and every sampler through the scripts on tiny checkpoints trained in the test."""

from __future__ import annotations

import math
import re
import types

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.sampling import samplers
from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.guidance.compose import Guidance, classifier_cond_fn
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.dispatch import SamplerOptions, noise_levels, run_sampler
from guided_diffusion.sampling.pipeline import sampler_options, sampling_defaults

from launch import call_main, classifier_probability, read_samples, run_main
from tiny import TinyClassifier, TinyNet, make_diffusion

# ----- toy models ---------------------------------------------------------------------------------------------

MEANS = torch.tensor([[-0.5, 0.0], [0.5, 0.2], [0.0, -0.6]], dtype=torch.float64)
STD = 0.1


def mixture_denoise(x: torch.Tensor, sigma) -> torch.Tensor:
    """The exact D(x; sigma) of an equal-weight mixture of N(MEANS[k], STD^2 I) in 2-d."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
    var = STD**2 + sigma**2
    diff = x.double()[:, None, :] - MEANS[None]
    log_p = -(diff**2).sum(-1) / (2 * var[:, :, 0])
    resp = (log_p - log_p.max(dim=1, keepdim=True).values).exp()
    resp = resp / resp.sum(dim=1, keepdim=True)
    return (resp[:, :, None] * (MEANS[None] + STD**2 / var * diff)).sum(1).to(x.dtype)


def mixture_eps_model(diffusion: gd.GaussianDiffusion):
    """The exact eps-prediction of the mixture at the trained timesteps of `diffusion` (no rescaling)."""
    ab = torch.from_numpy(diffusion.alphas_cumprod)
    trained = list(diffusion.timestep_map)

    def model(x_t, t, **_):
        index = torch.tensor([trained.index(int(v)) for v in t])
        sigma = ((1 - ab[index]) / ab[index]).sqrt()[:, None]
        x = x_t.double() * (sigma**2 + 1).sqrt()
        return ((x - mixture_denoise(x, sigma[:, 0])) / sigma).float()

    return model


def _diffusion(steps=100, var=gd.ModelVarType.LEARNED_RANGE, **kwargs):
    return make_diffusion(steps=steps, var=var, **kwargs)


def _learned(var):
    return var in (gd.ModelVarType.LEARNED, gd.ModelVarType.LEARNED_RANGE)


# ----- the denoiser view reproduces DDIM --------------------------------------------------------------------

@pytest.mark.parametrize("mean, var, schedule, respacing, rescale", [
    (gd.ModelMeanType.EPSILON, gd.ModelVarType.LEARNED_RANGE, "cosine", "ddim10", False),
    (gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_LARGE, "linear", "7,3", True),
    (gd.ModelMeanType.START_X, gd.ModelVarType.FIXED_SMALL, "cosine", "12", False),
], ids=["eps-learned-cosine", "eps-linear-rescaled", "x0-cosine"])
@pytest.mark.parametrize("clip", [False, True])
def test_euler_on_the_models_levels_is_ddim(mean, var, schedule, respacing, rescale, clip):
    torch.manual_seed(0)
    model = TinyNet(out_channels=6 if _learned(var) else 3)
    diffusion = _diffusion(mean=mean, var=var, schedule=schedule, respacing=respacing, rescale=rescale)
    kwargs = {"y": torch.tensor([0, 1, 3])}
    shape = (3, 3, 8, 8)
    want = diffusion.ddim_sample_loop(model, shape, clip_denoised=clip, model_kwargs=kwargs, eta=0.0,
                                      rng=SampleRNG([4, 5, 6]))
    options = SamplerOptions(sampler="euler", sigma_schedule="model", clip_denoised=clip)
    got = run_sampler(diffusion, model, shape, kwargs, SampleRNG([4, 5, 6]), options)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("clip", [False, True])
def test_classifier_guidance_in_sigma_space_is_adms_condition_score(clip):
    """D + sigma^2 c_in cond_fn(c_in x) with Euler on the model's levels equals guided DDIM step by step."""
    torch.manual_seed(1)
    model, classifier = TinyNet(out_channels=6), TinyClassifier()
    diffusion = _diffusion(respacing="ddim8")
    cond_fn = classifier_cond_fn(classifier, scale=3.0)
    kwargs = {"y": torch.tensor([2, 0])}
    want = diffusion.ddim_sample_loop(model, (2, 3, 8, 8), clip_denoised=clip, model_kwargs=kwargs,
                                      cond_fn=cond_fn, rng=SampleRNG([0, 1]))
    options = SamplerOptions(sampler="euler", sigma_schedule="model", clip_denoised=clip)
    got = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options, Guidance(cond_fn=cond_fn))
    unguided = run_sampler(diffusion, model, (2, 3, 8, 8), kwargs, SampleRNG([0, 1]), options)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert (got - unguided).abs().max() > 1e-2


# ----- the denoiser view --------------------------------------------------------------------------------------

def test_denoiser_levels_timesteps_and_outputs():
    diffusion = _diffusion(steps=100, respacing="ddim5", rescale=True)  # trained timesteps 0, 20, .., 80
    seen = []

    def model(x_t, t):
        seen.append(t.clone())
        return torch.cat([x_t * 0.5, torch.ones_like(x_t)], dim=1)  # eps = x_t / 2, variance channels 1

    denoiser = Denoiser(diffusion, model)
    levels = denoiser.sigmas
    ab = torch.from_numpy(diffusion.alphas_cumprod)
    assert torch.allclose(levels, ((1 - ab) / ab).sqrt()) and (levels.diff() > 0).all()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    # Nearest level in sigma: just below the midpoint of levels 1 and 2 rounds down, just above rounds up.
    mid = (levels[1] + levels[2]) / 2
    sigma = torch.stack([levels[3], mid * 0.999, mid * 1.001])
    out = denoiser(x, sigma)
    assert torch.allclose(seen[-1], torch.tensor([60.0, 20.0, 40.0]) * (1000 / 100))  # rescaled, via timestep_map
    c_in = (sigma**2 + 1).rsqrt().reshape(-1, 1, 1, 1)
    assert torch.allclose(out, x - sigma.reshape(-1, 1, 1, 1) * (c_in * x).float().double() * 0.5)
    assert torch.equal(denoiser.round_sigma(sigma), levels[[3, 1, 2]])
    assert float(denoiser.round_sigma(torch.tensor(1e6))) == denoiser.sigma_max
    # Clipping, and x_0-predicting models.
    assert Denoiser(diffusion, model, clip_denoised=True)(x * 100, levels[0]).abs().max() <= 1
    x0_diffusion = _diffusion(steps=100, mean=gd.ModelMeanType.START_X, var=gd.ModelVarType.FIXED_LARGE)
    assert torch.equal(Denoiser(x0_diffusion, lambda x_t, t: torch.full_like(x_t, 0.25))(x, 3.0),
                       torch.full_like(x, 0.25))
    with pytest.raises(ValueError, match="need a model predicting eps or x_0, not PREVIOUS_X"):
        Denoiser(_diffusion(mean=gd.ModelMeanType.PREVIOUS_X), model)


def test_fractional_timesteps_interpolate_in_log_sigma():
    diffusion = _diffusion(steps=100, respacing="ddim5")  # trained timesteps 0, 20, 40, 60, 80
    denoiser = Denoiser(diffusion, lambda x, t: x, fractional=True)
    levels = denoiser.sigmas
    geometric_mid = (levels[2] * levels[3]).sqrt()
    quarter = levels[0] ** 0.75 * levels[1] ** 0.25
    sigma = torch.stack([levels[2], geometric_mid, quarter, levels[4] * 10, levels[0] / 10])
    t = denoiser.timestep(sigma)
    assert torch.allclose(t, torch.tensor([40.0, 50.0, 5.0, 80.0, 0.0]), atol=1e-4)
    assert torch.equal(denoiser.round_sigma(geometric_mid), geometric_mid)  # no rounding to trained levels
    rounded = Denoiser(diffusion, lambda x, t: x)
    assert torch.equal(rounded.timestep(sigma), torch.tensor([40, 40, 0, 80, 0]))


def test_karras_levels_on_a_respaced_model_are_its_trained_levels():
    diffusion = _diffusion(steps=1000, respacing="50")
    seen = set()

    def model(x_t, t):
        seen.update(int(v) for v in t)
        return torch.zeros_like(x_t)

    denoiser = Denoiser(diffusion, model)
    options = SamplerOptions(sampler="heun", steps=12, sigma_max=80.0)
    sigmas = noise_levels(denoiser, options)
    assert len(sigmas) == 13 and sigmas[-1] == 0 and (sigmas.diff() <= 0).all()
    assert all(float(s) in denoiser.sigmas.tolist() for s in sigmas[:-1])
    assert sigmas[0] == denoiser.round_sigma(torch.tensor(80.0)) and sigmas[-2] == denoiser.sigma_min
    run_sampler(diffusion, model, (2, 3, 4, 4), {}, SampleRNG([0, 1]), options)
    assert seen and seen <= set(diffusion.timestep_map)
    # The karras ramp itself (EDM eq. 5).
    ramp = samplers.karras_sigmas(3, 0.5, 8.0, rho=2.0)
    assert torch.allclose(ramp, torch.tensor([8.0, ((8**0.5 + 0.5**0.5) / 2) ** 2, 0.5], dtype=torch.float64))


# ----- the samplers ---------------------------------------------------------------------------------------------

def test_heun_converges_to_the_probability_flow_ode_solution():
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20
    fine = samplers.sample_euler(mixture_denoise, x_T, samplers.append_zero(samplers.karras_sigmas(5000, 0.002, 20)))
    errors = {}
    for name, steps in (("heun", 100), ("euler", 100), ("heun_coarse", 25)):
        sigmas = samplers.append_zero(samplers.karras_sigmas(steps, 0.002, 20))
        solver = samplers.sample_euler if name == "euler" else samplers.sample_heun
        errors[name] = float((solver(mixture_denoise, x_T, sigmas) - fine).abs().max())
    assert errors["heun"] < 2e-3, errors
    assert errors["heun"] < errors["euler"] / 5, errors  # second order beats first order
    assert errors["heun_coarse"] > errors["heun"] * 4, errors  # the error shrinks like 1/N^2 (16x here)


def test_dpmpp_2m_is_more_accurate_than_euler():
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20
    reference = samplers.sample_heun(mixture_denoise, x_T, samplers.append_zero(samplers.karras_sigmas(500, 0.002, 20)))
    sigmas = samplers.append_zero(samplers.karras_sigmas(30, 0.002, 20))
    dpm = float((samplers.sample_dpmpp_2m(mixture_denoise, x_T, sigmas) - reference).abs().max())
    euler = float((samplers.sample_euler(mixture_denoise, x_T, sigmas) - reference).abs().max())
    assert dpm < euler / 3, (dpm, euler)


class CountingRNG(SampleRNG):
    def __init__(self, seeds):
        super().__init__(seeds)
        self.draws = 0

    def randn_like(self, x):
        self.draws += 1
        return super().randn_like(x)


def test_churn_adds_noise_only_inside_s_tmin_s_tmax():
    sigmas = samplers.append_zero(samplers.karras_sigmas(10, 0.01, 10.0))
    inside = [float(s) for s in sigmas[:-1] if 0.1 <= s <= 1.0]
    assert 0 < len(inside) < 9
    evaluated = []

    def denoise(x, sigma):
        evaluated.append(float(sigma))
        return mixture_denoise(x, sigma)

    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    rng = CountingRNG(range(4))
    churned = samplers.sample_heun(denoise, x_T, sigmas, rng=rng, s_churn=20.0, s_tmin=0.1, s_tmax=1.0)
    assert rng.draws == len(inside)
    gamma = math.sqrt(2) - 1  # min(S_churn / N, sqrt(2) - 1)
    for i, s in enumerate(sigmas[:-1].tolist()):  # each step's first evaluation is at sigma_hat
        first = evaluated.pop(0)
        assert first == pytest.approx(s * (1 + gamma) if s in inside else s)
        if sigmas[i + 1] > 0:
            evaluated.pop(0)
    plain = samplers.sample_heun(mixture_denoise, x_T, sigmas)
    outside = samplers.sample_heun(mixture_denoise, x_T, sigmas, rng=CountingRNG(range(4)), s_churn=20.0,
                                   s_tmin=20.0, s_tmax=50.0)
    assert torch.equal(outside, plain) and not torch.allclose(churned, plain)


def test_churn_rounds_sigma_hat_to_trained_levels():
    denoiser = Denoiser(_diffusion(steps=100), lambda x_t, t: torch.zeros_like(x_t))
    evaluated = []

    def denoise(x, sigma):
        evaluated.append(float(sigma))
        return denoiser(x, sigma)

    sigmas = noise_levels(denoiser, SamplerOptions(steps=6))
    x_T = torch.randn(1, 3, 2, 2, dtype=torch.float64) * 80
    samplers.sample_heun(denoise, x_T, sigmas, rng=SampleRNG([0]), s_churn=5.0, s_noise=1.003,
                         round_sigma=denoiser.round_sigma)
    assert len(evaluated) == 2 * 6 - 1
    assert set(evaluated) <= set(denoiser.sigmas.tolist())
    assert set(evaluated) - set(sigmas.tolist())  # some evaluations were at a raised sigma_hat


@pytest.mark.parametrize("name", ["euler", "heun", "edm_stochastic", "dpmpp_2m"])
def test_samples_depend_only_on_their_own_seed(name):
    torch.manual_seed(0)
    model, classifier = TinyNet(out_channels=6), TinyClassifier()
    diffusion = _diffusion(steps=50)
    y = torch.tensor([0, 1, 2, 3])
    options = SamplerOptions(sampler=name, steps=5, s_churn=10.0 if name == "edm_stochastic" else 0.0)
    cond_fn = classifier_cond_fn(classifier, 2.0)

    def sample(start, count):
        rng = SampleRNG.for_range(seed=7, start=start, count=count)
        return run_sampler(diffusion, model, (count, 3, 8, 8), {"y": y[start:start + count]}, rng, options,
                           Guidance(cond_fn=cond_fn))

    whole = sample(0, 4)
    torch.manual_seed(123)  # the global generator must not matter
    parts = torch.cat([sample(0, 1), sample(1, 3)])
    assert torch.allclose(whole, parts, atol=1e-5)
    assert not torch.allclose(whole[0], whole[1])


# ----- guidance -----------------------------------------------------------------------------------------------

class MixturePosteriorClassifier(torch.nn.Module):
    """The exact noisy classifier p(y | x_t, t) of the mixture, class 0 = component 0, class 1 = components 1, 2."""

    def __init__(self, diffusion: gd.GaussianDiffusion):
        super().__init__()
        ab = torch.from_numpy(diffusion.alphas_cumprod)
        self.sigmas = ((1 - ab) / ab).sqrt()

    def forward(self, x_t, t):
        sigma = self.sigmas[t][:, None]
        x = x_t.double() * (sigma**2 + 1).sqrt()
        log_p = -((x[:, None, :] - MEANS[None]) ** 2).sum(-1) / (2 * (STD**2 + sigma**2))
        return torch.stack([log_p[:, 0], torch.logsumexp(log_p[:, 1:], dim=1)], dim=1).float()


def test_classifier_guidance_with_the_exact_classifier_gives_the_class_conditional_denoiser():
    """With scale 1 and the true p(y | x, sigma), D + sigma^2 grad log p(y | x) = E[x_0 | x, y] (Bayes)."""
    diffusion = _diffusion(steps=1000, var=gd.ModelVarType.FIXED_LARGE)
    denoiser = Denoiser(diffusion, mixture_eps_model(diffusion))
    classifier = MixturePosteriorClassifier(diffusion)
    guided = Guidance(cond_fn=classifier_cond_fn(classifier, 1.0)).bind(denoiser)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for j in (50, 300, 700):
        sigma = denoiser.sigmas[j]
        x_sigma = x * (0.3 + sigma)
        want = MEANS[0] + STD**2 / (STD**2 + sigma**2) * (x_sigma - MEANS[0])
        got = guided(x_sigma, sigma, y=torch.zeros(6, dtype=torch.long))
        assert torch.allclose(got, want, atol=1e-4 * (1 + float(sigma)), rtol=1e-4), j

    # Sampling with it: the samples land in class 0.
    y = torch.zeros(200, dtype=torch.long)
    probability = {}
    for scale in (0.0, 1.0):
        guidance = Guidance(cond_fn=classifier_cond_fn(classifier, scale) if scale else None)
        options = SamplerOptions(sampler="heun", steps=10, clip_denoised=False)
        samples = run_sampler(diffusion, denoiser.model_fn, (200, 2), {"y": y}, SampleRNG(range(200)), options,
                              guidance)
        probability[scale] = float(torch.softmax(classifier(samples, torch.zeros(200, dtype=torch.long)), 1)[:, 0]
                                   .mean())
    assert probability[0.0] < 0.5 and probability[1.0] > 0.95, probability


# ----- options ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"sampler": "plms"}, "--sampler 'plms': choose one of ddpm, ddim, euler, heun, edm_stochastic, dpmpp_2m"),
    ({"sampler": "heun", "steps": 0}, "--steps must be an integer >= 1, got 0"),
    ({"sampler": "ddim", "eta": -0.5}, "--eta must be >= 0, got -0.5"),
    ({"sampler": "heun", "sigma_min": 5.0, "sigma_max": 1.0}, "--sigma_min 5.0 must be below --sigma_max 1.0"),
    ({"sampler": "heun", "sigma_min": 0.0}, "--sigma_min must be > 0"),
    ({"sampler": "heun", "rho": 0.0}, "--rho must be > 0"),
    ({"sampler": "edm_stochastic", "s_churn": -1.0}, "--s_churn must be >= 0"),
    ({"sampler": "edm_stochastic"}, "--sampler edm_stochastic needs --s_churn > 0"),
    ({"sampler": "edm_stochastic", "s_churn": 1.0, "s_tmin": 2.0, "s_tmax": 1.0}, "--s_tmin 2.0 must not exceed"),
    ({"sampler": "edm_stochastic", "s_churn": 1.0, "s_noise": 0.0}, "--s_noise must be > 0"),
    ({"sampler": "heun", "sigma_max": float("nan")}, "--sigma_max must be a number"),
    ({"sampler": "heun", "use_ddim": True}, "--use_ddim True conflicts with --sampler heun"),
    ({"sampler": "heun", "s_churn": 1.0}, "--s_churn 1.0 applies to --sampler edm_stochastic only"),
    ({"sigma_schedule": "vp"}, "--sigma_schedule 'vp': choose one of karras, model"),
])
def test_bad_options(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplerOptions(**changes)


def test_defaults_keep_the_original_samplers_and_sigma_range_must_meet_the_model():
    args = types.SimpleNamespace(progress=False, **{k: v for k, v in sampling_defaults().items() if k != "progress"})
    assert sampler_options(args).name == "ddpm"
    args.use_ddim = True
    assert sampler_options(args).name == "ddim"
    denoiser = Denoiser(_diffusion(steps=100), lambda x, t: x)
    with pytest.raises(ValueError, match="leave no range inside the model's noise levels"):
        noise_levels(denoiser, SamplerOptions(sampler="heun", sigma_min=1e4, sigma_max=2e4))


# ----- the scripts --------------------------------------------------------------------------------------------

SCRIPT_SAMPLERS = {
    "ddpm": ["--timestep_respacing", "4"],
    "ddim": ["--timestep_respacing", "ddim4"],
    "euler": ["--steps", "4"],
    "heun": ["--steps", "10"],
    "edm_stochastic": ["--steps", "3", "--s_churn", "10", "--s_tmin", "0.05", "--s_tmax", "50", "--s_noise", "1.003"],
    "dpmpp_2m": ["--steps", "4", "--sigma_min", "0.01", "--sigma_max", "50", "--rho", "5"],
}


@pytest.fixture(scope="module")
def heun_samples(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("heun")
    call_main("image_sample.py", ["--model_path", trained["model"], "--num_samples", 8, "--batch_size", 8,
                                  "--classes", "0-3", "--log_dir", folder, "--sampler", "heun",
                                  *SCRIPT_SAMPLERS["heun"]])
    return str(folder / "samples_8x16x16x3.npz")


@pytest.mark.parametrize("name", [n for n in SCRIPT_SAMPLERS if n != "heun"])
def test_image_sample_with_each_sampler(trained, heun_samples, tmp_path, name):
    call_main("image_sample.py", ["--model_path", trained["model"], "--num_samples", 2, "--batch_size", 2,
                                  "--classes", "0-3", "--log_dir", tmp_path, "--sampler", name,
                                  *SCRIPT_SAMPLERS[name]])
    out = read_samples(tmp_path / "samples_2x16x16x3.npz")
    heun = read_samples(heun_samples)
    assert out["arr_0"].shape == (2, 16, 16, 3) and out["arr_0"].dtype == np.uint8
    assert list(out["arr_1"]) == [0, 1]
    assert np.abs(out["arr_0"].astype(int) - heun["arr_0"][:2]).max() > 0


def test_classifier_sample_with_heun_raises_the_requested_class(trained, heun_samples, tmp_path):
    call_main("classifier_sample.py", ["--model_path", trained["model"], "--classifier_path", trained["classifier"],
                                       "--classifier_scale", 20, "--num_samples", 8, "--batch_size", 8,
                                       "--classes", "0-3", "--log_dir", tmp_path, "--sampler", "heun",
                                       *SCRIPT_SAMPLERS["heun"]])
    guided = read_samples(tmp_path / "samples_8x16x16x3.npz")
    unguided = read_samples(heun_samples)
    assert list(guided["arr_1"]) == list(unguided["arr_1"]) == [0, 1, 2, 3] * 2
    assert classifier_probability(trained["classifier"], guided) > classifier_probability(trained["classifier"], unguided) + 0.05


def test_super_res_sample_with_dpmpp_2m(trained, heun_samples, tmp_path):
    call_main("super_res_sample.py", ["--model_path", trained["sr"], "--base_samples", heun_samples,
                                      "--num_samples", 2, "--batch_size", 2, "--log_dir", tmp_path,
                                      "--sampler", "dpmpp_2m", *SCRIPT_SAMPLERS["dpmpp_2m"]])
    out = read_samples(tmp_path / "samples_2x64x64x3.npz")
    assert out["arr_0"].shape == (2, 64, 64, 3)
    assert list(out["arr_1"]) == list(read_samples(heun_samples)["arr_1"][:2])


def test_cascade_sample_with_edm_stochastic(trained, tmp_path):
    call_main("cascade_sample.py", [
        "--base_model_path", trained["model"], "--classifier_path", trained["classifier"], "--classifier_scale", 2,
        "--sr_model_path", trained["sr"], "--num_samples", 2, "--batch_size", 2, "--log_dir", tmp_path,
        "--sampler", "edm_stochastic", *SCRIPT_SAMPLERS["edm_stochastic"],
    ])
    base = read_samples(tmp_path / "base" / "samples_2x16x16x3.npz")
    upsampled = read_samples(tmp_path / "upsampled" / "samples_2x64x64x3.npz")
    assert upsampled["arr_0"].shape == (2, 64, 64, 3)
    assert np.array_equal(base["arr_1"], upsampled["arr_1"])


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "heun", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["--sampler", "unipc"], "--sampler 'unipc': choose one of"),
    (["--sampler", "euler", "--sigma_min", "2", "--sigma_max", "1"], "--sigma_min 2.0 must be below --sigma_max 1.0"),
])
def test_bad_sampler_flags_give_one_line_errors(trained, tmp_path, flags, message):
    code, stderr = run_main("image_sample.py", ["--model_path", trained["model"], "--num_samples", 1,
                                                "--log_dir", tmp_path, *flags])
    assert code == 2 and message in stderr and "\n" not in stderr, stderr
