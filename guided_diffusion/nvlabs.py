"""Read NVlabs' network pickles (EDM's and EDM2's network snapshots) without running any of their code.

Those pickles are written by `torch_utils.persistence`: each network object is a call of
`_reconstruct_persistent_obj(meta)`, where meta holds the Python source of its module (which NVlabs' loader
executes), the class name and the object's state (its parameters, buffers, submodules and the constructor
arguments it was built with). This reader accepts only those records, torch tensors and storages (read with
torch's weights-only loader), numpy arrays and plain containers; any other global is refused with a one-line
error, and the recorded source is never executed. The network is rebuilt from this project's class of the same
name with the recorded constructor arguments, and the recorded tensors are loaded into it strictly.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import warnings
from dataclasses import dataclass

import numpy as np
import torch

try:
    from numpy._core import multiarray as np_multiarray  # numpy >= 2
except ImportError:
    from numpy.core import multiarray as np_multiarray
from . import edm, edm2
from .checkpoint import load_state_dict, save_state_dict
from .fileio import atomic_write

# The classes a record may name, by the name NVlabs' code gives them.
NETWORKS: dict[str, type[torch.nn.Module]] = {"Precond": edm2.Precond, "EDMPrecond": edm.EDMPrecond}


@dataclass
class Record:
    """A persistent object of NVlabs' code, never instantiated: its class name and recorded state."""

    class_name: str
    state: dict

    @classmethod
    def from_meta(cls, meta: dict) -> Record:
        if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
            raise pickle.UnpicklingError("a persistence record without a class name")
        return cls(str(meta["class_name"]), dict(meta.get("state") or {}))


class EasyDict(dict):
    """dnnlib's attribute dictionary, read as a plain dict."""


def _storage_from_bytes(data: bytes):
    """A tensor storage pickled by value, read with torch's weights-only loader (no arbitrary globals)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Record.from_meta,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    # numpy arrays and scalars as numpy 1 (numpy.core) and 2 (numpy._core) name their rebuilders.
    **{(module, name): getattr(np_multiarray, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")},
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused the global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused the persistent id {pid!r}")


def read_pickle(path: str):
    """The pickle's contents with every network as a Record (ValueError naming a refused global)."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not readable as an NVlabs network pickle: {e} (no code in it was run)") from None


