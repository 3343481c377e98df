"""The training objectives of EDM (Karras et al. 2022) and EDM2 (Karras et al. 2024) in sigma space, and EDM2's
learning-rate schedule.

EDM (Section 5, Table 1): ln sigma ~ N(P_mean, P_std^2), x_noisy = x + sigma n, and the loss
lambda(sigma) ||D(x_noisy; sigma) - x||^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which
gives the network's raw output unit-variance targets at every level. EDM2 (Eq. 21) divides by a learned
uncertainty u(sigma) and adds it: lambda / e^u ||D - x||^2 + u, so the levels' losses stay balanced over training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from guided_diffusion.networks import edm
from guided_diffusion.processes.denoiser import net_labels
from guided_diffusion.nn import mean_flat


@dataclass(frozen=True)
class LogNormalSigma:
    """The training distribution of noise levels: ln sigma ~ N(p_mean, p_std^2) (EDM Table 1)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if not (math.isfinite(self.p_mean) and math.isfinite(self.p_std) and self.p_std > 0):
            raise ValueError(f"--p_mean {self.p_mean} / --p_std {self.p_std}: need finite values and p_std > 0")

    def sample(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return (torch.randn(n, device=device) * self.p_std + self.p_mean).exp()

    def quartile(self, sigma: torch.Tensor) -> torch.Tensor:
        """Which quarter of the distribution each sigma falls in (0 = least noise), for loss logging."""
        z = (sigma.double().log() - self.p_mean) / self.p_std
        return (4 * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).long().clamp(0, 3)


@dataclass(frozen=True)
class EDMConditioning:
    """How a network trained in sigma space sees its input (EDM Table 1): c_in(sigma) x and c_noise = ln(sigma) / 4.
    Noisy classifiers trained with --objective edm take the same, so guidance can feed them."""

    sigma_data: float = 0.5

    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """c_in(sigma), as the networks' preconditioning computes it (edm.input_scale)."""
        return edm.input_scale(sigma, self.sigma_data)

    def noise_label(self, sigma: torch.Tensor) -> torch.Tensor:
        """ln(sigma) / 4, as the networks' preconditioning computes it (edm.noise_label)."""
        return edm.noise_label(sigma)


class EDMLoss:
    """Per-sample EDM loss of a denoiser net(x, sigma, labels, **kwargs) (EDM Section 5); with
    learned_uncertainty, EDM2's loss with the network's log-variance u(sigma) (EDM2 Eq. 21)."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 learned_uncertainty: bool = False):
        if not (math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"--sigma_data {sigma_data}: must be a positive number")
        self.sigma_data = sigma_data
        self.noise = LogNormalSigma(p_mean, p_std)
        self.learned_uncertainty = learned_uncertainty

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def elementwise(self, net: torch.nn.Module, images: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                    y: torch.Tensor | None = None, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss per element, the squared error per element) for given levels and unit noise."""
        sigma4 = sigma.float().reshape(-1, 1, 1, 1)
        noisy = images + noise * sigma4
        labels = net_labels(net, y)
        if self.learned_uncertainty:
            denoised, logvar = net(noisy, sigma4.flatten(), labels, return_logvar=True, **model_kwargs)
        else:
            denoised, logvar = net(noisy, sigma4.flatten(), labels, **model_kwargs), None
        squared = (denoised.float() - images) ** 2
        loss = self.weight(sigma4) * squared
        if logvar is not None:
            loss = loss / logvar.float().exp() + logvar.float()
        return loss, squared

    def __call__(self, net: torch.nn.Module, images: torch.Tensor, **model_kwargs) -> tuple[dict, torch.Tensor]:
        """({"loss", "mse"} per sample, the levels drawn)."""
        sigma = self.noise.sample(len(images), images.device)
        loss, squared = self.elementwise(net, images, sigma, torch.randn_like(images), **model_kwargs)
        return {"loss": mean_flat(loss), "mse": mean_flat(squared)}, sigma


def edm2_learning_rate(nimg: int, ref_lr: float, ref_images: float = 0, rampup_images: float = 0) -> float:
    """EDM2's learning-rate schedule, counted in images: ref_lr / sqrt(max(nimg / ref_images, 1)) (inverse square
    root decay after ref_images; none when 0), times a linear ramp-up min(nimg / rampup_images, 1) (none when 0)."""
    lr = ref_lr
    if ref_images > 0:
        lr /= math.sqrt(max(nimg / ref_images, 1))
    if rampup_images > 0:
        lr *= min(nimg / rampup_images, 1)
    return lr
