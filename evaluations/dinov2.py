"""DINOv2 ViT features for FD_DINOv2, computed the way EDM2's ``calculate_metrics.py`` computes them.

The network is a plain-PyTorch vision transformer whose parameter names and shapes are those of the official
DINOv2 backbones (``facebookresearch/dinov2``, built by ``torch.hub`` with ``block_chunks=0``), so the official
``dinov2_vitl14_pretrain.pth`` state dict loads into it unchanged.  Its output is the official ``forward``'s:
the class token after the final LayerNorm (1024-d for ViT-L/14).  ``tests/test_fd_dinov2.py`` checks it against
the official code's features (``tests/fixtures/dinov2``).

Preprocessing is EDM2's ``DINOv2Detector``: each uint8 image is resized to 224x224, either bicubic with
antialiasing in float32 (``torch`` mode, EDM2's default) or PIL's bicubic resize of the uint8 image (``pil``
mode, dgm-eval's original), then scaled to 0..1 and normalized with the ImageNet mean and std.

torch is imported here only: the Inception metrics never load this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

RESIZE_MODES = ("torch", "pil")
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2 backbone's shape.  ``image_size`` is its training resolution (it sets the position-embedding
    grid, ``image_size // patch_size`` per side); ``interpolate_offset`` is the official code's 0.1 added to the
    target grid size when the position embeddings are resized by a scale factor."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    image_size: int = 518
    mlp_ratio: float = 4.0
    interpolate_offset: float = 0.1

    @property
    def grid(self) -> int:
        """Position-embedding grid side."""
        return self.image_size // self.patch_size


VITL14 = ViTConfig("dinov2_vitl14", embed_dim=1024, depth=24, num_heads=16)
VITS14 = ViTConfig("dinov2_vits14", embed_dim=384, depth=12, num_heads=6)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    """Pre-norm transformer block with layer scale: ``x + ls1(attn(norm1(x)))``, then ``+ ls2(mlp(norm2(x)))``."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, config.num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * config.mlp_ratio))
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, config.patch_size, stride=config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """A DINOv2 backbone with the official parameter names; ``forward`` maps normalized NCHW images (sides a
    multiple of the patch size) to the normalized class token.  ``mask_token`` is unused at inference but
    part of the official state dict."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid**2 + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = _PatchEmbed(config)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings for a ``rows x cols`` patch grid: the trained grid resized bicubically (no
        antialias) by the scale factors ``(rows + offset) / grid`` and ``(cols + offset) / grid``, as the
        official backbone does; unchanged for the trained grid."""
        grid = self.config.grid
        if rows == grid and cols == grid:
            return self.pos_embed
        embed = self.pos_embed.float()
        patches = embed[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        offset = self.config.interpolate_offset
        if offset:
            scale = ((rows + offset) / grid, (cols + offset) / grid)
            patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        else:
            patches = F.interpolate(patches, size=(rows, cols), mode="bicubic", antialias=False)
        if patches.shape[-2:] != (rows, cols):
            raise ValueError(f"position embeddings resized to {tuple(patches.shape[-2:])}, not {(rows, cols)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([embed[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.config.patch_size
        rows, cols = x.shape[2] // patch, x.shape[3] // patch
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(rows, cols)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def preprocess(batch: np.ndarray, mode: str = "torch", device: torch.device | str = "cpu") -> torch.Tensor:
    """EDM2's DINOv2 input from uint8 NHWC images: 224x224 (``torch``: float bicubic with antialias; ``pil``:
    PIL bicubic on uint8), divided by 255, minus the ImageNet mean, over its std; NCHW float32."""
    if mode == "pil":
        resized = np.stack([
            np.asarray(Image.fromarray(image, "RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC))
            for image in batch
        ])
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(device).to(torch.float32)
    elif mode == "torch":
        x = torch.tensor(batch).permute(0, 3, 1, 2).to(device).to(torch.float32)  # a copy: batches may be read-only
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True)
    else:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    x = x / 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


class DinoV2Features:
    """A DINOv2 backbone in eval mode on the best device, fed uint8 NHWC batches in EDM2's preprocessing."""

    def __init__(self, config: ViTConfig, state_dict: dict[str, torch.Tensor], resize: str = "torch",
                 device: str | None = None):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.resize = resize
        self.model = DinoViT(config)
        self.model.load_state_dict(state_dict, strict=True)
        self.model.eval().requires_grad_(False).to(self.device)

    @property
    def dim(self) -> int:
        """Feature dimension (1024 for ViT-L/14)."""
        return self.model.config.embed_dim

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Features [N, dim] (float32) of one uint8 NHWC batch."""
        return self.model(preprocess(batch, self.resize, self.device)).float().cpu().numpy()

    def features(self, batches: Iterable[np.ndarray], count: int, desc: str) -> np.ndarray:
        """Features of ``count`` images given as uint8 batches, with a progress bar on stderr."""
        out = np.empty((count, self.dim), np.float32)
        start = 0
        with tqdm(total=count, unit="img", desc=f"DINOv2 {desc}") as bar:
            for batch in batches:
                out[start : start + len(batch)] = self(batch)
                start += len(batch)
                bar.update(len(batch))
        if start != count:
            raise ValueError(f"expected {count} images, got {start}")
        return out


def state_dict_layout(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a backbone (those of the official state dict), without building it."""
    with torch.device("meta"):
        model = DinoViT(config)
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def parameter_count(config: ViTConfig) -> int:
    """Number of parameters of a backbone."""
    return sum(math.prod(shape) for shape in state_dict_layout(config).values())
