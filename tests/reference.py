"""Access to the reference fixtures (tests/fixtures/reference): manifests, golden numbers and formula weights."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import torch

from guided_diffusion import script_util as su

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "reference")
MANIFESTS = os.path.join(REFERENCE, "checkpoints")
GOLDEN = os.path.join(REFERENCE, "golden")


def manifest_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(MANIFESTS) if f.endswith(".json"))


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def golden_json(name: str) -> dict:
    return load_json(os.path.join(GOLDEN, name + ".json"))


def golden_npz(name: str) -> dict:
    with np.load(os.path.join(GOLDEN, name)) as data:
        return {k: data[k] for k in data.files}


def parse_flags(flags: str, defaults: dict) -> dict:
    """A flag string like the README's ("--image_size 64 --class_cond True") typed by a defaults dict."""
    tokens = flags.split()
    out = dict(defaults)
    for key, value in zip(tokens[::2], tokens[1::2]):
        key = key.lstrip("-")
        default = out[key]
        if isinstance(default, bool):
            out[key] = su.str2bool(value)
        else:
            out[key] = type(default)(value)
    return out


def kind_of(name: str) -> str:
    if "classifier" in name:
        return "classifier"
    return "sr" if "upsampler" in name or name.endswith("_sr") else "unet"


def build(kind: str, flags: str):
    """(network, diffusion or None, args) for a manifest or golden flag string, in float32."""
    if kind == "classifier":
        args = parse_flags(flags, su.classifier_and_diffusion_defaults())
        args["classifier_use_fp16"] = False
        return su.create_classifier(**{k: args[k] for k in su.classifier_defaults()}), None, args
    if kind == "sr":
        args = parse_flags(flags, su.sr_model_and_diffusion_defaults())
        args["use_fp16"] = False
        model, diffusion = su.sr_create_model_and_diffusion(**args)
        return model, diffusion, args
    args = parse_flags(flags, su.model_and_diffusion_defaults())
    args["use_fp16"] = False
    model, diffusion = su.create_model_and_diffusion(**args)
    return model, diffusion, args


def formula_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Fill every float tensor with the reference README's deterministic hash rule, then load strictly."""
    mask = np.uint64(0xFFFFFFFF)
    state = {}
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            state[name] = tensor
            continue
        n = tensor.numel()
        x = (np.arange(n, dtype=np.uint64) + np.uint64(zlib.crc32(name.encode("utf-8"))) * np.uint64(0x9E3779B9)) & mask
        for _ in range(2):
            x ^= x >> np.uint64(16)
            x = (x * np.uint64(0x45D9F3B)) & mask
        x ^= x >> np.uint64(16)
        u = x.astype(np.float64) / 2.0**32
        std = 1.0 / np.sqrt(n / tensor.shape[0]) if tensor.dim() > 1 else 0.1
        values = ((2 * u - 1) * np.sqrt(3.0) * std).astype(np.float16).astype(np.float32)
        state[name] = torch.from_numpy(values.reshape(tuple(tensor.shape)))
    model.load_state_dict(state, strict=True)
    return model


def golden_network(part: str):
    """(network with formula weights in eval mode, io arrays, args) for golden part unet / classifier / sr."""
    meta = golden_json(f"small_{part}")
    model, diffusion, args = build(part, meta["flags"])
    formula_weights(model).eval()
    return model, diffusion, golden_npz(meta["io"]), args
