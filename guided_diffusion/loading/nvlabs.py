"""Load NVlabs' network pickles (EDM's and EDM2's snapshots and released networks) as this project's modules,
without running any of their code, and keep networks converted from them (.pt/.safetensors plus networks.json).

nvlabs_pickle reads the file as inert data: every persistent object (network, submodules, loss, encoder,
augmentation pipe) and every torch.nn.ModuleDict becomes a Record with its class name and recorded state, and the
recorded source is never executed. The network asked for is rebuilt from this project's class of the same name
with the recorded constructor arguments (checked against bounds a few times beyond any released network's), and
the recorded tensors are loaded into it strictly, in their stored precision (EDM2's snapshots: float16, which
NVlabs' own code also computes with). The other entries (loss_fn, encoder, augment_pipe, dataset_kwargs) stay
data: nothing of theirs is constructed.
"""

from __future__ import annotations

import inspect
import json
import math
import os

import torch

from guided_diffusion.networks import edm

from guided_diffusion.networks import edm2
from guided_diffusion.loading.checkpoint import load_state_dict, save_state_dict
from guided_diffusion.cli.fileio import atomic_write
from guided_diffusion.loading.presets import EDM2_PRESETS, EDM2_URL, resolve_preset  # noqa: F401 (also imported from here)
from guided_diffusion.loading.nvlabs_pickle import _ALLOWED, EasyDict, Record, brief, read_pickle  # noqa: F401 - the reader, re-exported

# The classes a record may name, by the name NVlabs' code gives them.
NETWORKS: dict[str, type[torch.nn.Module]] = {"Precond": edm2.Precond, "EDMPrecond": edm.EDMPrecond}

# Bounds on the recorded constructor arguments, a few times the largest released value (the released networks,
# EDM2's 13 img64/img512 presets and EDM's ImageNet-64, use img_resolution 64, img_channels <= 4,
# label_dim <= 1000, model_channels <= 448, num_blocks 3, channel_mult [1, 2, 3, 4], attn_resolutions [32, 16, 8]
# at most, logvar_channels 128, channels_per_head 64, channel_mult_emb 4), so that a crafted record cannot make the
# network's construction loop or allocate without bound. (low, high) for integers; (longest, low, high) for lists.
INT_LIMITS: dict[str, tuple[int, int]] = {
    "img_resolution": (1, 512), "img_channels": (1, 16), "label_dim": (0, 4096), "model_channels": (1, 2048),
    "num_blocks": (1, 12), "channel_mult_noise": (1, 16), "channel_mult_emb": (1, 16), "logvar_channels": (1, 1024),
    "channels_per_head": (1, 1024), "augment_dim": (0, 64)}
LIST_LIMITS: dict[str, tuple[int, int, int]] = {"channel_mult": (8, 1, 16), "attn_resolutions": (16, 1, 512)}
MAX_RECORD_DEPTH = 16  # Precond > UNet > ModuleDict > Block > MPConv is 5 deep


def _check_argument(name: str, value, what: str) -> None:
    """One recorded constructor argument against its bounds: plain numbers, strings and short lists only."""
    def fail(expected: str):
        raise ValueError(f"{what} records {name}={brief(value)}: expected {expected}")

    if name in INT_LIMITS:
        low, high = INT_LIMITS[name]
        if name.startswith("channel_mult_") and value is None:
            return
        if type(value) is not int or not low <= value <= high:
            fail(f"an integer from {low} to {high}")
    elif name in LIST_LIMITS:
        longest, low, high = LIST_LIMITS[name]
        if (not isinstance(value, (list, tuple)) or len(value) > longest
                or not all(type(v) is int and low <= v <= high for v in value)):
            fail(f"a list of at most {longest} integers from {low} to {high}")
    elif isinstance(value, (list, tuple)):
        if len(value) > 16 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            fail("a short list of numbers")
    elif not (value is None or isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 200)):
        fail("a number, a string or None")


