"""EDM's ImageNet-64 network (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"): ADM's U-Net as EDM retrained it ("DhariwalUNet"), under EDM's preconditioning (Table 1).

Its own small module rather than a conversion onto UNetModel: the two differ in more than names (the label
embedding is a bias-free linear map of one-hot labels added after the noise MLP, the timestep is the continuous
c_noise = ln(sigma) / 4, q, k and v are interleaved per head, and up/downsampling filters are stored buffers), so
matching EDM's state dict and outputs exactly is simplest with the layers written as EDM arranges them.
Constructor arguments and state-dict names are those of NVlabs/edm `training/networks.py`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


class Linear(torch.nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        return x + self.bias.to(x.dtype) if self.bias is not None else x


class Conv2d(torch.nn.Module):
    """A convolution (kernel 0: none) with optional 2x up- or downsampling by the stored separable filter first."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down = up, down
        fan_in = in_channels * kernel * kernel
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) /
                                         math.sqrt(max(fan_in, 1))) if kernel else None
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        kernel_2d = (torch.outer(taps, taps) / taps.sum() ** 2)[None, None]
        self.register_buffer("resample_filter", kernel_2d if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample_filter is not None:
            f = self.resample_filter.to(x.dtype)
            pad, groups = (f.shape[-1] - 1) // 2, self.in_channels
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile(groups, 1, 1, 1), groups=groups, stride=2, padding=pad)
            else:
                x = F.conv2d(x, f.tile(groups, 1, 1, 1), groups=groups, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    """Group normalization with at most 32 groups of at least 4 channels."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(torch.nn.Module):
    """ADM's residual block as EDM writes it: scale-shift by the embedding, optional resampling (the skip path is
    resampled without a projection unless the width changes), optional self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, channels_per_head: int = 64, dropout: float = 0, eps: float = 1e-5):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down)
        self.affine = Linear(emb_channels, out_channels * 2)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, kernel=1 if out_channels != in_channels else 0, up=up,
                               down=down)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1)
            self.proj = Conv2d(out_channels, out_channels, kernel=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x) if self.skip is not None else x
        x = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].to(x.dtype).chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training)) + skip
        if self.num_heads:
            n, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)
            weights = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1])).softmax(dim=2)
            attended = torch.einsum("nqk,nck->ncq", weights.to(q.dtype), v)
            x = self.proj(attended.reshape(n, c, h, w)) + x
        return x


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x f), sin(x f)] with frequencies f_i = max_positions^(-i / (C/2))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class DhariwalUNet(torch.nn.Module):
    """ADM's U-Net in EDM's form: noise embedding MLP plus a one-hot label embedding, encoder/decoder blocks per
    resolution with attention at attn_resolutions, skip connections by concatenation."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None

        def block(cin: int, cout: int, **kwargs) -> UNetBlock:
            return UNetBlock(cin, cout, emb_channels, dropout=dropout, **kwargs)

        self.enc = torch.nn.ModuleDict()
        channels = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, model_channels * mult, kernel=3)
                channels = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = block(channels, channels, down=True)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(channels, model_channels * mult,
                                                          attention=res in attn_resolutions)
                channels = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(channels, channels, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(channels, channels)
            else:
                self.dec[f"{res}x{res}_up"] = block(channels, channels, up=True)
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = block(channels + skips.pop(), model_channels * mult,
                                                          attention=res in attn_resolutions)
                channels = model_channels * mult
        self.out_norm = GroupNorm(channels)
        self.out_conv = Conv2d(channels, out_channels, kernel=3)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if x.shape[1] != layer.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def input_scale(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """c_in(sigma) = 1 / sqrt(sigma^2 + sigma_data^2) (EDM Table 1): scales a noisy input to unit variance. The one
    place it is computed, for the networks' preconditioning and for classifiers trained in sigma space."""
    return 1 / (sigma_data**2 + sigma**2).sqrt()


def noise_label(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise(sigma) = ln(sigma) / 4 (EDM Table 1): the noise level as a network or a classifier in sigma space
    is told it."""
    return sigma.log() / 4


def preconditioning(x: torch.Tensor, sigma, class_labels: torch.Tensor | None, label_dim: int,
                    sigma_data: float) -> tuple:
    """What EDM's and EDM2's Precond share (EDM Table 1): x and sigma [N, 1, 1, 1] in float32, labels as float
    one-hot rows (none: the zero row; None for an unconditional network), and c_skip, c_out, c_in, c_noise."""
    x = x.float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.float().reshape(-1, label_dim)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return x, class_labels, c_skip, c_out, input_scale(sigma, sigma_data), noise_label(sigma.flatten())


class EDMPrecond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma) / 4) with sigma_data 0.5 (EDM Table 1, eq. 7); labels
    are one-hot rows, none means the zero vector."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = math.inf, sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__()
        if model_type != "DhariwalUNet":
            raise ValueError(f"EDMPrecond over {model_type}: only EDM's ImageNet network, DhariwalUNet, is built here")
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                model_type=model_type, **model_kwargs)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = use_fp16, sigma_min, sigma_max, sigma_data
        self.model = DhariwalUNet(img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                                  label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        x, class_labels, c_skip, c_out, c_in, c_noise = preconditioning(x, sigma, class_labels, self.label_dim,
                                                                        self.sigma_data)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        out = self.model((c_in * x).to(torch.float16 if fp16 else torch.float32), c_noise,
                         class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * out.float()
