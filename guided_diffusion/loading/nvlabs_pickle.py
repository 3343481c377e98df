"""The restricted reader of NVlabs' network pickles (EDM's and EDM2's snapshots): their contents as inert data.

NVlabs' snapshots are written by `torch_utils.persistence`: each persistent object (the network and its
submodules, the loss, EDM2's encoder, EDM's augmentation pipe) is a call of `_reconstruct_persistent_obj(meta)`,
where meta holds the Python source of its module (which NVlabs' loader executes), the class name and the object's
state. Their U-Nets hold blocks in `torch.nn.ModuleDict`, pickled as an ordinary torch module (the class, then its
`__dict__`). This reader turns both into Record objects holding the class name and the recorded state, and
accepts otherwise only torch tensors and storages (storages through torch's weights-only loader), numeric numpy
scalars and arrays, and plain containers. Every other global is refused, no recorded source is executed, no
constructor of the file's classes runs, and everything that would allocate is checked against the bytes that
back it first, so a crafted file fails with one ValueError naming it.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
import reprlib
import warnings

import numpy as np
import torch

try:
    from numpy._core import multiarray as np_multiarray  # numpy >= 2
except ImportError:
    from numpy.core import multiarray as np_multiarray

MAX_TENSOR_DIMS = 8
_brief = reprlib.Repr()
_brief.maxlevel, _brief.maxstring, _brief.maxother = 3, 60, 60


def brief(value) -> str:
    """A short repr for error messages (bounded in length and depth, safe on self-references)."""
    return _brief.repr(value)


class Record:
    """A persistent object of NVlabs' code, never instantiated: its class name and recorded state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __repr__(self) -> str:
        return f"Record({self.class_name!r}, keys {sorted(map(str, self.state or {}))[:8]})"

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"state assigned to the {self.class_name} record")

    @classmethod
    def from_meta(cls, meta: dict) -> Record:
        """The record of one `_reconstruct_persistent_obj(meta)` call (meta checked, its module source ignored)."""
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
            raise pickle.UnpicklingError("a persistence record without a class name")
        state = meta.get("state")
        if not isinstance(state, (dict, type(None))):
            raise pickle.UnpicklingError(f"the {brief(meta['class_name'])} record has a {type(state).__name__} "
                                         "for its state")
        return cls(meta["class_name"][:100], dict(state or {}))


class ModuleDictRecord(Record):
    """torch.nn.ModuleDict as it is pickled inside the networks (created empty, then given its __dict__): read as
    a Record of that name, without creating a torch module."""

    def __new__(cls):
        self = object.__new__(cls)
        self.class_name, self.state = "ModuleDict", None
        return self

    def __init__(self):
        pass

    def __setstate__(self, state):
        if not isinstance(state, dict) or self.state is not None:
            raise pickle.UnpicklingError("a ModuleDict whose state is not one dict")
        self.state = dict(state)


class EasyDict(dict):
    """dnnlib's attribute dictionary, read as a plain dict."""


# --- torch tensors and storages ------------------------------------------------------------------------------

