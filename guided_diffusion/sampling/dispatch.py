"""Which sampler runs, with which options and guidance: the sampler flags (SamplerOptions), the noise levels of
a run, and the lookup that runs the original DDPM/DDIM loops or a sampler of samplers.SAMPLERS."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from guided_diffusion import dist_util

from guided_diffusion.sampling import samplers
from guided_diffusion.processes.denoiser import Denoiser, process_sigmas
from guided_diffusion.gaussian_diffusion import GaussianDiffusion
from guided_diffusion.guidance.compose import Guidance
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.script_util import range_error

SIGMA_SCHEDULES = ("karras", "model")


@dataclass
class SamplerOptions:
    """How to run the reverse process; its defaults are the sampling scripts' flag defaults.

    ddpm and ddim step through the (possibly respaced) process as the original. The samplers of
    samplers.SAMPLERS (euler, heun, edm_stochastic, dpmpp_2m) run over the model's denoiser D(x; sigma) at the
    noise levels of sigma_schedule: "karras" (EDM eq. 5 with steps, sigma_min, sigma_max and rho, the range
    clamped to the model's levels and each step rounded to a trained level) or "model" (every level of the
    process, as chosen by --timestep_respacing). edm_stochastic adds EDM's churn (s_churn, s_tmin, s_tmax,
    s_noise).
    """

    use_ddim: bool = False
    clip_denoised: bool = True
    eta: float = 0.0
    progress: bool = False
    sampler: str = ""  # "" = ddim if use_ddim else ddpm
    steps: int = 18
    sigma_schedule: str = "karras"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self):
        if self.sampler not in ("", *sampler_names()):
            raise ValueError(f"--sampler {self.sampler!r}: choose one of {', '.join(sampler_names())}")
        if self.use_ddim and self.sampler not in ("", "ddim"):
            raise ValueError(f"--use_ddim True conflicts with --sampler {self.sampler}: drop --use_ddim")
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"--sigma_schedule {self.sigma_schedule!r}: choose one of {', '.join(SIGMA_SCHEDULES)}")
        for flag in ("steps", "eta", "sigma_min", "sigma_max", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            problem = range_error(flag, getattr(self, flag))  # each flag's own range, as the command line checks it
            if problem:
                raise ValueError(problem)
        checks = [  # what involves several flags
            (self.sigma_min < self.sigma_max,
             f"--sigma_min {self.sigma_min} must be below --sigma_max {self.sigma_max}"),
            (self.s_tmin <= self.s_tmax, f"--s_tmin {self.s_tmin} must not exceed --s_tmax {self.s_tmax}"),
            (self.sampler != "edm_stochastic" or self.s_churn > 0,
             "--sampler edm_stochastic needs --s_churn > 0 (with 0 it is --sampler heun)"),
            (self.sampler == "edm_stochastic" or self.s_churn == 0,
             f"--s_churn {self.s_churn} applies to --sampler edm_stochastic only"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def name(self) -> str:
        """The sampler that runs."""
        return self.sampler or ("ddim" if self.use_ddim else "ddpm")

    @classmethod
    def flag_defaults(cls) -> dict:
        """The sampler flags and their defaults (progress is a script flag of its own)."""
        return {f.name: f.default for f in fields(cls) if f.name != "progress"}


def noise_levels(denoiser: Denoiser, options: SamplerOptions) -> torch.Tensor:
    """The decreasing noise levels sigma_0 > ... > sigma_{N-1} > 0 = sigma_N of a sigma-space sampler."""
    if options.sigma_schedule == "model":
        if denoiser.sigmas is None:
            raise ValueError("--sigma_schedule model needs a model with discrete noise levels (an ADM model); "
                             "this one is a denoiser at continuous sigma: use --sigma_schedule karras")
        return samplers.append_zero(denoiser.sigmas.flip(0))
    low, high = max(options.sigma_min, denoiser.sigma_min), min(options.sigma_max, denoiser.sigma_max)
    if low >= high:
        raise ValueError(f"--sigma_min {options.sigma_min} and --sigma_max {options.sigma_max} leave no range "
                         f"inside the model's noise levels [{denoiser.sigma_min:.4g}, {denoiser.sigma_max:.4g}]")
    return samplers.append_zero(denoiser.round_sigma(samplers.karras_sigmas(options.steps, low, high, options.rho)))


def visited_levels(model, options: SamplerOptions) -> torch.Tensor:
    """The noise levels a run evaluates the network at (before churn), to check guidance intervals against;
    model: an ADM model's GaussianDiffusion, or a denoiser at continuous sigma (PrecondDenoiser)."""
    if not isinstance(model, GaussianDiffusion):
        _check_sigma_sampler(options)
        return noise_levels(model, options)
    if options.name in PROCESS_SAMPLERS:
        return process_sigmas(model)
    return noise_levels(Denoiser(model, lambda x, t: x), options)