def _arguments(record: Record, source: str) -> dict:
    """The record's constructor arguments as keywords of this project's class, each checked against its bounds."""
    cls = NETWORKS[record.class_name]
    what = f"{source}: the {record.class_name}"
    args, kwargs = record.state.get("_init_args") or (), record.state.get("_init_kwargs") or {}
    if (not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict) or len(args) + len(kwargs) > 64
            or not all(type(k) is str for k in kwargs)):
        raise ValueError(f"{what} records its arguments as {brief(args)} and {brief(kwargs)}")
    signature = inspect.signature(cls)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"{what}'s recorded arguments do not fit this project's {record.class_name}: {e}") from None
    flat = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            flat.update(value)
        else:
            flat[name] = value
    for name, value in flat.items():
        _check_argument(name, value, what)
    return flat


def _tensors(record: Record, source: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a record and its submodules, by state-dict name; a record that refers to
    itself (or appears twice), nests too deep or holds something else than tensors and modules is refused."""
    out, seen, stack = {}, set(), [(record, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        where = f"{source}: the {node.class_name} record {prefix[:-1] or '(the network)'}"
        if id(node) in seen:
            raise ValueError(f"{where} refers to itself or appears twice")
        if depth > MAX_RECORD_DEPTH:
            raise ValueError(f"{where} is nested more than {MAX_RECORD_DEPTH} deep")
        seen.add(id(node))
        if not isinstance(node.state, dict):
            raise ValueError(f"{where} has no state")
        for group in ("_parameters", "_buffers", "_modules"):
            entries = node.state.get(group) or {}
            if not isinstance(entries, dict):
                raise ValueError(f"{where} has a {type(entries).__name__} for its {group}")
            for name, value in entries.items():
                if value is None:
                    continue
                kind = Record if group == "_modules" else torch.Tensor
                if type(name) is not str or not isinstance(value, kind):
                    raise ValueError(f"{where} holds {brief(name)}: a {type(value).__name__}, not a "
                                     f"{'module' if kind is Record else 'tensor'}")
                if kind is Record:
                    stack.append((value, f"{prefix}{name}.", depth + 1))
                else:
                    out[prefix + name] = value
    return out


def _construct(record: Record, source: str) -> torch.nn.Module:
    """This project's module of the record's class, built (on the meta device: no memory) from the recorded
    constructor arguments."""
    if record.class_name not in NETWORKS:
        raise ValueError(f"{source}: holds a {record.class_name}; networks read here: {', '.join(NETWORKS)}")
    kwargs = _arguments(record, source)
    try:
        with torch.device("meta"):
            return NETWORKS[record.class_name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: the recorded arguments do not fit this project's {record.class_name}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def build(record: Record, source: str = "the pickle") -> torch.nn.Module:
    """This project's module for a record: its class by name, the recorded constructor arguments, the recorded
    tensors loaded strictly in their stored precision; eval mode."""
    module = _construct(record, source)
    what = f"{source}: the {record.class_name} recorded with {brief(record.state.get('_init_kwargs'))}"
    return _load_strict(module, _tensors(record, source), what)


def _load_strict(module: torch.nn.Module, tensors: dict, what: str) -> torch.nn.Module:
    """Assign the tensors to the (meta-device) module after checking names and shapes; eval mode."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        resized = [f"{n} {found[n]} (expected {expected[n]})" for n in expected
                   if n in found and found[n] != expected[n]]
        raise ValueError(f"{what} does not match its tensors (missing {missing[:3]}, unexpected {extra[:3]}, other "
                         f"shapes {resized[:2]})")
    dtypes = {name: t.dtype for name, t in module.state_dict().items()}
    wrong = [f"{n} ({t.dtype})" for n, t in tensors.items() if t.is_floating_point() != dtypes[n].is_floating_point]
    if wrong:
        raise ValueError(f"{what} does not match its tensors (of other kinds: {', '.join(wrong[:3])})")
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{what} does not take its tensors: {' '.join(str(e).split())[:200]}") from None
    return module.eval()


def load_network_pickle(path: str, key: str = "ema") -> torch.nn.Module:
    """The network stored under `key` of an NVlabs pickle (EDM and EDM2 snapshots keep it under "ema"), rebuilt
    as this project's module in eval mode, without executing anything from the file; the other entries are not
    constructed. Anything refused, damaged or inconsistent is a one-line ValueError naming the file."""
    return _network_entry(read_pickle(path), key, path)