_STORAGE_ITEM_SIZE = {"HalfStorage": 2, "BFloat16Storage": 2, "FloatStorage": 4, "DoubleStorage": 8,
                      "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                      "BoolStorage": 1}


_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # what torch's legacy format starts with


class _StorageHeader(pickle.Unpickler):
    """Reads the declared storages of a storage pickled by value (torch's legacy format), loading nothing."""

    def __init__(self, f):
        super().__init__(f)
        self.declared: list[tuple] = []

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_ITEM_SIZE:
            return name
        raise pickle.UnpicklingError(f"a storage naming {module[:80]}.{name[:80]}: code or objects that are not "
                                     "plain weights")

    def persistent_load(self, pid):
        self.declared.append(pid)


def _storage_from_bytes(data: bytes):
    """A tensor storage pickled by value: its declared size checked against the bytes that hold it, then read
    with torch's weights-only loader (no arbitrary globals)."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("a storage that is not bytes")
    header = _StorageHeader(io.BytesIO(data))
    try:  # magic number, protocol version, system info, then the storage as persistent ids
        parts = [header.load() for _ in range(4)]
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means a damaged or crafted storage
        raise pickle.UnpicklingError(f"a storage that is not torch's ({type(e).__name__})") from None
    if parts[0] != _TORCH_MAGIC:
        raise pickle.UnpicklingError("a storage that is not torch's")
    declared = 0
    for pid in header.declared:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and type(pid[1]) is str
                and pid[1] in _STORAGE_ITEM_SIZE and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):
            raise pickle.UnpicklingError(f"a storage with the reference {brief(pid)}")
        declared += pid[4] * _STORAGE_ITEM_SIZE[pid[1]]
    if declared > len(data):
        raise pickle.UnpicklingError(f"a storage declaring {declared} bytes held in {len(data)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise pickle.UnpicklingError(f"a storage holding code or objects that are not plain weights "
                                     f"({found.group(1) if found else 'refused by the weights-only loader'})") from None


def _ints(values, what: str) -> tuple[int, ...]:
    if (not isinstance(values, (tuple, list)) or len(values) > MAX_TENSOR_DIMS
            or not all(type(v) is int and v >= 0 for v in values)):
        raise pickle.UnpicklingError(f"a tensor with the {what} {brief(values)}")
    return tuple(values)


def _no_hooks(hooks) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise pickle.UnpicklingError("a tensor with backward hooks")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch's _rebuild_tensor_v2 after checking that the view lies inside its storage."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor over a {type(storage).__name__}, not a storage")
    size, stride = _ints(size, "shape"), _ints(stride, "strides")
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise pickle.UnpicklingError(f"a tensor with the shape {size}, strides {stride} and offset {brief(offset)}")
    _no_hooks(backward_hooks)
    if metadata:
        raise pickle.UnpicklingError("a tensor with python attributes")
    # Inside its storage, and no more elements than the storage holds (no broadcast views bigger than the file).
    available = storage._size()  # elements (the public size() warns that typed storages are deprecated)
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
    if end > available or math.prod(size) > available - min(offset, available):
        raise pickle.UnpicklingError(f"a tensor of shape {list(size)} reaching element {max(end, math.prod(size))} "
                                     f"of a storage of {available}")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter holding a {type(data).__name__}")
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, bool(requires_grad))


# --- numpy scalars and arrays (numeric only) -----------------------------------------------------------------

_NUMERIC_TYPES = {f"{kind}{size}" for kind, sizes in (("f", (2, 4, 8)), ("i", (1, 2, 4, 8)), ("u", (1, 2, 4, 8)),
                                                     ("c", (8, 16))) for size in sizes} | {"b1"}


def _numeric(dtype) -> np.dtype:
    if (not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None or dtype.subdtype
            or f"{dtype.kind}{dtype.itemsize}" not in _NUMERIC_TYPES):
        raise pickle.UnpicklingError(f"a numpy value of type {brief(dtype)}")
    return dtype


def _np_dtype(name, align=False, copy=True) -> np.dtype:
    if not isinstance(name, str) or name.lstrip("<>=|") not in _NUMERIC_TYPES:
        raise pickle.UnpicklingError(f"the numpy type {brief(name)}")
    return np.dtype(name)


def _np_scalar(dtype, data=None):
    dtype = _numeric(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dtype} scalar of {brief(data)}")
    return np_multiarray.scalar(dtype, data)


class _NumpyArrayClass:
    """What the global numpy.ndarray stands for: only an argument of the array rebuilder, never called."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray called directly (numpy pickles arrays through its _reconstruct)")


class _PickledArray(np.ndarray):
    """A numpy array being unpickled: its recorded shape, type and bytes are checked before numpy reads them."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("a numpy array with a damaged state")
        version, shape, dtype, fortran, raw = state
        shape, dtype = _ints(shape, "numpy shape"), _numeric(dtype)
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(f"a numpy array of shape {list(shape)} ({dtype}) held in "
                                         f"{len(raw) if isinstance(raw, (bytes, bytearray)) else brief(raw)} bytes")
        super().__setstate__((version, shape, dtype, bool(fortran), raw))


def _np_reconstruct(subtype, shape, typecode):
    if subtype is not _NumpyArrayClass or tuple(shape) != (0,):
        raise pickle.UnpicklingError("a numpy array built otherwise than numpy pickles them")
    return np_multiarray._reconstruct(_PickledArray, (0,), b"b")


# --- the reader ---------------------------------------------------------------------------------------------

_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Record.from_meta,
    # The one torch module NVlabs' networks pickle by value (their U-Nets' enc and dec).
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NumpyArrayClass,
    # numpy arrays and scalars as numpy 1 (numpy.core) and 2 (numpy._core) name their rebuilders.
    **{(module, name): rebuild for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, rebuild in (("_reconstruct", _np_reconstruct), ("scalar", _np_scalar))},
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused the global {module[:80]}.{name[:80]}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused the persistent id {brief(pid)}")


def read_pickle(path: str):
    """The pickle's contents, each persistent object (network, loss, encoder, augmentation pipe) and ModuleDict
    as a Record; a ValueError naming the file for anything refused, damaged or inconsistent."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not an NVlabs network pickle") from None
    except Exception as e:  # noqa: BLE001 - whatever a crafted or damaged file provokes: one line naming it
        reason = str(e).splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not readable as an NVlabs network pickle: {reason} (no code in it was run)") \
            from None
