"""Samplers over a denoiser D(x; sigma), in the variance-exploding view x = x_0 + sigma n of EDM.

Every sampler has one signature, sampler(denoise, x, sigmas, rng, callback, progress, **its own options):
denoise(x, sigma) -> D, the start x at sigmas[0], decreasing noise levels ending in 0, the per-sample random
streams, and callback(i, sigma_i, x_i, denoised_i) at each step (its input and the denoised estimate there); it
returns x at sigma = 0. SAMPLERS holds them by name. Equations refer to Karras et al. 2022 (EDM) and Lu et al.
2022 (DPM-Solver++). All noise comes from a SampleRNG, so sample i depends only on its own seed.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from guided_diffusion.sampling.rng import SampleRNG, randn_like

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {}


def register(*names: str) -> Callable[[Sampler], Sampler]:
    """Add a sampler to SAMPLERS under each name."""

    def add(sampler: Sampler) -> Sampler:
        for name in names:
            SAMPLERS[name] = sampler
        return sampler

    return add


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0..N-1 (float64, without the final 0)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _steps(sigmas: torch.Tensor, progress: bool):
    return tqdm(range(len(sigmas) - 1), desc="sampling", leave=False, disable=not progress)


def _derivative(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, EDM eq. 4 with sigma(t) = t, s(t) = 1: (x - D(x; sigma)) / sigma."""
    return (x - denoised) / sigma


@register("euler")
@torch.no_grad()
def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, rng: SampleRNG | None = None,
                 callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE; on the model's own levels this is DDIM with eta = 0."""
    for i in _steps(sigmas, progress):
        denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback(i, sigmas[i], x, denoised)
        x = x + (sigmas[i + 1] - sigmas[i]) * _derivative(x, denoised, sigmas[i])
    return x


@register("heun", "edm_stochastic")
@torch.no_grad()
def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, rng: SampleRNG | None = None,
                callback: Callback | None = None, progress: bool = False, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                round_sigma: Callable[[torch.Tensor], torch.Tensor] = lambda s: s) -> torch.Tensor:
    """EDM Algorithm 2 (Algorithm 1 when s_churn = 0): Heun steps, an Euler last step to sigma = 0, and before
    each step with S_tmin <= sigma_i <= S_tmax a raise of the noise level to sigma_hat = sigma_i (1 + gamma),
    gamma = min(S_churn / N, sqrt(2) - 1), by fresh noise of std sqrt(sigma_hat^2 - sigma_i^2) S_noise.
    round_sigma maps sigma_hat to a level the network was trained at."""
    steps = len(sigmas) - 1
    for i in _steps(sigmas, progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma
        if gamma > 0:  # Algorithm 2, lines 4-6
            sigma_hat = round_sigma(sigma * (1 + gamma))
            x = x + (sigma_hat**2 - sigma**2).clamp(min=0).sqrt() * s_noise * randn_like(x, rng)
        denoised = denoise(x, sigma_hat)
        if callback is not None:
            callback(i, sigma_hat, x, denoised)
        d = _derivative(x, denoised, sigma_hat)  # lines 7-8
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next > 0:  # lines 9-11: the 2nd-order correction
            d_next = _derivative(x_next, denoise(x_next, sigma_next), sigma_next)
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x


@register("dpmpp_2m")
@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, rng: SampleRNG | None = None,
                    callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, with alpha = 1 and lambda = -log sigma: x_{i+1} =
    (sigma_{i+1} / sigma_i) x_i + (1 - e^{-h_i}) D_i, where D_i is the denoised output extrapolated from the
    previous step, (1 + 1/(2 r_i)) D(x_i) - 1/(2 r_i) D(x_{i-1}), r_i = h_{i-1} / h_i. The first and last steps
    (and steps after a repeated level) are first order, which is DDIM."""
    old_denoised, h_last = None, None
    for i in _steps(sigmas, progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if callback is not None:
            callback(i, sigma, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = torch.log(sigma / sigma_next)
        if old_denoised is not None and h_last > 0:
            ratio = h / (2 * h_last)  # 1 / (2 r_i)
            extrapolated = (1 + ratio) * denoised - ratio * old_denoised
        else:
            extrapolated = denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * extrapolated
        old_denoised, h_last = denoised, h
    return x
