"""A reader of TensorFlow's frozen ``GraphDef`` files in plain Python: the torch backend needs no TensorFlow.

The protobuf wire format is decoded here field by field (varints, fixed32, fixed64 and length-delimited fields;
unknown fields are skipped by their wire type), for the parts of the schema the evaluator uses:

* ``GraphDef``: ``node`` (1), ``library`` (2: the names of its functions, so that a graph with functions can be
  refused) and ``versions.producer`` (4.1);
* ``NodeDef``: ``name``, ``op``, ``input`` and the ``attr`` map;
* ``AttrValue``: ``s`` (bytes), ``i`` (int), ``f`` (float), ``b`` (bool), ``type`` (the ``DataType`` number),
  ``shape`` (a tuple of sizes, None for an unknown rank), ``tensor`` (a numpy array) and ``list`` (a python list
  of one of those kinds); other kinds (``placeholder``, ``func``) read as None;
* ``TensorProto``: decoded to numpy exactly as ``tf.make_ndarray`` does (``tensor_content`` by dtype, else the
  typed repeated field, packed or not, filled up to the shape's size with its last value, zeros when empty).

A message field that occurs twice is read from its last occurrence (protobuf would merge them; TensorFlow never
writes such files).  Damaged or hostile data (a bad varint, a length past the end, a known field with another wire
type, an unsupported dtype, a tensor that would expand beyond ``MAX_EXPANDED_BYTES``) is an ``EvaluatorError``
naming the label (a file or a flag) and what was expected.

    graph = read_graph_def(Path("classify_image_graph_def.pb").read_bytes(), "classify_image_graph_def.pb")
    weights = next(node for node in graph.node if node.name == "softmax/weights").attr["value"]
"""

from __future__ import annotations

import array
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from evaluations.errors import EvaluatorError

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1
# TensorFlow's DataType numbers (types.proto) with the numpy type make_ndarray gives and the TensorProto field
# holding their values when tensor_content is empty.
DTYPES: dict[int, tuple[str, type, int]] = {
    1: ("float", np.float32, 5),    # float_val
    2: ("double", np.float64, 6),   # double_val
    3: ("int32", np.int32, 7),      # int_val
    4: ("uint8", np.uint8, 7),
    5: ("int16", np.int16, 7),
    6: ("int8", np.int8, 7),
    7: ("string", np.object_, 8),   # string_val
    9: ("int64", np.int64, 10),     # int64_val
    10: ("bool", np.bool_, 11),     # bool_val
    17: ("uint16", np.uint16, 7),
    19: ("half", np.float16, 13),   # half_val: the float16 bits in an int32
    22: ("uint32", np.uint32, 16),  # uint32_val
    23: ("uint64", np.uint64, 17),  # uint64_val
}
UNSUPPORTED_DTYPES = {0: "invalid", 8: "complex64", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
                      15: "qint16", 16: "quint16", 18: "complex128", 20: "resource", 21: "variant"}
FIXED_WIDTH_FIELDS = {5: "<f4", 6: "<f8"}  # float_val, double_val
VARINT_FIELDS = {7: "int32", 10: "int64", 11: "bool", 13: "int32", 16: "uint32", 17: "uint64"}
LIST_KINDS = {2: "s", 3: "i", 4: "f", 5: "b", 6: "type", 7: "shape", 8: "tensor"}  # AttrValue.ListValue
MAX_RANK = 32
# Bytes that tensors stored with fewer values than their shape holds may expand to, all of a file's together
# (tensor_content is bounded by the file itself): enough for any real graph, never a huge allocation.
MAX_EXPANDED_BYTES = 1 << 28


@dataclass
class NodeDef:
    """One node: its name, op type, inputs (``name``, ``name:1``, ``^control``) and attributes as python values."""

    name: str = ""
    op: str = ""
    input: list[str] = field(default_factory=list)
    attr: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphDef:
    """A frozen graph: its nodes in file order, ``versions.producer`` and the names of its library functions."""

    node: list[NodeDef] = field(default_factory=list)
    producer: int = 0
    functions: list[str] = field(default_factory=list)


@dataclass
class _Tensor:
    """A TensorProto's fields as read, decoded to numpy once the node it belongs to is known."""

    dtype: int = 0
    shape: tuple[int, ...] = ()
    content: memoryview | None = None
    values: dict[int, list] = field(default_factory=dict)  # field number -> strings, byte or uint64 chunks


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


