"""Any trained GaussianDiffusion model seen as an EDM denoiser D(x; sigma).

Karras et al. 2022 (EDM), section 2 and Table 1 ("VP" / iDDPM column, appendix C.3.4): a VP process x_t =
sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is the variance-exploding process x = x_t / sqrt(alpha_bar_t)
= x_0 + sigma eps at the noise levels u_t = sqrt((1 - alpha_bar_t) / alpha_bar_t). The network sees
c_in x = x / sqrt(sigma^2 + 1) (= x_t) and the timestep whose level is nearest to sigma, and
D(x; sigma) = x - sigma eps_hat (c_skip = 1, c_out = -sigma), or the predicted x_0 for x_0-predicting models.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from guided_diffusion.gaussian_diffusion import GaussianDiffusion, ModelMeanType
from guided_diffusion.nn import broadcast, per_sample


def process_sigmas(diffusion: GaussianDiffusion) -> torch.Tensor:
    """The (respaced) process's noise levels u_j = sqrt((1 - alpha_bar_j) / alpha_bar_j), increasing in j."""
    alphas_cumprod = torch.from_numpy(diffusion.alphas_cumprod)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


class Denoiser:
    """D(x; sigma) of a network trained with `diffusion` (respaced or not), called as model_fn(x_t, t, **kwargs).

    sigmas are the process's levels u_j in increasing order (j = step index of the process); the network gets
    the timestep of the nearest level (as EDM's round_sigma), or with fractional=True the fractional timestep
    interpolated linearly in log sigma between the two neighbouring levels. clip_denoised clips D to [-1, 1].
    """

    def __init__(self, diffusion: GaussianDiffusion, model_fn: Callable, clip_denoised: bool = False,
                 fractional: bool = False):
        if diffusion.model_mean_type not in (ModelMeanType.EPSILON, ModelMeanType.START_X):
            raise ValueError("the EDM samplers and guidance in sigma space (--cfg_scale, --guide_model_path, "
                             "--classifier_interval) need a model predicting eps or x_0, not "
                             f"{diffusion.model_mean_type.name}: use --sampler ddpm or ddim without them")
        self.diffusion = diffusion
        self.model_fn = model_fn
        self.clip_denoised = clip_denoised
        self.fractional = fractional
        self.sigmas = process_sigmas(diffusion)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        # The timestep the network was trained with at each level (timestep_map, rescaled if need be).
        self.trained_timesteps = diffusion._model_timesteps(torch.arange(diffusion.num_timesteps)).double()

    def prior_std(self, sigma: float) -> float:
        """x at the first level is z / c_in(sigma) = z sqrt(sigma^2 + 1): x_T ~ N(0, I) in the network's input
        space, as ADM draws it (EDM's sigma z is nearly so at large sigma)."""
        return math.sqrt(sigma**2 + 1)

    def nearest_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index j of the level u_j nearest to each sigma (distance in sigma, as EDM)."""
        sigmas = self.sigmas.to(sigma.device)
        upper = torch.searchsorted(sigmas, sigma).clamp(max=len(sigmas) - 1)
        lower = (upper - 1).clamp(min=0)
        return torch.where(sigma - sigmas[lower] <= sigmas[upper] - sigma, lower, upper)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The level the network is evaluated at for sigma: the nearest trained level, or sigma itself when
        timesteps are fractional."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.fractional:
            return sigma
        return self.sigmas.to(sigma.device)[self.nearest_index(sigma)]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's timestep input for per-sample noise levels sigma [N]."""
        if not self.fractional:
            index = self.nearest_index(sigma)
            return self.diffusion._model_timesteps(index)
        log_levels = self.sigmas.log().to(sigma.device)
        trained = self.trained_timesteps.to(sigma.device)
        if len(log_levels) == 1:
            return trained.expand(len(sigma)).float()
        log_sigma = sigma.clamp(self.sigma_min, self.sigma_max).log()
        upper = torch.searchsorted(log_levels, log_sigma).clamp(1, len(log_levels) - 1)
        lower = upper - 1
        frac = (log_sigma - log_levels[lower]) / (log_levels[upper] - log_levels[lower])
        return (trained[lower] + frac * (trained[upper] - trained[lower])).float()

    @property
    def predicts_x0(self) -> bool:
        return self.diffusion.model_mean_type == ModelMeanType.START_X

    def sigma_of_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The level u_j (float64) of the network timesteps t handed out by the process (inverse of timestep)."""
        trained, t = self.trained_timesteps.to(t.device), t.double()
        index = torch.searchsorted(trained, t).clamp(max=len(trained) - 1)
        if not torch.equal(trained[index], t):
            raise ValueError(f"timesteps {t.tolist()} are not all among the process's {len(trained)} timesteps")
        return self.sigmas.to(t.device)[index]

    def with_extra(self, x: torch.Tensor, sigma, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x; sigma) in x's dtype, the network's extra output channels such as a learned variance);
        sigma is a number or one level per sample."""
        sigma = per_sample(sigma, x)
        c_in = broadcast((sigma**2 + 1).rsqrt(), x)
        output = self.model_fn((c_in * x).float(), self.timestep(sigma), **model_kwargs)
        extra = output[:, x.shape[1]:]
        output = output[:, :x.shape[1]].to(x.dtype)
        denoised = output if self.predicts_x0 else x - broadcast(sigma, x) * output
        return (denoised.clamp(-1, 1) if self.clip_denoised else denoised), extra

    def __call__(self, x: torch.Tensor, sigma, **model_kwargs) -> torch.Tensor:
        """D(x; sigma) in x's dtype; sigma is a number or one level per sample."""
        return self.with_extra(x, sigma, **model_kwargs)[0]


