"""EDM2's magnitude-preserving U-Net and its preconditioning (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models"; equation and figure numbers refer to that paper).

Constructor arguments, parameter and buffer names are those of NVlabs/edm2 `training/networks_edm2.py`, so the
released checkpoints load unchanged (guided_diffusion.loading.nvlabs reads their pickles). Every layer keeps activation
magnitudes near 1: weights are normalized in every forward pass (and, in training mode, written back normalized:
forced weight normalization, Eq. 66), sums and concatenations are rescaled (Eq. 88, 103), SiLU is divided by its
gain on unit Gaussians (Eq. 81), and pixels are normalized to unit RMS over channels.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from guided_diffusion.networks.control import ControlEmbedding, parse_gates, parse_groups
from guided_diffusion.networks.edm import preconditioning


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x divided by eps + its root mean square over `dim` (default: all but the first), computed in float32."""
    dim = tuple(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    rms_scale = math.sqrt(norm.numel() / x.numel())  # 1 / sqrt(elements per norm)
    return x / (eps + rms_scale * norm).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by 0.596, its RMS on unit Gaussian input (Eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to unit magnitude for independent unit inputs (Eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation weighting a by (1 - t) and b by t per channel, with unit overall magnitude (Eq. 103)."""
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale / math.sqrt(na) * (1 - t)), b * (scale / math.sqrt(nb) * t)], dim=dim)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """Down- (stride 2) or upsampling with the separable filter f (normalized; [1, 1] = 2x2 box / nearest)."""
    if mode == "keep":
        return x
    taps = torch.tensor(f, dtype=torch.float32)
    if taps.ndim != 1 or len(taps) % 2:
        raise ValueError(f"resample_filter {list(f)}: expected an even number of taps")
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    channels, pad = x.shape[1], (len(taps) - 1) // 2
    if mode == "down":
        weight = kernel.to(device=x.device, dtype=x.dtype).expand(channels, 1, *kernel.shape)
        return F.conv2d(x, weight, groups=channels, stride=2, padding=pad)
    if mode != "up":
        raise ValueError(f"resample mode {mode!r}: expected keep, down or up")
    weight = (kernel * 4).to(device=x.device, dtype=x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, groups=channels, stride=2, padding=pad)


class MPFourier(torch.nn.Module):
    """Fourier features sqrt(2) cos(2 pi (f x + p)) with random frequencies and phases, unit RMS (Eq. 75)."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """A convolution (kernel [k, k]) or fully-connected layer (kernel []) whose weight is normalized per output
    channel and scaled by gain / sqrt(fan-in) in every pass (Eq. 47); in training mode the stored weight is also
    replaced by its normalized self (forced weight normalization, Eq. 66)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def has_mp_weights(module: torch.nn.Module) -> bool:
    """Whether the module holds magnitude-preserving layers (an EDM2 network)."""
    return any(isinstance(m, MPConv) for m in module.modules())


@torch.no_grad()
def project_weights(module: torch.nn.Module) -> None:
    """Forced weight normalization after an optimizer step (Eq. 66): every MPConv weight back to unit magnitude
    per output channel, so the weights live on the sphere the forward pass assumes."""
    for m in module.modules():
        if isinstance(m, MPConv):
            m.weight.copy_(normalize(m.weight.float()))


class Block(torch.nn.Module):
    """An encoder ("enc") or decoder ("dec") residual block with optional resampling and cosine self-attention
    (Fig. 21): the embedding scales the residual branch, branches meet by mp_sum, activations are clipped. With
    context_channels, the attention also attends to one key/value token made from a context (--class_attention)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", resample_filter: Sequence[float] = (1, 1), attention: bool = False,
                 channels_per_head: int = 64, dropout: float = 0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256, context_channels: int | None = None):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        # At least one head where a context must be attended to (narrower than channels_per_head).
        self.num_heads = max(out_channels // channels_per_head, int(bool(context_channels))) if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None
        if self.num_heads and context_channels:
            self.attn_context = MPConv(context_channels, out_channels * 2, kernel=[])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x, context), t=self.attn_balance)
        return x.clip_(-self.clip_act, self.clip_act) if self.clip_act is not None else x

    def _attention(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine attention: q, k and v normalized to unit RMS per head and position, softmax(q k / sqrt(c))."""
        n, channels, h, w = x.shape
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, channels // self.num_heads, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # [n, heads, c, positions]
        if context is not None and hasattr(self, "attn_context"):
            kv = self.attn_context(context.to(x.dtype)).reshape(n, self.num_heads, channels // self.num_heads, 2, 1)
            k_extra, v_extra = normalize(kv, dim=2).unbind(3)
            k, v = torch.cat([k, k_extra], dim=3), torch.cat([v, v_extra], dim=3)
        # The explicit product on every device, as NVlabs computes it (a fused kernel is not verified to match).
        weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        y = torch.einsum("nhqk,nhck->nhcq", weights, v)
        return self.attn_proj(y.reshape(n, channels, h, w))


class UNet(torch.nn.Module):
    """EDM2's U-Net (Fig. 21): F(x; c_noise, labels) with MP-Fourier noise embedding, label embedding mixed in by
    mp_sum, encoder and decoder blocks per resolution, skip connections joined by mp_cat and a learned output
    gain (zero at initialization). class_attention feeds the label embedding to the attention layers instead (the
    lowest resolution always has one); control_cond ("crop,flip,size") adds control.ControlEmbedding's gated
    embedding of the control record, gates from control_gates ("size=1:0.2"). Both off: EDM2's network."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, class_attention: bool = False,
                 control_cond: str = "", control_gates: str = "", control_gating: bool = True, **block_kwargs):
        super().__init__()

        widths = [model_channels * m for m in channel_mult]
        noise_channels = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_channels = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, kernel=[])
        self.emb_label = MPConv(label_dim, emb_channels, kernel=[]) if label_dim else None
        if class_attention and not label_dim:
            raise ValueError("--class_attention True needs a class-conditional model (--class_cond True)")
        self.class_attention = class_attention
        self.control_embed = (ControlEmbedding(parse_groups(control_cond), emb_channels, parse_gates(control_gates),
                                               control_gating) if control_cond else None)
        if class_attention:
            block_kwargs = {**block_kwargs, "context_channels": emb_channels}

        def block(cin: int, cout: int, **kwargs) -> Block:
            return Block(cin, cout, emb_channels, **kwargs, **block_kwargs)

        self.enc = torch.nn.ModuleDict()
        channels = img_channels + 1  # the input and a constant channel
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(channels, width, kernel=[3, 3])
                channels = width
            else:
                self.enc[f"{res}x{res}_down"] = block(channels, channels, flavor="enc", resample_mode="down")
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(channels, width, flavor="enc",
                                                          attention=res in attn_resolutions)
                channels = width

        self.dec = torch.nn.ModuleDict()
        skips = [m.out_channels for m in self.enc.values()]
        for level, width in reversed(list(enumerate(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = block(channels, channels, flavor="dec", attention=True)
                self.dec[f"{res}x{res}_in1"] = block(channels, channels, flavor="dec")
            else:
                self.dec[f"{res}x{res}_up"] = block(channels, channels, flavor="dec", resample_mode="up")
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = block(channels + skips.pop(), width, flavor="dec",
                                                          attention=res in attn_resolutions)
                channels = width
        self.out_conv = MPConv(channels, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                control: torch.Tensor | None = None, control_sigma: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        context = None
        if self.emb_label is not None:
            labels = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            if self.class_attention:
                context = labels.expand(len(x), -1)
            else:
                emb = mp_sum(emb, labels, t=self.label_balance)
        if self.control_embed is not None:
            if control is None or control_sigma is None:
                raise ValueError("this model takes control records (--control_cond): pass control and control_sigma")
            emb = emb + self.control_embed(control, control_sigma)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if name.endswith("_conv") else layer(x, emb, context)
            skips.append(x)
        for name, layer in self.dec.items():
            if "_block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb, context)
        return self.out_conv(x, gain=self.out_gain)


class Precond(torch.nn.Module):
    """EDM preconditioning around the U-Net, D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma) / 4) (EDM
    Table 1), plus the learned uncertainty u(sigma) of EDM2's loss weighting (Eq. 21) with return_logvar.
    Labels are one-hot rows [N, label_dim]; none means the zero vector (the unconditional embedding)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, **unet_kwargs):
        super().__init__()
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_data=sigma_data, logvar_channels=logvar_channels,
                                **unet_kwargs)  # the constructor arguments, as NVlabs' pickles record them
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, return_logvar: bool = False, **unet_kwargs):
        x, class_labels, c_skip, c_out, c_in, c_noise = preconditioning(x, sigma, class_labels, self.label_dim,
                                                                        self.sigma_data)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        if unet_kwargs.get("control") is not None:  # the control gates are functions of sigma
            unet_kwargs["control_sigma"] = c_noise.mul(4).exp()
        out = self.unet((c_in * x).to(torch.float16 if fp16 else torch.float32), c_noise, class_labels, **unet_kwargs)
        denoised = c_skip * x + c_out * out.float()
        if return_logvar:
            return denoised, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return denoised
