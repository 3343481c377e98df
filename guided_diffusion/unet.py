"""The ADM networks: the diffusion U-Net, its super-resolution variant and the noisy-image classifier.

Parameter names and shapes equal the original guided-diffusion networks, so the released checkpoints load
with `strict=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.networks.attention import AttentionBlock, AttentionPool2d, QKVAttention, QKVAttentionLegacy  # noqa: F401 (classic names)
from guided_diffusion.networks.control import ControlEmbedding
from guided_diffusion.networks.blocks import Downsample, ResBlock, TimestepBlock, TimestepEmbedSequential, Upsample  # noqa: F401 (classic names)
from .fp16_util import convert_module_to_f16, convert_module_to_f32
from .nn import conv_nd, linear, normalization, timestep_embedding, zero_module

# The channel multipliers of the released models at each image size (the original's create_model and
# sr_create_model tables).
UNET_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def default_channel_mult(image_size: int, super_res: bool = False) -> tuple | None:
    """The channel multipliers the released models use at this image size (None for other sizes)."""
    return (SR_CHANNEL_MULT if super_res else UNET_CHANNEL_MULT).get(image_size)

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


@dataclass
class _BlockOptions:
    """Options every residual and attention block of one network shares."""

    emb_channels: int
    dropout: float
    dims: int
    use_checkpoint: bool
    use_scale_shift_norm: bool
    num_head_channels: int
    use_new_attention_order: bool
    context_channels: int | None = None  # the class embedding's width under --class_attention

    def res(self, channels: int, out_channels: int, **updown) -> ResBlock:
        return ResBlock(
            channels,
            self.emb_channels,
            self.dropout,
            out_channels=out_channels,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            **updown,
        )

    def attn(self, channels: int, num_heads: int) -> AttentionBlock:
        return AttentionBlock(
            channels,
            num_heads=num_heads,
            num_head_channels=self.num_head_channels,
            use_checkpoint=self.use_checkpoint,
            use_new_attention_order=self.use_new_attention_order,
            context_channels=self.context_channels,
        )


def _check_structure(channel_mult: Sequence[float], num_res_blocks: int, attention_resolutions) -> None:
    if not channel_mult or any(m <= 0 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty list of positive multipliers, got {tuple(channel_mult)}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if any(int(ds) < 1 for ds in attention_resolutions):
        raise ValueError(f"attention downsample rates must be >= 1, got {tuple(attention_resolutions)}")


class _Encoder:
    """Builds the downsampling path shared by the U-Net and the classifier (input blocks + middle block)."""

    def __init__(self, opts: _BlockOptions, in_channels, model_channels, channel_mult, num_res_blocks,
                 attention_resolutions, conv_resample, num_heads, resblock_updown):
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(opts.dims, in_channels, ch, 3, padding=1))])
        self.skip_channels = [ch]
        self.feature_size = ch
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [opts.res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(opts.attn(ch, num_heads))
                self._add(TimestepEmbedSequential(*layers), ch)
            if level != len(channel_mult) - 1:
                down = (
                    opts.res(ch, ch, down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, dims=opts.dims, out_channels=ch)
                )
                self._add(TimestepEmbedSequential(down), ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(opts.res(ch, ch), opts.attn(ch, num_heads), opts.res(ch, ch))
        self.feature_size += ch
        self.channels = ch
        self.ds = ds

    def _add(self, block: nn.Module, ch: int) -> None:
        self.input_blocks.append(block)
        self.skip_channels.append(ch)
        self.feature_size += ch


class UNetModel(nn.Module):
    """The ADM U-Net: predicts noise (and optionally variances) from a noisy image, a timestep and a label.

    attention_resolutions holds downsample rates (1, 2, 4, ...) at which attention is used; num_classes enables
    a learned label embedding added to the timestep embedding; use_fp16 runs the torso in float16.
    class_attention feeds the label embedding to every attention layer as one more key/value token instead
    (the middle block always has one); control_cond adds control.ControlEmbedding's gated embedding of the
    control record (control_gating False: ungated) to the timestep embedding. Both off: the original network.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        class_attention: bool = False,
        control_cond: Sequence[str] = (),
        control_gates: dict | None = None,
        control_gating: bool = True,
    ):
        super().__init__()
        _check_structure(channel_mult, num_res_blocks, attention_resolutions)
        if class_attention and num_classes is None:
            raise ValueError("--class_attention True needs a class-conditional model (--class_cond True)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        self.class_attention = class_attention
        self.control_embed = (ControlEmbedding(tuple(control_cond), time_embed_dim, control_gates, control_gating)
                              if control_cond else None)

        opts = _BlockOptions(time_embed_dim, dropout, dims, use_checkpoint, use_scale_shift_norm,
                             num_head_channels, use_new_attention_order,
                             context_channels=time_embed_dim if class_attention else None)
        enc = _Encoder(opts, in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                       conv_resample, num_heads, resblock_updown)
        self.input_blocks = enc.input_blocks
        self.middle_block = enc.middle_block
        self._feature_size = enc.feature_size

        ch, ds, skips = enc.channels, enc.ds, list(enc.skip_channels)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [opts.res(ch + skips.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(opts.attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(
                        opts.res(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, int(channel_mult[0] * model_channels), out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.convert_to_fp16()

    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def _time_features(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of the timesteps, in the dtype of the time-embedding MLP."""
        return timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)

    def convert_to_fp16(self) -> None:
        """Store the torso's convolutions in float16 (norms, embeddings and the output head stay float32)."""
        for part in self._torso():
            part.apply(convert_module_to_f16)
        self.dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo convert_to_fp16()."""
        for part in self._torso():
            part.apply(convert_module_to_f32)
        self.dtype = torch.float32

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None,
                control: torch.Tensor | None = None, control_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the model to a batch x [N, C, ...] at timesteps [N], with labels y [N] if class-conditional and
        control records [N, 6] at noise levels control_sigma [N] if it takes controls."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "labels y must be given if and only if the model is class-conditional "
                f"(num_classes={self.num_classes}, y given: {y is not None})"
            )
        emb = self.time_embed(self._time_features(timesteps))
        context = None
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels y must have shape [{x.shape[0]}], got {list(y.shape)}")
            if self.class_attention:
                context = self.label_emb(y)
            else:
                emb = emb + self.label_emb(y)
        if self.control_embed is not None:
            if control is None or control_sigma is None:
                raise ValueError("this model takes control records (--control_cond): pass control and control_sigma")
            emb = emb + self.control_embed(control, control_sigma)
        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h.type(x.dtype))


class SuperResModel(UNetModel):
    """A U-Net conditioned on a low-resolution image, bilinearly upsampled and stacked onto the input."""

    def __init__(self, image_size: int, in_channels: int, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, low_res: torch.Tensor | None = None, **kwargs):
        """Apply the model to x given low_res [N, C, h, w] (any h, w; resized to x's size)."""
        if low_res is None:
            raise ValueError("SuperResModel needs the low-resolution image: pass low_res=")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(nn.Module):
    """The noisy-image classifier: the U-Net's downsampling half followed by a pooling head.

    pool: "adaptive" (global average), "attention" (attention pooling), "spatial" / "spatial_v2" (an MLP over
    the spatial means of every block's output).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        _check_structure(channel_mult, num_res_blocks, attention_resolutions)
        if pool not in POOLS:
            raise ValueError(f"unknown classifier pool {pool!r}: choose one of {', '.join(POOLS)}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.pool = pool

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)
        )
        opts = _BlockOptions(time_embed_dim, dropout, dims, use_checkpoint, use_scale_shift_norm,
                             num_head_channels, use_new_attention_order)
        enc = _Encoder(opts, in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
                       conv_resample, num_heads, resblock_updown)
        self.input_blocks = enc.input_blocks
        self.middle_block = enc.middle_block
        self._feature_size = enc.feature_size
        ch = enc.channels

        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)), nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("classifier pool 'attention' needs num_head_channels (not -1)")
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(),
                AttentionPool2d(image_size // enc.ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )
        if use_fp16:
            self.convert_to_fp16()

    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    convert_to_fp16 = UNetModel.convert_to_fp16
    convert_to_fp32 = UNetModel.convert_to_fp32
    _time_features = UNetModel._time_features

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Logits [N, out_channels] for noisy images x at timesteps."""
        emb = self.time_embed(self._time_features(timesteps))
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                means.append(h.type(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.type(x.dtype))
