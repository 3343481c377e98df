"""Small layer helpers shared by the networks: n-d convolutions, pooling, group norm, timestep embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class GroupNorm32(nn.GroupNorm):
    """Group norm computed in at least float32 precision (fp16 statistics are too coarse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The normalization layer of every ADM block: 32-group norm in float32."""
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-d convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return layers[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-d average pooling."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return layers[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    """A linear layer (named for symmetry with conv_nd)."""
    return nn.Linear(*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so that a residual branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embeddings [N, dim] of (possibly fractional) timesteps: cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch dimension."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def update_ema(target_params, source_params, rate: float = 0.99) -> None:
    """target = rate * target + (1 - rate) * source, in place (exponential moving average of weights)."""
    with torch.no_grad():
        for targ, src in zip(target_params, source_params):
            targ.mul_(rate).add_(src.to(targ.dtype), alpha=1 - rate)


def per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma (a number, 0-d or [N] tensor) as a float64 [N] tensor on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]).contiguous() if sigma.ndim == 0 else sigma


def broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v [N] shaped to broadcast against x [N, ...]."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))