def _network_entry(data, key: str, path: str) -> torch.nn.Module:
    """The network of the pickle's `key` entry (or of the whole pickle when it is one record)."""
    if isinstance(data, dict):
        if key not in data:
            raise ValueError(f"{path} has no {key!r} entry (it has {', '.join(str(k)[:40] for k in list(data)[:12])})")
        data = data[key]
    if not isinstance(data, Record):
        raise ValueError(f"{path}: the {key!r} entry is a {type(data).__name__}, not a network")
    return build(data, path)


def load_generator(path: str) -> tuple[torch.nn.Module, Record | None]:
    """The network of an NVlabs pickle or converted network (load_network) and, from one read of the file, the
    pickle's "encoder" record: what maps its images to pixels (EDM2's StandardRGBEncoder or, for its img512
    networks, StabilityVAEEncoder; data only, see encoders.encoder_from_record). None where nothing is recorded
    (EDM's snapshots, converted networks)."""
    if not path.endswith(".pkl"):
        return load_converted(path), None
    data = read_pickle(path)
    encoder = data.get("encoder") if isinstance(data, dict) else None
    if encoder is not None and not isinstance(encoder, Record):
        raise ValueError(f"{path}: the 'encoder' entry is a {type(encoder).__name__}, not an encoder record")
    return _network_entry(data, "ema", path), encoder


CONVERTED_RECORD = "networks.json"  # beside converted networks: {"nvlabs_networks": {file name: record}}


def _beside(path: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), name)


def _converted_entries(path: str) -> dict:
    """{file name: {"class", "init_kwargs"}} of the converted networks in path's folder, from its networks.json;
    a folder converted before networks.json existed keeps them in an args.json holding only "nvlabs_networks",
    which is read the same way (args.json otherwise is a training run's flags). A damaged networks.json is a
    one-line error naming it."""
    record = _beside(path, CONVERTED_RECORD)
    try:
        with open(record) as f:
            data = json.load(f)
    except OSError:
        data = None
    except ValueError as err:
        raise ValueError(f"{record}: not a record of converted networks (not JSON: {err})") from None
    if data is not None:
        if not (isinstance(data, dict) and isinstance(data.get("nvlabs_networks"), dict)):
            raise ValueError(f'{record}: not a record of converted networks (expected {{"nvlabs_networks": {{...}}}})')
        return data["nvlabs_networks"]
    try:
        with open(_beside(path, "args.json")) as f:
            legacy = json.load(f)
    except (OSError, ValueError):
        return {}
    if isinstance(legacy, dict) and set(legacy) == {"nvlabs_networks"} and isinstance(legacy["nvlabs_networks"], dict):
        return legacy["nvlabs_networks"]
    return {}


def is_converted(path: str) -> bool:
    """Whether a .pt/.safetensors checkpoint is a converted NVlabs network (listed in the networks.json beside it)."""
    return os.path.basename(path) in _converted_entries(path)


def save_converted(net: torch.nn.Module, path: str) -> None:
    """Write the network's state dict (.pt or .safetensors) and its class and constructor arguments into the
    networks.json beside it (one entry per file, so several networks can share a folder), both atomically. The
    folder's args.json, if any (a training run's flags), is left alone."""
    entries = dict(_converted_entries(path))
    save_state_dict(net.state_dict(), path)
    entries[os.path.basename(path)] = {"class": type(net).__name__, "init_kwargs": net.init_kwargs}
    data = json.dumps({"nvlabs_networks": entries}, indent=1, sort_keys=True).encode()
    atomic_write(_beside(path, CONVERTED_RECORD), lambda f: f.write(data))


def load_converted(path: str) -> torch.nn.Module:
    """A network written by save_converted, in eval mode."""
    meta = _converted_entries(path)[os.path.basename(path)]
    record = Record(meta["class"], {"_init_kwargs": meta["init_kwargs"]})
    with torch.device("meta"):
        module = _construct(record, path)
    return _load_strict(module, load_state_dict(path), f"{path}: the {record.class_name} of its networks.json")


def load_network(path: str, key: str = "ema") -> torch.nn.Module:
    """An NVlabs pickle, or a network converted from one (.pt/.safetensors with its networks.json)."""
    return load_network_pickle(path, key) if path.endswith(".pkl") else load_converted(path)