def step_count(model, options: SamplerOptions) -> int:
    """How many steps (callbacks) a run takes (model as for visited_levels)."""
    if isinstance(model, GaussianDiffusion) and options.name in PROCESS_SAMPLERS:
        return model.num_timesteps
    return len(visited_levels(model, options)) - 1


def _check_sigma_sampler(options: SamplerOptions) -> None:
    if options.name in PROCESS_SAMPLERS:
        raise ValueError(f"--sampler {options.name} steps through an ADM process; this model is a denoiser at "
                         f"continuous sigma: use --sampler {', '.join(samplers.SAMPLERS)}")


def _process_loop(diffusion: GaussianDiffusion, model_fn: Callable, shape, model_kwargs: dict, rng: SampleRNG,
                  options: SamplerOptions, guidance: Guidance, callback: samplers.Callback | None,
                  device: torch.device) -> torch.Tensor:
    """The original DDPM or DDIM loop; CFG and autoguidance through the guided model_fn, classifier guidance as
    ADM's mean shift (DDPM) or score correction (DDIM), each gated by its interval."""
    if guidance.mixes or not guidance.classifier_interval.always:  # these need the sigma of each timestep
        main = Denoiser(diffusion, model_fn)
        model_fn, cond_fn = guidance.process_model_fn(main), guidance.process_cond_fn(main)
    else:
        cond_fn = guidance.cond_fn
    x_t = rng.randn(shape, device=device)  # x_T, drawn as the loops would
    common = dict(noise=x_t, clip_denoised=options.clip_denoised, model_kwargs=model_kwargs, cond_fn=cond_fn,
                  device=device, progress=options.progress, rng=rng)
    steps = PROCESS_SAMPLERS[options.name](diffusion, model_fn, shape, common, options)
    sigmas = process_sigmas(diffusion).flip(0).to(device)
    for i, out in enumerate(steps):
        if callback is not None:  # x in the variance-exploding view: x_t / sqrt(alpha_bar) at the step's input
            callback(i, sigmas[i], x_t * (sigmas[i] ** 2 + 1).sqrt(), out["pred_xstart"])
        x_t = out["sample"]
    return x_t


def _ddpm(diffusion: GaussianDiffusion, model_fn: Callable, shape, common: dict, options: SamplerOptions):
    return diffusion.p_sample_loop_progressive(model_fn, shape, **common)


def _ddim(diffusion: GaussianDiffusion, model_fn: Callable, shape, common: dict, options: SamplerOptions):
    return diffusion.ddim_sample_loop_progressive(model_fn, shape, eta=options.eta, **common)


# The original loops, step by step: (diffusion, model_fn, shape, loop arguments, options) -> iterator of steps.
PROCESS_SAMPLERS = {"ddpm": _ddpm, "ddim": _ddim}


def sampler_names() -> tuple[str, ...]:
    """The --sampler choices: the original loops, then the sigma-space samplers."""
    return (*PROCESS_SAMPLERS, *samplers.SAMPLERS)


def run_sampler(diffusion: GaussianDiffusion, model_fn: Callable, shape, model_kwargs: dict, rng: SampleRNG,
                options: SamplerOptions, guidance: Guidance | None = None,
                callback: samplers.Callback | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Samples [N, C, H, W] in [-1, 1] from per-sample random streams, with optional guidance, on `device`
    (default: this rank's)."""
    guidance = guidance or Guidance()
    device = device or dist_util.dev()
    if options.name in PROCESS_SAMPLERS:
        return _process_loop(diffusion, model_fn, shape, model_kwargs, rng, options, guidance, callback, device)
    return run_sigma_sampler(Denoiser(diffusion, model_fn), shape, model_kwargs, rng, options, guidance, callback,
                             device)


def run_sigma_sampler(main, shape, model_kwargs: dict, rng: SampleRNG, options: SamplerOptions,
                      guidance: Guidance | None = None, callback: samplers.Callback | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """A sampler of samplers.SAMPLERS over the main denoiser (a Denoiser of an ADM model, or a PrecondDenoiser of
    an EDM/EDM2 network) with optional guidance; x starts at prior_std(sigma_0) z."""
    _check_sigma_sampler(options)
    guidance = guidance or Guidance()
    device = device or dist_util.dev()
    guided = guidance.bind(main, options.clip_denoised)
    sigmas = noise_levels(main, options)
    x = rng.randn(shape, device=device, dtype=torch.float64) * main.prior_std(float(sigmas[0]))
    sampler = samplers.SAMPLERS[options.name]
    own = dict(s_churn=options.s_churn, s_tmin=options.s_tmin, s_tmax=options.s_tmax, s_noise=options.s_noise,
               round_sigma=main.round_sigma)
    accepted = inspect.signature(sampler).parameters
    x = sampler(lambda x, sigma: guided(x, sigma, **model_kwargs), x, sigmas, rng=rng, callback=callback,
                progress=options.progress, **{k: v for k, v in own.items() if k in accepted})
    return x.float()