class _Reader:
    """Wire-format decoding of one buffer; every error names the label and the byte offset."""

    def __init__(self, data: bytes, label: str):
        self.data = data
        self.view = memoryview(data)
        self.label = label
        self.expanded = 0

    def fail(self, what: str, offset: int) -> EvaluatorError:
        return EvaluatorError(f"{self.label}: corrupt or truncated GraphDef: {what} at byte {offset}")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        data, start, result, shift = self.data, pos, 0, 0
        while True:
            if pos >= end:
                raise self.fail("a varint runs past the end of its message", start)
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & MASK64, pos
            shift += 7
            if shift >= 70:
                raise self.fail("a varint longer than 10 bytes", start)

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """``(field number, wire type, a, b)`` of each field in ``[pos, end)``: for a varint ``a`` is its value,
        otherwise ``[a, b)`` are the field's bytes (for a group: its fields and end marker)."""
        while pos < end:
            start = pos
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0 or number >= 1 << 29:
                raise self.fail(f"field number {number}", start)
            if wire == VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, 0
                continue
            if wire == LENGTH:
                size, pos = self.varint(pos, end)
                if size > end - pos:
                    raise self.fail(f"field {number} of {size} bytes runs past the end of its message "
                                    f"({end - pos} bytes left)", start)
            elif wire in (FIXED32, FIXED64):
                size = 4 if wire == FIXED32 else 8
                if size > end - pos:
                    raise self.fail(f"a fixed-width field {number} runs past the end of its message", start)
            elif wire == START_GROUP:  # yielded so that a known field read as a group is refused
                after = self.skip_group(number, pos, end, start)
                yield number, wire, pos, after
                pos = after
                continue
            else:
                raise self.fail(f"wire type {wire} of field {number}", start)
            yield number, wire, pos, pos + size
            pos += size

    def skip_group(self, number: int, pos: int, end: int, start: int) -> int:
        """The position after the (deprecated) group opened by field ``number``, nested groups included."""
        open_groups = [number]
        while open_groups:
            if pos >= end:
                raise self.fail(f"group {number} is not closed", start)
            key, pos = self.varint(pos, end)
            inner, wire = key >> 3, key & 7
            if wire == END_GROUP:
                if inner != open_groups.pop():
                    raise self.fail(f"group {number} is closed by field {inner}", start)
            elif wire == START_GROUP:
                open_groups.append(inner)
            elif wire == VARINT:
                pos = self.varint(pos, end)[1]
            elif wire in (LENGTH, FIXED32, FIXED64):
                if wire == LENGTH:
                    size, pos = self.varint(pos, end)
                else:
                    size = 4 if wire == FIXED32 else 8
                if size > end - pos:
                    raise self.fail(f"a field of group {number} runs past the end of its message", start)
                pos += size
            else:
                raise self.fail(f"wire type {wire} inside group {number}", start)
        return pos

    def expect(self, number: int, wire: int, expected: int, offset: int, message: str) -> None:
        if wire != expected:
            raise self.fail(f"field {number} of a {message} has wire type {wire}, expected {expected}", offset)

    def text(self, a: int, b: int) -> str:
        try:
            return self.data[a:b].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string that is not UTF-8", a) from None

    def packed_varints(self, a: int, b: int) -> np.ndarray:
        """The varints packed in ``[a, b)`` as uint64, decoded with numpy (8 bytes a value, however many)."""
        buf = np.frombuffer(self.view[a:b], np.uint8)
        ends = np.flatnonzero(buf < 0x80)
        if buf.size and (ends.size == 0 or ends[-1] != buf.size - 1):
            cut = a + (int(ends[-1]) + 1 if ends.size else 0)
            raise self.fail("a packed varint runs past the end of its field", cut)
        starts = np.concatenate(([0], ends[:-1] + 1)) if ends.size else ends
        lengths = ends - starts + 1
        if lengths.size and lengths.max() > 10:
            raise self.fail("a varint longer than 10 bytes", a + int(starts[np.argmax(lengths > 10)]))
        values = np.zeros(ends.size, np.uint64)
        for k in range(int(lengths.max()) if lengths.size else 0):
            take = lengths > k
            values[take] |= (buf[starts[take] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        return values

    def varint_field(self, wire: int, a: int, b: int) -> np.ndarray:
        """A repeated varint field's occurrence, packed (``[a, b)``) or one value (``a``), as uint64."""
        return self.packed_varints(a, b) if wire == LENGTH else np.array([a], np.uint64)

    # ------------------------------------------------------------------------------------------- messages

    def graph_def(self) -> GraphDef:
        graph = GraphDef()
        for number, wire, a, b in self.fields(0, len(self.data)):
            if number == 1:
                self.expect(number, wire, LENGTH, a, "GraphDef")
                graph.node.append(self.node_def(a, b))
            elif number == 2:
                self.expect(number, wire, LENGTH, a, "GraphDef")
                graph.functions.extend(self.function_names(a, b))
            elif number == 4:
                self.expect(number, wire, LENGTH, a, "GraphDef")
                for inner, inner_wire, value, _ in self.fields(a, b):
                    if inner == 1:
                        self.expect(inner, inner_wire, VARINT, a, "VersionDef")
                        graph.producer = _signed(value & MASK32, 32)
        return graph

    def function_names(self, a: int, b: int) -> list[str]:
        """The signature names of a FunctionDefLibrary's functions ("" for a function without one)."""
        names = []
        for number, wire, fa, fb in self.fields(a, b):
            if number != 1:
                continue
            self.expect(number, wire, LENGTH, fa, "FunctionDefLibrary")
            name = ""
            for inner, inner_wire, sa, sb in self.fields(fa, fb):
                if inner == 1:  # signature (OpDef), whose field 1 is the name
                    self.expect(inner, inner_wire, LENGTH, sa, "FunctionDef")
                    for op_field, op_wire, na, nb in self.fields(sa, sb):
                        if op_field == 1:
                            self.expect(op_field, op_wire, LENGTH, na, "OpDef")
                            name = self.text(na, nb)
            names.append(name)
        return names

    def node_def(self, a: int, b: int) -> NodeDef:
        node, raw_attrs = NodeDef(), {}
        for number, wire, fa, fb in self.fields(a, b):
            if number in (1, 2, 3, 5):
                self.expect(number, wire, LENGTH, fa, "NodeDef")
            if number == 1:
                node.name = self.text(fa, fb)
            elif number == 2:
                node.op = self.text(fa, fb)
            elif number == 3:
                node.input.append(self.text(fa, fb))
            elif number == 5:
                key, value = "", (None, None)
                for inner, inner_wire, va, vb in self.fields(fa, fb):
                    if inner in (1, 2):
                        self.expect(inner, inner_wire, LENGTH, va, "NodeDef.attr entry")
                    if inner == 1:
                        key = self.text(va, vb)
                    elif inner == 2:
                        value = self.attr_value(va, vb)
                raw_attrs[key] = value
        for key, (kind, value) in raw_attrs.items():
            node.attr[key] = self.finish(kind, value, f"node {node.name!r} attr {key!r}")
        return node

    def finish(self, kind: str | None, value: Any, where: str) -> Any:
        """An attribute as its python value (tensors decoded now that the node is known)."""
        if kind == "tensor":
            return self.ndarray(value, where)
        if kind == "list":
            return [self.ndarray(item, where) if isinstance(item, _Tensor) else item for item in value]
        return value

    def attr_value(self, a: int, b: int) -> tuple[str | None, Any]:
        kind, value = None, None  # a oneof: the last field read wins
        for number, wire, fa, fb in self.fields(a, b):
            if number in (1, 2, 7, 8):
                self.expect(number, wire, LENGTH, fa, "AttrValue")
            elif number in (3, 5, 6):
                self.expect(number, wire, VARINT, fa, "AttrValue")
            elif number == 4:
                self.expect(number, wire, FIXED32, fa, "AttrValue")
            if number == 1:
                kind, value = "list", self.list_value(fa, fb)
            elif number == 2:
                kind, value = "s", bytes(self.view[fa:fb])
            elif number == 3:
                kind, value = "i", _signed(fa, 64)
            elif number == 4:
                kind, value = "f", struct.unpack_from("<f", self.data, fa)[0]
            elif number == 5:
                kind, value = "b", fa != 0
            elif number == 6:
                kind, value = "type", _signed(fa & MASK32, 32)
            elif number == 7:
                dims, unknown_rank = self.shape(fa, fb)
                kind, value = "shape", None if unknown_rank else dims
            elif number == 8:
                kind, value = "tensor", self.tensor(fa, fb)
            elif number in (9, 10):  # placeholder, func: not used by the evaluator
                kind, value = None, None
        return kind, value

    def list_value(self, a: int, b: int) -> list:
        items: dict[str, list] = {}
        for number, wire, fa, fb in self.fields(a, b):
            kind = LIST_KINDS.get(number)
            if kind is None:
                continue
            values = items.setdefault(kind, [])
            if kind in ("s", "shape", "tensor"):
                self.expect(number, wire, LENGTH, fa, "AttrValue.ListValue")
                if kind == "s":
                    values.append(bytes(self.view[fa:fb]))
                elif kind == "shape":
                    dims, unknown_rank = self.shape(fa, fb)
                    values.append(None if unknown_rank else dims)
                else:
                    values.append(self.tensor(fa, fb))
            elif kind == "f":
                if wire not in (LENGTH, FIXED32):
                    self.expect(number, wire, FIXED32, fa, "AttrValue.ListValue")
                if (fb - fa) % 4:
                    raise self.fail(f"packed floats of {fb - fa} bytes (a multiple of 4 expected)", fa)
                values.extend(np.frombuffer(self.view[fa:fb], "<f4").tolist())
            else:
                if wire not in (LENGTH, VARINT):
                    self.expect(number, wire, VARINT, fa, "AttrValue.ListValue")
                raw = self.varint_field(wire, fa, fb)
                if kind == "b":
                    values.extend((raw != 0).tolist())
                elif kind == "i":
                    values.extend(raw.view(np.int64).tolist())
                else:
                    values.extend((raw & np.uint64(MASK32)).astype(np.uint32).view(np.int32).tolist())
        present = [kind for kind, values in items.items() if values]
        if len(present) > 1:
            raise self.fail(f"an attribute list holding both {present[0]} and {present[1]} values", a)
        return items[present[0]] if present else []

    def shape(self, a: int, b: int) -> tuple[tuple[int, ...], bool]:
        """A TensorShapeProto's sizes and whether its rank is unknown."""
        dims, unknown_rank = [], False
        for number, wire, fa, fb in self.fields(a, b):
            if number == 2:
                self.expect(number, wire, LENGTH, fa, "TensorShapeProto")
                size = 0
                for inner, inner_wire, value, _ in self.fields(fa, fb):
                    if inner == 1:
                        self.expect(inner, inner_wire, VARINT, fa, "TensorShapeProto.Dim")
                        size = _signed(value, 64)
                dims.append(size)
            elif number == 3:
                self.expect(number, wire, VARINT, fa, "TensorShapeProto")
                unknown_rank = fa != 0
        return tuple(dims), unknown_rank

    def tensor(self, a: int, b: int) -> _Tensor:
        tensor = _Tensor()
        for number, wire, fa, fb in self.fields(a, b):
            if number == 1:
                self.expect(number, wire, VARINT, fa, "TensorProto")
                tensor.dtype = _signed(fa & MASK32, 32)
            elif number == 2:
                self.expect(number, wire, LENGTH, fa, "TensorProto")
                tensor.shape = self.shape(fa, fb)[0]  # make_ndarray reads the sizes only
            elif number == 4:
                self.expect(number, wire, LENGTH, fa, "TensorProto")
                tensor.content = self.view[fa:fb]
            elif number == 8:
                self.expect(number, wire, LENGTH, fa, "TensorProto")
                tensor.values.setdefault(number, []).append(bytes(self.view[fa:fb]))
            elif number in FIXED_WIDTH_FIELDS:
                width = FIXED32 if number == 5 else FIXED64
                if wire not in (LENGTH, width):
                    self.expect(number, wire, width, fa, "TensorProto")
                tensor.values.setdefault(number, []).append(self.view[fa:fb])
            elif number in VARINT_FIELDS:
                if wire not in (LENGTH, VARINT):
                    self.expect(number, wire, VARINT, fa, "TensorProto")
                chunks = tensor.values.setdefault(number, [])
                if wire == LENGTH:
                    chunks.append(self.packed_varints(fa, fb))
                elif chunks and isinstance(chunks[-1], array.array):
                    chunks[-1].append(fa)
                else:  # unpacked values gather in a compact uint64 array
                    chunks.append(array.array("Q", [fa]))
        return tensor

    # ----------------------------------------------------------------------------------- tensors to numpy

    def ndarray(self, tensor: _Tensor, where: str) -> np.ndarray:
        """The tensor as ``tf.make_ndarray`` gives it."""
        def fail(what: str) -> EvaluatorError:
            return EvaluatorError(f"{self.label}: {where}: {what}")

        if tensor.dtype not in DTYPES:
            name = UNSUPPORTED_DTYPES.get(tensor.dtype, "unknown")
            supported = ", ".join(name for name, _, _ in DTYPES.values())
            raise fail(f"tensor dtype {tensor.dtype} ({name}) is not supported (expected one of {supported})")
        name, dtype, value_field = DTYPES[tensor.dtype]
        shape = tensor.shape
        if len(shape) > MAX_RANK or any(d < 0 for d in shape):
            raise fail(f"tensor shape {list(shape)} (expected at most {MAX_RANK} sizes >= 0)")
        count = int(np.prod(shape, dtype=object)) if shape else 1
        itemsize = np.dtype(dtype).itemsize
        if tensor.content is not None and len(tensor.content):
            if dtype is np.object_:
                raise fail("a string tensor with tensor_content (expected string_val)")
            if len(tensor.content) != count * itemsize:
                raise fail(f"tensor_content of {len(tensor.content)} bytes for shape {list(shape)} of {name} "
                           f"(expected {count * itemsize})")
            return np.frombuffer(tensor.content, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
        raw = tensor.values.get(value_field, [])
        if dtype is np.object_:
            stored = len(raw)
        elif value_field in VARINT_FIELDS:
            stored = sum(len(chunk) for chunk in raw)
        else:
            stored = sum(len(chunk) for chunk in raw) // (4 if value_field == 5 else 8)
        if stored > count:
            raise fail(f"{stored} values for shape {list(shape)} (expected at most {count})")
        if stored < count:
            self.expanded += count * itemsize
            if self.expanded > MAX_EXPANDED_BYTES:
                raise fail(f"tensor of shape {list(shape)} holds {stored} values; filling it exceeds the "
                           f"{MAX_EXPANDED_BYTES >> 20} MiB allowed for such tensors")
        if dtype is np.object_:
            values = raw + [raw[-1] if raw else ""] * (count - stored)
            return np.array(values, dtype=object).reshape(shape)
        values = self.typed_values(raw, value_field, dtype, fail)
        if values.size == 0:
            return np.zeros(shape, dtype)
        if values.size != count:
            values = np.pad(values, (0, count - values.size), "edge")
        return values.reshape(shape)

    @staticmethod
    def typed_values(raw: list, value_field: int, dtype: type,
                     fail: Callable[[str], EvaluatorError]) -> np.ndarray:
        """The stored values of a tensor's typed field as a numpy array of ``dtype``."""
        if value_field in FIXED_WIDTH_FIELDS:
            width = 4 if value_field == 5 else 8
            chunks = b"".join(bytes(chunk) for chunk in raw)
            if any(len(chunk) % width for chunk in raw):
                raise fail(f"packed values not a multiple of {width} bytes")
            return np.frombuffer(chunks, FIXED_WIDTH_FIELDS[value_field]).astype(dtype)
        kind = VARINT_FIELDS[value_field]
        raw_values = np.concatenate([np.frombuffer(chunk, np.uint64) if isinstance(chunk, array.array) else chunk
                                     for chunk in raw]) if raw else np.zeros(0, np.uint64)
        if kind == "bool":
            return raw_values != 0
        if kind in ("int32", "uint32"):
            ints = (raw_values & np.uint64(MASK32)).astype(np.uint32)
            ints = ints.view(np.int32) if kind == "int32" else ints
        else:
            ints = raw_values.view(np.int64) if kind == "int64" else raw_values
        target = np.uint16 if value_field == 13 else dtype  # half_val: float16 bits
        info = np.iinfo(target)
        if ints.size and (int(ints.min()) < info.min or int(ints.max()) > info.max):
            raise fail(f"a value outside the range of {np.dtype(target).name}")
        values = ints.astype(target)
        return values.view(np.float16) if value_field == 13 else values


def read_graph_def(data: bytes, label: str) -> GraphDef:
    """Parse the serialized ``GraphDef`` ``data``; ``label`` (a file or flag) names it in errors."""
    return _Reader(bytes(data), label).graph_def()


def read_tensor(data: bytes, label: str) -> np.ndarray:
    """Decode one serialized ``TensorProto`` as ``tf.make_ndarray`` would; ``label`` names it in errors."""
    reader = _Reader(bytes(data), label)
    return reader.ndarray(reader.tensor(0, len(reader.data)), "tensor")