def _tensors(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """The parameters and buffers of a record and its submodules, by state-dict name."""
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (record.state.get(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor
    for name, child in (record.state.get("_modules") or {}).items():
        if isinstance(child, Record):
            out.update(_tensors(child, f"{prefix}{name}."))
    return out


def _construct(record: Record, source: str) -> torch.nn.Module:
    """This project's module of the record's class, built from the recorded constructor arguments."""
    if record.class_name not in NETWORKS:
        raise ValueError(f"{source}: holds a {record.class_name}; networks read here: {', '.join(NETWORKS)}")
    args = record.state.get("_init_args") or ()
    try:
        return NETWORKS[record.class_name](*args, **dict(record.state.get("_init_kwargs") or {}))
    except TypeError as e:
        raise ValueError(f"{source}: the recorded arguments do not fit this project's {record.class_name}: "
                         f"{e}") from None


def build(record: Record, source: str = "the pickle") -> torch.nn.Module:
    """This project's module for a record: its class by name, the recorded constructor arguments, the recorded
    tensors loaded strictly; eval mode."""
    kwargs = dict(record.state.get("_init_kwargs") or {})
    with torch.device("meta"):
        module = _construct(record, source)
    return _load_strict(module, _tensors(record), f"{source}: the {record.class_name} recorded with {kwargs}")


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
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval()


def load_network_pickle(path: str, key: str = "ema") -> torch.nn.Module:
    """The network stored under `key` of an NVlabs pickle (EDM2 snapshots keep it under "ema"), rebuilt as this
    project's module in eval mode, without executing anything from the file."""
    data = read_pickle(path)
    if isinstance(data, dict):
        if key not in data:
            raise ValueError(f"{path} has no {key!r} entry (it has {', '.join(map(str, data))})")
        data = data[key]
    if not isinstance(data, Record):
        raise ValueError(f"{path}: the {key!r} entry is a {type(data).__name__}, not a network")
    return build(data, path)


def _args_json(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")


def _converted_entries(path: str) -> dict | None:
    """The args.json beside path: {file name: {"class", "init_kwargs"}} of its converted networks (None when the
    folder's args.json is not one of converted networks, e.g. a training run's)."""
    try:
        with open(_args_json(path)) as f:
            data = json.load(f)
    except OSError:
        return {}
    except ValueError:
        return None
    return data.get("nvlabs_networks") if isinstance(data, dict) and set(data) == {"nvlabs_networks"} else None


def is_converted(path: str) -> bool:
    """Whether a .pt/.safetensors checkpoint is a converted NVlabs network (listed in the args.json beside it)."""
    return os.path.basename(path) in (_converted_entries(path) or {})


def save_converted(net: torch.nn.Module, path: str) -> None:
    """Write the network's state dict (.pt or .safetensors) and its class and constructor arguments into the
    args.json beside it (one entry per file, so several networks can share a folder), both atomically."""
    entries = _converted_entries(path)
    if entries is None:
        raise ValueError(f"{path}: its folder's args.json belongs to another checkpoint (a training run): write "
                         "elsewhere")
    save_state_dict(net.state_dict(), path)
    entries[os.path.basename(path)] = {"class": type(net).__name__, "init_kwargs": net.init_kwargs}
    data = json.dumps({"nvlabs_networks": entries}, indent=1, sort_keys=True).encode()
    atomic_write(_args_json(path), lambda f: f.write(data))


def load_converted(path: str) -> torch.nn.Module:
    """A network written by save_converted, in eval mode."""
    meta = _converted_entries(path)[os.path.basename(path)]
    record = Record(meta["class"], {"_init_kwargs": meta["init_kwargs"]})
    with torch.device("meta"):
        module = _construct(record, path)
    return _load_strict(module, load_state_dict(path), f"{path}: the {record.class_name} of its args.json")


def load_network(path: str, key: str = "ema") -> torch.nn.Module:
    """An NVlabs pickle, or a network converted from one (.pt/.safetensors with its args.json)."""
    return load_network_pickle(path, key) if path.endswith(".pkl") else load_converted(path)


# EDM2's generator presets (its generate_images.py): name -> (network, guide network or None, guide scale). The
# files are posted at EDM2_URL. The img512 networks work on latents: they resolve, and loading them says that
# decoding needs Stability's VAE, which this project does not include.
EDM2_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"
EDM2_PRESETS: dict[str, tuple[str, str | None, float]] = {
    "edm2-img512-xs-fid": ("edm2-img512-xs-2147483-0.135.pkl", None, 1.0),
    "edm2-img512-xs-dino": ("edm2-img512-xs-2147483-0.200.pkl", None, 1.0),
    "edm2-img512-s-fid": ("edm2-img512-s-2147483-0.130.pkl", None, 1.0),
    "edm2-img512-s-dino": ("edm2-img512-s-2147483-0.190.pkl", None, 1.0),
    "edm2-img512-m-fid": ("edm2-img512-m-2147483-0.100.pkl", None, 1.0),
    "edm2-img512-m-dino": ("edm2-img512-m-2147483-0.155.pkl", None, 1.0),
    "edm2-img512-l-fid": ("edm2-img512-l-1879048-0.085.pkl", None, 1.0),
    "edm2-img512-l-dino": ("edm2-img512-l-1879048-0.155.pkl", None, 1.0),
    "edm2-img512-xl-fid": ("edm2-img512-xl-1342177-0.085.pkl", None, 1.0),
    "edm2-img512-xl-dino": ("edm2-img512-xl-1342177-0.155.pkl", None, 1.0),
    "edm2-img512-xxl-fid": ("edm2-img512-xxl-0939524-0.070.pkl", None, 1.0),
    "edm2-img512-xxl-dino": ("edm2-img512-xxl-0939524-0.150.pkl", None, 1.0),
    "edm2-img64-s-fid": ("edm2-img64-s-1073741-0.075.pkl", None, 1.0),
    "edm2-img64-m-fid": ("edm2-img64-m-2147483-0.060.pkl", None, 1.0),
    "edm2-img64-l-fid": ("edm2-img64-l-1073741-0.040.pkl", None, 1.0),
    "edm2-img64-xl-fid": ("edm2-img64-xl-0671088-0.040.pkl", None, 1.0),
    "edm2-img512-xs-guid-fid": ("edm2-img512-xs-2147483-0.045.pkl", "edm2-img512-xs-uncond-2147483-0.045.pkl", 1.4),
    "edm2-img512-xs-guid-dino": ("edm2-img512-xs-2147483-0.150.pkl", "edm2-img512-xs-uncond-2147483-0.150.pkl", 1.7),
    "edm2-img512-s-guid-fid": ("edm2-img512-s-2147483-0.025.pkl", "edm2-img512-xs-uncond-2147483-0.025.pkl", 1.4),
    "edm2-img512-s-guid-dino": ("edm2-img512-s-2147483-0.085.pkl", "edm2-img512-xs-uncond-2147483-0.085.pkl", 1.9),
    "edm2-img512-m-guid-fid": ("edm2-img512-m-2147483-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl", 1.2),
    "edm2-img512-m-guid-dino": ("edm2-img512-m-2147483-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 2.0),
    "edm2-img512-l-guid-fid": ("edm2-img512-l-1879048-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.2),
    "edm2-img512-l-guid-dino": ("edm2-img512-l-1879048-0.035.pkl", "edm2-img512-xs-uncond-2147483-0.035.pkl", 1.7),
    "edm2-img512-xl-guid-fid": ("edm2-img512-xl-1342177-0.020.pkl", "edm2-img512-xs-uncond-2147483-0.020.pkl", 1.2),
    "edm2-img512-xl-guid-dino": ("edm2-img512-xl-1342177-0.030.pkl", "edm2-img512-xs-uncond-2147483-0.030.pkl", 1.7),
    "edm2-img512-xxl-guid-fid": ("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.2),
    "edm2-img512-xxl-guid-dino": ("edm2-img512-xxl-0939524-0.015.pkl", "edm2-img512-xs-uncond-2147483-0.015.pkl", 1.7),
    "edm2-img512-s-autog-fid": ("edm2-img512-s-2147483-0.070.pkl", "edm2-img512-xs-0134217-0.125.pkl", 2.1),
    "edm2-img512-s-autog-dino": ("edm2-img512-s-2147483-0.120.pkl", "edm2-img512-xs-0134217-0.165.pkl", 2.45),
    "edm2-img512-xxl-autog-fid": ("edm2-img512-xxl-0939524-0.075.pkl", "edm2-img512-m-0268435-0.155.pkl", 2.05),
    "edm2-img512-xxl-autog-dino": ("edm2-img512-xxl-0939524-0.130.pkl", "edm2-img512-m-0268435-0.205.pkl", 2.3),
    "edm2-img512-s-uncond-autog-fid": ("edm2-img512-s-uncond-2147483-0.070.pkl",
                                       "edm2-img512-xs-uncond-0134217-0.110.pkl", 2.85),
    "edm2-img512-s-uncond-autog-dino": ("edm2-img512-s-uncond-2147483-0.090.pkl",
                                        "edm2-img512-xs-uncond-0134217-0.125.pkl", 2.9),
    "edm2-img64-s-autog-fid": ("edm2-img64-s-1073741-0.045.pkl", "edm2-img64-xs-0134217-0.110.pkl", 1.7),
    "edm2-img64-s-autog-dino": ("edm2-img64-s-1073741-0.105.pkl", "edm2-img64-xs-0134217-0.175.pkl", 2.2),
}


def resolve_preset(name: str, model_dir: str) -> dict:
    """The sampling flags of an EDM2 preset whose files lie in model_dir: model_path, guide_model_path and
    guide_scale, with EDM2's sampler (Heun, 32 steps, D not clipped). A missing file is a one-line error that
    says where to download it."""
    if name not in EDM2_PRESETS:
        raise ValueError(f"--preset {name!r}: choose one of {', '.join(EDM2_PRESETS)}")
    net, guide, scale = EDM2_PRESETS[name]
    for file in filter(None, (net, guide)):
        if not os.path.exists(os.path.join(model_dir, file)):
            raise FileNotFoundError(f"--preset {name}: {os.path.join(model_dir, file)} not found: download "
                                    f"{EDM2_URL}/{file} into --model_dir {model_dir}")
    return dict(model_path=os.path.join(model_dir, net), guide_model_path=os.path.join(model_dir, guide) if guide
                else "", guide_scale=scale, sampler="heun", steps=32, clip_denoised=False)
