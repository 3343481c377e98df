"""Write tests/fixtures/dinov2/: the official DINOv2 code's features for a few fixed images, with EDM2's
preprocessing, on a small seeded random backbone, so that ``evaluations.dinov2`` can be checked against it.

    python tests/make_dinov2_fixture.py DINOV2_CHECKOUT [--out tests/fixtures/dinov2]

DINOV2_CHECKOUT is a checkout of github.com/facebookresearch/dinov2 (its ``dinov2`` package is imported from
there; nothing is downloaded).  Written:

* ``tiny.npz``: the backbone's config (``config_*``), its state dict (``state/<name>``), two uint8 image
  batches (``images_a`` 3x32x32, ``images_b`` 2x24x40) and the official model's outputs for them after
  EDM2's ``torch`` and ``pil`` preprocessing (``features_<batch>_<mode>``).  The backbone is the official
  ``DinoVisionTransformer`` with the arguments the official ``torch.hub`` entry points use (518-pixel
  position grid, patch 14, layer scale, MLP, no block chunks, interpolation offset 0.1) but 64 channels,
  2 blocks and 1 head of 64 channels; every parameter is drawn from a seeded normal distribution so that
  each one affects the output.
* ``vitl14_layout.json``: the parameter names and shapes of the official ``dinov2_vitl14`` (built with
  ``torch.hub.load(<checkout>, "dinov2_vitl14", source="local", pretrained=False)``), which the
  project's ViT-L/14 must have for the official weights to load.

EDM2's preprocessing (``DINOv2Detector.__call__`` in NVlabs/edm2's ``calculate_metrics.py``) is restated in
``edm2_preprocess`` below, line for line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import numpy as np
import PIL.Image
import torch

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 1, "patch_size": 14, "image_size": 518}


def edm2_preprocess(x: torch.Tensor, resize_mode: str) -> torch.Tensor:
    """EDM2's DINOv2Detector input: NCHW uint8 in, normalized NCHW float32 224x224 out."""
    if resize_mode == "pil":
        device = x.device
        x = x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        x = np.stack([np.uint8(PIL.Image.fromarray(xx, "RGB").resize((224, 224), PIL.Image.Resampling.BICUBIC))
                      for xx in x])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).to(device)
    elif resize_mode == "torch":
        x = torch.nn.functional.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    return x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded normal values for every parameter: weights ~ N(0, 1/fan_in), biases and layer scales ~ N(0, 0.1^2)
    (layer scales around 1), LayerNorm weights ~ 1 + N(0, 0.1^2), embeddings and tokens ~ N(0, 0.5^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".gamma")):
                value = 1 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif param.ndim >= 2 and "." in name:
                value = noise / np.sqrt(param[0].numel())
            else:
                value = 0.5 * noise
            param.copy_(value)


def images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random uint8 images (bilinearly upsampled noise), so that resizing matters but is not chaotic."""
    rng = np.random.default_rng(seed)
    count, height, width = shape
    coarse = torch.from_numpy(rng.uniform(0, 255, (count, 3, 5, 5)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    fine = fine + torch.from_numpy(rng.normal(0, 12, fine.shape).astype(np.float32))
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="a checkout of github.com/facebookresearch/dinov2")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                                                       "dinov2"))
    args = parser.parse_args(argv)
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, os.path.abspath(args.checkout))
    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=TINY["image_size"], patch_size=TINY["patch_size"], embed_dim=TINY["embed_dim"],
        depth=TINY["depth"], num_heads=TINY["num_heads"], mlp_ratio=4, init_values=1.0, ffn_layer="mlp",
        block_chunks=0, num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
    )
    randomize(model, seed=1)
    model.eval()
    arrays = {f"config_{key}": np.array(value) for key, value in TINY.items()}
    arrays.update({f"state/{name}": value.numpy() for name, value in model.state_dict().items()})
    for batch, seed, shape in (("a", 2, (3, 32, 32)), ("b", 3, (2, 24, 40))):
        pixels = images(seed, shape)
        arrays[f"images_{batch}"] = pixels
        for mode in ("torch", "pil"):
            with torch.no_grad():
                x = edm2_preprocess(torch.from_numpy(pixels).permute(0, 3, 1, 2), mode)
                arrays[f"features_{batch}_{mode}"] = model(x).numpy()
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "tiny.npz"), **arrays)

    large = torch.hub.load(os.path.abspath(args.checkout), "dinov2_vitl14", source="local", pretrained=False)
    layout = {name: list(value.shape) for name, value in large.state_dict().items()}
    with open(os.path.join(args.out, "vitl14_layout.json"), "w") as out:
        json.dump(layout, out, indent=0)
    print(f"wrote {args.out}: tiny.npz, vitl14_layout.json ({len(layout)} tensors)")


if __name__ == "__main__":
    main()
