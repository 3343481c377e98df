"""Tiny networks and diffusion processes shared by the tests: fast enough to sample with in every test."""

from __future__ import annotations

import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps


class TinyNet(torch.nn.Module):
    """A random convolutional network with timestep and (optional) label inputs."""

    def __init__(self, out_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, out_channels, 3, padding=1)
        self.label = torch.nn.Embedding(num_classes, 16)

    def forward(self, x, t, y=None):
        h = self.conv1(x) + torch.sin(t.float() / 100.0)[:, None, None, None]
        if y is not None:
            h = h + self.label(y)[:, :, None, None]
        return self.conv2(torch.tanh(h))


class TinyClassifier(torch.nn.Module):
    """A random noisy classifier over 4 classes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x).mean(dim=(2, 3)) * (1 + torch.cos(t.float() / 50.0))[:, None]


def make_diffusion(steps: int = 20, schedule: str = "cosine", mean=gd.ModelMeanType.EPSILON,
                   var=gd.ModelVarType.FIXED_LARGE, loss=gd.LossType.MSE, respacing: str | None = None,
                   rescale: bool = False) -> gd.GaussianDiffusion:
    """A GaussianDiffusion, respaced when `respacing` is given."""
    betas = gd.get_named_beta_schedule(schedule, steps)
    kwargs = dict(betas=betas, model_mean_type=mean, model_var_type=var, loss_type=loss, rescale_timesteps=rescale)
    if respacing:
        return SpacedDiffusion(use_timesteps=space_timesteps(steps, respacing), **kwargs)
    return gd.GaussianDiffusion(**kwargs)
