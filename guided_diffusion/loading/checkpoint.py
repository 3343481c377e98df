"""Reading and writing network weights (.pt and .safetensors), atomically, with flag hints on mismatch.

When a checkpoint does not fit the network built from the command-line flags, the error says which flag is
likely wrong and what the checkpoint implies, read off the shapes of its tensors.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import warnings
from typing import Any

import torch
import torch.nn as nn

from guided_diffusion.cli.fileio import atomic_write
from guided_diffusion.unet import SuperResModel, default_channel_mult


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the network; the message lists the flags to change."""


def _is_safetensors(path: str) -> bool:
    return str(path).endswith(".safetensors")


def read_bytes(path: str) -> bytes:
    """The contents of a local file or a blobfile URL (gs://, az://, ...)."""
    if "://" in str(path):
        import blobfile as bf

        with bf.BlobFile(path, "rb") as f:
            return f.read()
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def _load_failure(e: Exception) -> str:
    """Why a checkpoint file could not be parsed, in a few words (torch's messages run over several lines)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        refused = re.search(r"GLOBAL (\S+)", text)
        what = f"it names {refused.group(1)}" if refused else "its pickle holds more than tensors and plain data"
        return (f"{what}, which the weights-only loader refuses (not a checkpoint written by these scripts; it may "
                "be malicious): delete it")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ", 1)[0].rstrip(".")
    return f"the file is truncated or corrupt ({type(e).__name__}{': ' + first if first else ''})"


def load_torch_file(data: bytes, path: str) -> Any:
    """torch.load of a file's bytes with the weights-only loader (tensors and plain data only), onto the CPU; a
    truncated, corrupt or foreign file (one naming a refused global) raises a one-line ValueError naming `path`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the pickle protocol of a foreign file: the error says enough
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure means a broken or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {_load_failure(e)}") from None


def training_state_from_bytes(data: bytes, path: str) -> dict:
    """The contents of an opt{step}.pt file (the optimizer and what else resuming needs), checked to be a dict."""
    state = load_torch_file(data, path)
    if not isinstance(state, dict):
        raise ValueError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not the optimizer "
                         "state of a training run")
    return state