def net_labels(net: torch.nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a denoiser network takes for integer labels y: the integers for an ADM network in EDM's
    preconditioning (its null label is an embedding row), else one-hot rows [N, label_dim] in which the null
    label label_dim (label dropout) is the zero row, the unconditional embedding of EDM/EDM2 networks; None for
    an unconditional network."""
    net = getattr(net, "module", net)  # DistributedDataParallel
    if y is None:
        return None
    if getattr(net, "integer_labels", False):
        return y if net.class_cond else None
    label_dim = getattr(net, "label_dim", 0)
    return torch.nn.functional.one_hot(y.long(), label_dim + 1)[:, :label_dim].float() if label_dim else None


class PrecondDenoiser:
    """D(x; sigma) of a network that is a denoiser itself (EDM's and EDM2's Precond, an ADM network trained with
    --objective edm: net(x, sigma, labels, **kwargs)), at continuous sigma; labels as net_labels. timestep maps
    sigma to what a noisy ADM classifier expects (classifier_timestep), when one guides this model."""

    sigmas = None  # no discrete levels: --sigma_schedule model does not apply

    def __init__(self, net: torch.nn.Module, timestep: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.net = net
        self.label_dim = getattr(net, "label_dim", 0)
        # The levels the network supports (EDM records 0 and inf; EDM2 none): the sampler's range applies.
        self.sigma_min, self.sigma_max = getattr(net, "sigma_min", 0.0), getattr(net, "sigma_max", math.inf)
        self._timestep = timestep

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64)

    def prior_std(self, sigma: float) -> float:
        """x at the first level is sigma z (EDM)."""
        return sigma

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        if self._timestep is None:
            raise ValueError("classifier guidance of an EDM/EDM2 model needs the classifier's noise schedule")
        return self._timestep(sigma)

    def with_extra(self, x: torch.Tensor, sigma, y: torch.Tensor | None = None,
                   **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = per_sample(sigma, x)
        denoised = self.net(x.float(), sigma.float(), net_labels(self.net, y), **model_kwargs).to(x.dtype)
        return denoised, x[:, :0]

    def __call__(self, x: torch.Tensor, sigma, **model_kwargs) -> torch.Tensor:
        return self.with_extra(x, sigma, **model_kwargs)[0]


def classifier_timestep(diffusion: GaussianDiffusion) -> Callable[[torch.Tensor], torch.Tensor]:
    """sigma -> the timestep of an ADM process (a noisy classifier's) whose level is nearest to sigma."""
    return Denoiser(diffusion, lambda x, t: x).timestep
