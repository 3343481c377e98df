"""Multi-head self-attention of the ADM networks, with the kernel chosen by device.

Two head orders exist in released checkpoints: the legacy one (heads split before q/k/v) and the new one
(q/k/v split before heads). Both reduce to softmax(q k^T / sqrt(d)) v over [batch * heads, channels, tokens].
On CUDA the product runs through `scaled_dot_product_attention` (flash / memory-efficient kernels); on CPU a
plain einsum + softmax was measured faster for inference and slower for training, so "auto" picks by device
and by whether gradients are being recorded.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.nn import conv_nd, normalization, zero_module

BACKENDS = ("auto", "sdpa", "matmul")
_backend = os.environ.get("GUIDED_DIFFUSION_ATTENTION", "auto")


def set_attention_backend(name: str) -> None:
    """Choose the attention kernel: "sdpa", "matmul", or "auto" (sdpa, except matmul for CPU inference)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_attention_backend() -> str:
    """The attention kernel setting in force."""
    return _backend


def _use_sdpa(device: torch.device) -> bool:
    if _backend == "auto":
        # Measured on CPU (benchmarks/RESULTS.md): matmul is faster for inference, sdpa when training.
        return device.type != "cpu" or torch.is_grad_enabled()
    return _backend == "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) v for q, k, v of shape [B, d, T]; returns [B, d, T]."""
    if _use_sdpa(q.device):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    # Scale q and k separately (by d^-1/4 each) so fp16 products stay in range.
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


class QKVAttentionLegacy(nn.Module):
    """Attention over a [N, heads * 3 * d, T] tensor laid out head by head (the original checkpoints' order)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor, extra_kv: torch.Tensor | None = None) -> torch.Tensor:
        """extra_kv [N, heads * 2 * d, S]: more keys and values (head by head) for every query to attend to."""
        batch, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(batch * self.n_heads, ch * 3, length).split(ch, dim=1)
        if extra_kv is not None:
            k_extra, v_extra = extra_kv.reshape(batch * self.n_heads, ch * 2, -1).split(ch, dim=1)
            k, v = torch.cat([k, k_extra], dim=2), torch.cat([v, v_extra], dim=2)
        return attend(q, k, v).reshape(batch, -1, length)


class QKVAttention(nn.Module):
    """Attention over a [N, 3 * heads * d, T] tensor laid out q, k, v first (the "new attention order")."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor, extra_kv: torch.Tensor | None = None) -> torch.Tensor:
        """extra_kv [N, 2 * heads * d, S]: more keys and values (k first) for every query to attend to."""
        batch, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = (part.reshape(batch * self.n_heads, ch, length) for part in qkv.chunk(3, dim=1))
        if extra_kv is not None:
            k_extra, v_extra = (part.reshape(batch * self.n_heads, ch, -1) for part in extra_kv.chunk(2, dim=1))
            k, v = torch.cat([k, k_extra], dim=2), torch.cat([v, v_extra], dim=2)
        return attend(q, k, v).reshape(batch, -1, length)


def heads_for(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of heads: fixed count, or channels / num_head_channels when that is set (!= -1)."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide the {channels} channels of an attention block")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(
            f"num_head_channels={num_head_channels} does not divide the {channels} channels of an attention block; "
            f"use a divisor of {channels} or -1 (then num_heads is used)"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions; with context_channels, a context vector (the class
    embedding, --class_attention) is one more key/value token every position attends to."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
        context_channels: int | None = None,
    ):
        super().__init__()
        self.channels = channels
        self.num_heads = heads_for(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))
        if context_channels is not None:
            self.context_kv = nn.Linear(context_channels, channels * 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        extra = None if context is None else self.context_kv(context.float()).to(x.dtype)[:, :, None]
        h = self.proj_out(self.attention(self.qkv(self.norm(x)), extra))
        return (x + h).reshape(batch, channels, *spatial)


class AttentionPool2d(nn.Module):
    """Attention pooling of a feature map into one vector (CLIP style), the classifier's "attention" head."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = heads_for(embed_dim, 1, num_head_channels)
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        x = x.reshape(batch, channels, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]