def state_dict_from_bytes(data: bytes, path: str) -> dict[str, torch.Tensor]:
    """Parse the bytes of a .pt or .safetensors file (`path` names the format and the errors)."""
    if _is_safetensors(path):
        try:
            from safetensors.torch import load as load_safetensors
        except ImportError:
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from None
        try:
            state = load_safetensors(data)
        except Exception as e:  # noqa: BLE001 - any parse failure means a broken or foreign file
            raise ValueError(f"cannot read checkpoint {path}: {_load_failure(e)}") from None
    else:
        state = load_torch_file(data, path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict (name -> tensor)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DDP wrapper
    return state


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pt (torch.save of a state dict) or .safetensors file, onto the CPU."""
    return state_dict_from_bytes(read_bytes(path), path)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """Write a state dict atomically, as safetensors when the name ends in .safetensors, else torch.save."""
    if _is_safetensors(path):
        from safetensors.torch import save as save_safetensors

        data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in state_dict.items()})
        atomic_write(path, lambda f: f.write(data))
    else:
        atomic_write(path, lambda f: torch.save(state_dict, f))


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save(obj, path) through a temporary file and a rename."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict strictly; on mismatch raise CheckpointMismatchError with the likely flag fixes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(_mismatch_message(model, own, state_dict, source, missing, unexpected, wrong))
    model.load_state_dict(state_dict, strict=True)


# ----- reading the architecture off the tensors ------------------------------------------------------------

def _block_ids(state: dict, part: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state for m in [re.match(rf"{part}\.(\d+)\.", k)] if m})


def _shape(state: dict, key: str):
    t = state.get(key)
    return tuple(t.shape) if t is not None else None


def describe(state: dict) -> dict:
    """Architecture facts implied by a U-Net or classifier state dict (only what the tensors determine)."""
    facts: dict[str, Any] = {}
    first = _shape(state, "input_blocks.0.0.weight")
    if first is None:
        return facts
    width, in_channels = first[0], first[1]
    facts["width"] = width
    facts["in_channels"] = in_channels
    emb, out = _shape(state, "input_blocks.1.0.emb_layers.1.weight"), _shape(state, "input_blocks.1.0.out_layers.3.weight")
    if emb and out:
        facts["use_scale_shift_norm"] = emb[0] == 2 * out[0]
    if "label_emb.weight" in state:
        facts["num_classes"] = _shape(state, "label_emb.weight")[0]
    elif "output_blocks.0.0.in_layers.0.weight" in state:
        facts["num_classes"] = None
    if "out.2.weight" in state and "output_blocks.0.0.in_layers.0.weight" in state:
        facts["out_channels"] = _shape(state, "out.2.weight")[0]
    facts.update(_describe_decoder(state, width))
    facts.update(_describe_pool(state))
    return facts


def _describe_decoder(state: dict, width: int) -> dict:
    """Depth, channel multipliers, resampling kind and attention levels from the U-Net's output blocks."""
    ids = _block_ids(state, "output_blocks")
    if not ids:
        return {}
    n_out = len(ids)

    def has_resblock_at(i, j):
        return f"output_blocks.{i}.{j}.in_layers.0.weight" in state

    up = [i for i in ids if any(has_resblock_at(i, j) or f"output_blocks.{i}.{j}.conv.weight" in state
                                for j in (1, 2))]
    per_level = up[0] + 1 if up else n_out
    levels = n_out // per_level
    mult = []
    for level in range(levels):  # level 0 is the top (full resolution)
        i = (levels - 1 - level) * per_level
        mult.append(_shape(state, f"output_blocks.{i}.0.out_layers.3.weight")[0] / width)
    attention = sorted(
        2**level for level in range(levels)
        if f"output_blocks.{(levels - 1 - level) * per_level}.1.qkv.weight" in state
    )
    facts = {"num_res_blocks": per_level - 1, "channel_mult": tuple(int(m) if m == int(m) else m for m in mult),
             "attention_ds": tuple(attention)}
    if up:
        facts["resblock_updown"] = any(has_resblock_at(i, j) for i in up for j in (1, 2))
    return facts


def _describe_pool(state: dict) -> dict:
    """The classifier's pooling head and its number of outputs."""
    if "out.2.positional_embedding" in state:
        return {"pool": "attention", "num_classes": _shape(state, "out.2.c_proj.weight")[0],
                "pool_tokens": _shape(state, "out.2.positional_embedding")[1]}
    if "out.3.weight" in state and len(_shape(state, "out.3.weight")) == 4:
        return {"pool": "adaptive", "num_classes": _shape(state, "out.3.weight")[0]}
    if "out.0.weight" in state and len(_shape(state, "out.0.weight")) == 2:
        if "out.3.weight" in state:
            return {"pool": "spatial_v2", "num_classes": _shape(state, "out.3.weight")[0]}
        return {"pool": "spatial", "num_classes": _shape(state, "out.2.weight")[0]}
    return {}


def _is_classifier(model: nn.Module) -> bool:
    return hasattr(model, "pool") and not hasattr(model, "output_blocks")


def _fmt(values) -> str:
    return ",".join(str(v) for v in values)


def _sizes_that_fit(model: nn.Module, mine: dict, theirs: dict) -> list[int]:
    """Image sizes at which the model's flags would give the checkpoint's attention levels and channel
    multipliers, when these differ now: the same --attention_resolutions, and the same --channel_mult or the
    per-size default of both sizes. Empty when the difference is not one of image size alone."""
    size = getattr(model, "image_size", None)
    facts = ("attention_ds", "channel_mult")
    if not size or any(f not in mine or f not in theirs for f in facts) or all(mine[f] == theirs[f] for f in facts):
        return []
    super_res = isinstance(model, SuperResModel)
    resolutions = [size // d for d in mine["attention_ds"]]
    fits = []
    for other in sorted({size << k for k in range(1, 5)} | {size >> k for k in range(1, 5)}):
        if other < 1 or any(other % r for r in resolutions):
            continue
        attention_fits = tuple(sorted(other // r for r in resolutions)) == tuple(theirs["attention_ds"])
        mult_fits = mine["channel_mult"] == theirs["channel_mult"] or (
            default_channel_mult(size, super_res) == mine["channel_mult"]
            and default_channel_mult(other, super_res) == theirs["channel_mult"])
        if attention_fits and mult_fits:
            fits.append(other)
    return fits


def _hints(model: nn.Module, mine: dict, theirs: dict, evidence: dict) -> list[str]:
    """One line per fact that differs: the tensor showing it and the flag value that would match. When the
    attention levels or channel multipliers differ only through the image size, the size flag comes first."""
    clf = _is_classifier(model)
    image_size = getattr(model, "image_size", None)
    lines = []
    fits = [] if clf else _sizes_that_fit(model, mine, theirs)
    alternative = ""
    if fits:
        size_flag = "large_size" if isinstance(model, SuperResModel) else "image_size"
        lines.append(f"{evidence['attention_ds']}: these flags fit the checkpoint at "
                     f"{' or '.join(f'{s}x{s}' for s in fits)}: use --{size_flag} {' or '.join(map(str, fits))} "
                     f"(now {image_size})")
        alternative = f"or, keeping --{size_flag} {image_size}, "

    def say(fact, text):
        prefix = alternative if fact in ("attention_ds", "channel_mult") else ""
        lines.append(f"{evidence.get(fact, 'the checkpoint')}: {prefix}{text}")

    for fact in ("width", "in_channels", "out_channels", "num_classes", "use_scale_shift_norm", "pool",
                 "pool_tokens", "num_res_blocks", "channel_mult", "resblock_updown", "attention_ds"):
        if fact not in theirs or fact not in mine or mine[fact] == theirs[fact]:
            continue
        want, now = theirs[fact], mine[fact]
        if fact == "width":
            say(fact, f"use --{'classifier_width' if clf else 'num_channels'} {want} (now {now})")
        elif fact == "in_channels":
            say(fact, "the checkpoint is a super-resolution model: use the super-resolution script and its "
                      "--large_size/--small_size flags" if want == 2 * now else
                      f"the checkpoint takes {want} input channels, the model {now}")
        elif fact == "out_channels":
            say(fact, f"use --learn_sigma {want == 6} (now {now == 6})")
        elif fact == "num_classes":
            if clf:
                say(fact, f"use --num_classes {want} (now {now})")
            elif want is None or now is None:
                say(fact, f"use --class_cond {want is not None} (now {now is not None})")
            else:
                say(fact, f"use --num_classes {want} (now {now}), or --num_classes {want - 1} with the "
                          f"--class_dropout_prob it was trained with (label dropout adds a null-label row)")
        elif fact == "use_scale_shift_norm":
            flag = "classifier_use_scale_shift_norm" if clf else "use_scale_shift_norm"
            say(fact, f"use --{flag} {want} (now {now})")
        elif fact == "pool":
            say(fact, f"use --classifier_pool {want} (now {now})")
        elif fact == "num_res_blocks":
            say(fact, f"use --num_res_blocks {want} (now {now})")
        elif fact == "channel_mult":
            say(fact, f"use --channel_mult {_fmt(want)} (now {_fmt(now)})")
        elif fact == "resblock_updown":
            say(fact, f"use --resblock_updown {want} (now {now})")
        elif fact == "pool_tokens" and image_size:
            downsampling = image_size // math.isqrt(now - 1)
            say(fact, f"the classifier was trained on {math.isqrt(want - 1) * downsampling}x"
                      f"{math.isqrt(want - 1) * downsampling} images, not {image_size}x{image_size}: use a "
                      "classifier of the model's image size")
        elif fact == "attention_ds" and image_size:
            say(fact, f"use --attention_resolutions {_fmt(image_size // d for d in want) or '(none)'} "
                      f"(now {_fmt(image_size // d for d in now) or '(none)'})")
    return lines


def _evidence(state: dict) -> dict:
    """Which tensor shows each fact, written as 'name is [shape] in the checkpoint'."""

    def show(key):
        shape = _shape(state, key)
        return f"{key} is [{_fmt(shape)}] in the checkpoint" if shape else None

    ev = {
        "width": show("input_blocks.0.0.weight"),
        "in_channels": show("input_blocks.0.0.weight"),
        "out_channels": show("out.2.weight"),
        "use_scale_shift_norm": show("input_blocks.1.0.emb_layers.1.weight"),
        "num_classes": show("label_emb.weight") or "label_emb.weight is absent from the checkpoint",
    }
    for key in ("out.2.c_proj.weight", "out.3.weight", "out.2.weight"):
        if key in state and "output_blocks.0.0.in_layers.0.weight" not in state:
            ev["num_classes"] = ev["pool"] = show(key)
            break
    if "out.2.positional_embedding" in state:
        ev["pool_tokens"] = show("out.2.positional_embedding")
    n_out = len(_block_ids(state, "output_blocks"))
    n_in = len(_block_ids(state, "input_blocks"))
    for fact in ("num_res_blocks", "channel_mult", "resblock_updown", "attention_ds"):
        ev[fact] = f"the checkpoint has {n_in} input blocks and {n_out} output blocks"
    return {k: v for k, v in ev.items() if v}


def _mismatch_message(model, own, state, source, missing, unexpected, wrong) -> str:
    if "input_blocks.0.0.weight" not in state:
        return f"{source} holds no ADM network weights (first keys: {', '.join(list(state)[:3]) or 'none'})"
    ckpt_is_unet = "output_blocks.0.0.in_layers.0.weight" in state
    if ckpt_is_unet == _is_classifier(model):
        kind = "a diffusion model (it has output blocks)" if ckpt_is_unet else "a classifier (no output blocks)"
        return f"{source} is {kind}, the network built here is not: pass it with the other path flag"
    mine, theirs = describe(own), describe(state)
    if "num_classes" not in theirs and "output_blocks.0.0.in_layers.0.weight" in state:
        theirs["num_classes"] = None
    lines = _hints(model, mine, theirs, _evidence(state))
    if _is_classifier(model) and "num_res_blocks" not in theirs:
        levels = len(model.channel_mult)
        depth = len(_block_ids(state, "input_blocks")) // levels - 1
        if depth != model.num_res_blocks and depth >= 1:
            lines.append(f"the checkpoint has {len(_block_ids(state, 'input_blocks'))} input blocks: use "
                         f"--classifier_depth {depth} (now {model.num_res_blocks})")
    if not lines:
        detail = [f"{k} is [{_fmt(state[k].shape)}] in the checkpoint, [{_fmt(own[k].shape)}] in the model"
                  for k in wrong[:3]]
        detail += [f"missing from the checkpoint: {k}" for k in missing[:3]]
        detail += [f"not in the model: {k}" for k in unexpected[:3]]
        lines = detail + ["check --attention_resolutions, --num_heads / --num_head_channels and the size flags"]
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape"
    return f"{source} does not fit the network built from the flags ({counts}):\n  " + "\n  ".join(lines)
