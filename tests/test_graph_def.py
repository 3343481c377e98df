"""The plain-Python GraphDef reader (evaluations/graph_def.py): TensorFlow's parse without TensorFlow.

Parity: every node of the stand-in Inception graph (evaluations/inception_standin.py, the graph
tests/test_inception_torch.py uses) and hand-built TensorProtos decode as TensorFlow's protobuf classes and
``tf.make_ndarray`` decode them, bit for bit.  The torch backend then runs in a process where TensorFlow cannot be
imported, and damaged files are one-line errors naming the file.
"""

import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inception_standin as old_standin  # noqa: E402
from evaluations import evaluator, graph_def, inception_file, inception_standin, inception_torch  # noqa: E402
from evaluations.errors import EvaluatorError  # noqa: E402

pytestmark = pytest.mark.usefixtures("cache_dir")  # a fresh default cache dir per test (conftest)


@pytest.fixture(scope="module")
def standin_pb(tmp_path_factory):
    return inception_standin.write_graph(tmp_path_factory.mktemp("graph_def") / "standin.pb", 3, 8)


def tf_attr(value):
    """A TensorFlow AttrValue in the reader's representation (its documented python values)."""
    import tensorflow as tf

    def shape(proto):
        return None if proto.unknown_rank else tuple(d.size for d in proto.dim)

    kind = value.WhichOneof("value")
    if kind == "list":
        for name in ("s", "i", "f", "b", "type", "shape", "tensor"):
            items = list(getattr(value.list, name))
            if items:
                return [shape(x) if name == "shape" else tf.make_ndarray(x) if name == "tensor" else x for x in items]
        return []
    if kind == "tensor":
        return tf.make_ndarray(value.tensor)
    if kind == "shape":
        return shape(value.shape)
    return getattr(value, kind) if kind in ("s", "i", "f", "b", "type") else None


def assert_same_array(ours, theirs):
    assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if theirs.dtype == object:
        assert ours.tolist() == theirs.tolist() and [type(x) for x in ours.flat] == [type(x) for x in theirs.flat]
    else:
        assert ours.tobytes() == theirs.tobytes()


def assert_same_attr(ours, theirs):
    if isinstance(theirs, np.ndarray):
        assert_same_array(ours, theirs)
    elif isinstance(theirs, list) and theirs and isinstance(theirs[0], np.ndarray):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same_array(a, b)
    else:
        assert type(ours) is type(theirs) and ours == theirs


def assert_same_graph(ours, theirs):
    assert ours.producer == theirs.versions.producer
    assert ours.functions == [f.signature.name for f in theirs.library.function]
    assert len(ours.node) == len(theirs.node)
    for mine, node in zip(ours.node, theirs.node):
        assert (mine.name, mine.op, mine.input) == (node.name, node.op, list(node.input))
        assert set(mine.attr) == set(node.attr), node.name
        for key, value in node.attr.items():
            assert_same_attr(mine.attr[key], tf_attr(value))


# ------------------------------------------------------------------------------------------- (a) parity


def test_stand_in_graph_reads_as_tensorflow_parses_it(standin_pb):
    import tensorflow as tf

    data = standin_pb.read_bytes()
    theirs = tf.compat.v1.GraphDef.FromString(data)
    ours = graph_def.read_graph_def(data, str(standin_pb))
    assert len(ours.node) > 1000 and ours.producer == inception_standin.PRODUCER_VERSION
    assert_same_graph(ours, theirs)
    consts = [node for node in ours.node if node.op == "Const"]
    assert {node.attr["value"].dtype for node in consts} == {np.dtype(np.float32), np.dtype(np.int32), np.dtype(object)}
    assert sum(node.attr["value"].size for node in consts) > 1_000_000


def test_every_attribute_kind_reads_as_tensorflow_parses_it():
    """Attribute kinds the stand-in lacks (shapes, lists of every kind, unset values) and a graph function."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.versions.producer = 1234
    graph.library.function.add().signature.name = "hidden"
    node = graph.node.add(name="n\u00e9", op="Anything", input=["a", "b:1", "^c"], device="/cpu:0")
    attr = node.attr
    attr["s"].s = b"\xff\x00raw"
    attr["i"].i = -(2 ** 40)
    attr["f"].f = 0.1
    attr["b"].b = True
    attr["type"].type = 19
    attr["shape"].shape.dim.add().size = -1
    attr["shape"].shape.dim.add().size = 3
    attr["scalar_shape"].shape.SetInParent()
    attr["unknown_rank"].shape.unknown_rank = True
    attr["tensor"].tensor.CopyFrom(tf.make_tensor_proto(np.arange(6, dtype=np.int16).reshape(2, 3)))
    attr["ls"].list.s.extend([b"a", b""])
    attr["li"].list.i.extend([1, -1, 2 ** 62])
    attr["lf"].list.f.extend([0.5, -1e30, float("inf")])
    attr["lb"].list.b.extend([True, False])
    attr["lt"].list.type.extend([1, 9, 7])
    attr["lshape"].list.shape.add().dim.add().size = 5
    attr["lshape"].list.shape.add().unknown_rank = True
    attr["ltensor"].list.tensor.add().CopyFrom(tf.make_tensor_proto([1, 2], tf.int32))
    attr["ltensor"].list.tensor.add().CopyFrom(tf.make_tensor_proto("x"))
    attr["empty_list"].list.SetInParent()
    attr["unset"].SetInParent()
    attr["placeholder"].placeholder = "T"
    ours = graph_def.read_graph_def(graph.SerializeToString(), "g.pb")
    assert_same_graph(ours, graph)
    assert ours.functions == ["hidden"] and ours.node[0].attr["shape"] == (-1, 3)
    assert ours.node[0].attr["scalar_shape"] == () and ours.node[0].attr["unknown_rank"] is None


def make_proto(*args, **kwargs):
    import tensorflow as tf

    return tf.make_tensor_proto(*args, **kwargs).SerializeToString()


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def tensor_header(dtype: int, *dims: int) -> bytes:
    shape = b"".join(length_delimited(2, key(1, 0) + varint(d)) for d in dims)
    return key(1, 0) + varint(dtype) + length_delimited(2, shape)


def unpacked(number: int, wire: int, values, encode) -> bytes:
    return b"".join(key(number, wire) + encode(v) for v in values)


TENSORS = {  # name -> a function giving serialized TensorProto bytes
    "float broadcast": lambda: make_proto(1.5, dtype="float32", shape=[2, 3]),
    "float scalar": lambda: make_proto(np.float32(-0.0)),
    "half_val broadcast": lambda: make_proto(np.float16(1.5), shape=[3]),
    "half content": lambda: make_proto(np.array([1.5, -2, 65504], np.float16)),
    "int64 broadcast": lambda: make_proto(-7, dtype="int64", shape=[2]),
    "int64 content": lambda: make_proto([1, -2, 2 ** 40], dtype="int64"),
    "int8 negative": lambda: make_proto(-3, dtype="int8", shape=[2]),
    "uint8": lambda: make_proto(200, dtype="uint8", shape=[2, 1]),
    "int16": lambda: make_proto(-300, dtype="int16", shape=[2]),
    "uint16": lambda: make_proto(60000, dtype="uint16", shape=[2]),
    "int32 negative": lambda: make_proto(-3, dtype="int32", shape=[2]),
    "double": lambda: make_proto(2.5, dtype="float64", shape=[2]),
    "bool broadcast": lambda: make_proto(True, shape=[2, 2]),
    "bools": lambda: make_proto([True, False, True]),
    "string broadcast": lambda: make_proto(b"ab", shape=[3]),
    "strings": lambda: make_proto(["a", "bc", ""]),
    "float last value repeated": lambda: tensor_header(1, 5) + length_delimited(5, struct.pack("<2f", 1, 2)),
    "float no values: zeros": lambda: tensor_header(1, 2, 2),
    "string no values": lambda: tensor_header(7, 2),
    "empty shape": lambda: tensor_header(3, 0, 4),
    "unpacked floats": lambda: tensor_header(1, 4) + unpacked(5, 5, [1.0, -2.5, 3.25], lambda v: struct.pack("<f", v)),
    "packed then unpacked floats": lambda: tensor_header(1, 3) + length_delimited(5, struct.pack("<2f", 1, 2))
    + key(5, 5) + struct.pack("<f", 9),
    "unpacked doubles": lambda: tensor_header(2, 2) + unpacked(6, 1, [0.1, 1e300], lambda v: struct.pack("<d", v)),
    "unpacked int64": lambda: tensor_header(9, 3) + unpacked(10, 0, [-1, 2 ** 62, 5], varint),
    "unpacked int32": lambda: tensor_header(3, 2) + unpacked(7, 0, [-(2 ** 31), 2 ** 31 - 1], varint),
    "unpacked half_val": lambda: tensor_header(19, 3) + unpacked(13, 0, [0x3C00, 0xFC00], varint),
    "packed and unpacked int64": lambda: tensor_header(9, 5) + length_delimited(10, varint(-1) + varint(3))
    + key(10, 0) + varint(7) + key(10, 0) + varint(8) + length_delimited(10, varint(2 ** 63)),
    "unpacked bools": lambda: tensor_header(10, 3) + unpacked(11, 0, [1, 0, 1], varint),
    "unpacked uint64": lambda: tensor_header(23, 2) + unpacked(17, 0, [2 ** 64 - 1, 3], varint),
    "unknown fields skipped": lambda: key(99, 0) + varint(5) + tensor_header(1, 1) + length_delimited(98, b"xyz")
    + key(97, 5) + b"abcd" + key(96, 1) + b"abcdefgh" + key(95, 3) + key(3, 0) + b"\x01" + key(94, 3) + key(94, 4)
    + key(95, 4) + key(5, 5) + struct.pack("<f", 4),
}


@pytest.mark.parametrize("name", list(TENSORS))
def test_tensor_decodes_as_make_ndarray(name):
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    data = TENSORS[name]()
    expected = tf.make_ndarray(tensor_pb2.TensorProto.FromString(data))
    assert_same_array(graph_def.read_tensor(data, "t"), expected)


# ------------------------------------------------------------------------ (b) the torch path without TF

CHILD = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None  # `import tensorflow` (and any submodule) now raises ImportError
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    import numpy as np
    from evaluations import inception_file, inception_torch

    graph = inception_file.load_graph(sys.argv[2], backend="torch")
    cache = Path(sys.argv[4])
    inception_torch.TorchInceptionNetwork(graph, cache)  # converts and caches
    network = inception_torch.TorchInceptionNetwork(graph, cache)  # reads the cache
    pool, spatial, softmax = network.run(np.load(sys.argv[3]), softmax=True)
    weight = network.module.constants()[inception_torch.softmax_weight_name(graph.graph_def, graph.source)]
    np.savez(sys.argv[5], pool=pool, spatial=spatial, softmax=softmax, logits=pool @ weight.numpy())
    try:
        import tensorflow  # noqa: F401
        print("tensorflow imported")
    except ImportError:
        pass
    print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")
                            and sys.modules[m] is not None))
""")


def test_torch_backend_runs_where_tensorflow_cannot_be_imported(tmp_path, standin_pb):
    images = old_standin.smooth_images(3, size=20, seed=7)
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(standin_pb), str(tmp_path / "images.npy"),
                             str(tmp_path / "cache"), str(tmp_path / "child.npz")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the converted Inception graph cached in" in result.stdout
    assert result.stdout.splitlines()[-1] == "loaded: []"
    graph = inception_file.load_graph(str(standin_pb), backend="torch")
    network = inception_torch.TorchInceptionNetwork(graph, None)
    pool, spatial, softmax = network.run(images, softmax=True)
    weight = network.module.constants()[inception_torch.softmax_weight_name(graph.graph_def, graph.source)]
    parent = {"pool": pool, "spatial": spatial, "softmax": softmax, "logits": pool @ weight.numpy()}
    with np.load(tmp_path / "child.npz") as child:
        assert set(child.files) == set(parent)
        for name, value in parent.items():
            assert child[name].shape == value.shape and child[name].dtype == np.float32
            assert np.abs(value).max() > 0.01, name  # non-trivial features
            np.testing.assert_allclose(child[name], value, rtol=0, atol=1e-6 * np.abs(value).max(), err_msg=name)


# ----------------------------------------------------------------------------------- (c) damaged input


def read_error(data: bytes, label: str = "x.pb") -> str:
    with pytest.raises(EvaluatorError) as info:
        graph_def.read_graph_def(data, label)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{label}: ")
    return message


def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, standin_pb):
    data = standin_pb.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "past_the_end": key(1, 2) + varint(1 << 20) + b"\x00" * 10,
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.pb"
        path.write_bytes(content)
        with pytest.raises(EvaluatorError) as info:
            inception_file.load_graph(str(path), backend="torch")
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"--inception_path {path}: corrupt or truncated GraphDef: ")
    assert re.fullmatch(r"f\.pb: corrupt or truncated GraphDef: field 1 of \d+ bytes runs past the end of its "
                        r"message \(\d+ bytes left\) at byte \d+", read_error(data[: len(data) // 2], "f.pb"))
    assert read_error(key(1, 2) + varint(1 << 20) + b"\x00" * 10) == (
        "x.pb: corrupt or truncated GraphDef: field 1 of 1048576 bytes runs past the end of its message "
        "(10 bytes left) at byte 0")


def test_cli_reports_a_truncated_graph_with_the_torch_backend(capsys, tmp_path, standin_pb):
    bad = tmp_path / "cut.pb"
    bad.write_bytes(standin_pb.read_bytes()[:100_000])
    np.savez(tmp_path / "a.npz", old_standin.smooth_images(8, size=16))
    code = evaluator.main([str(tmp_path / "a.npz")] * 2 + ["--inception_path", str(bad), "--backend", "torch"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"evaluator.py: error: --inception_path {bad}: corrupt or truncated GraphDef: ")


def const_node(tensor: bytes, name: bytes = b"c") -> bytes:
    attr = length_delimited(1, b"value") + length_delimited(2, length_delimited(8, tensor))
    return length_delimited(1, length_delimited(1, name) + length_delimited(2, b"Const") + length_delimited(5, attr))


@pytest.mark.parametrize("data,expected", [
    (key(1, 0) + b"\xff" * 10 + b"\x01", "corrupt or truncated GraphDef: a varint longer than 10 bytes at byte 1"),
    (key(1, 0) + b"\xff\xff", "corrupt or truncated GraphDef: a varint runs past the end of its message at byte 1"),
    (key(1, 2) + varint(2 ** 63), "corrupt or truncated GraphDef: field 1 of 9223372036854775808 bytes runs past "
                                  "the end of its message (0 bytes left) at byte 0"),
    (key(1, 5) + b"\x00" * 4, "corrupt or truncated GraphDef: field 1 of a GraphDef has wire type 5, expected 2 "
                              "at byte 1"),
    (key(1, 7), "corrupt or truncated GraphDef: wire type 7 of field 1 at byte 0"),
    (key(3, 3) + key(4, 0) + b"\x01", "corrupt or truncated GraphDef: group 3 is not closed at byte 0"),
    (key(1, 3) + key(1, 4), "corrupt or truncated GraphDef: field 1 of a GraphDef has wire type 3, expected 2 "
                            "at byte 1"),
    (length_delimited(1, length_delimited(1, b"\xff")), "corrupt or truncated GraphDef: a string that is not "
                                                        "UTF-8 at byte 4"),
    (const_node(tensor_header(9, 2) + length_delimited(10, b"\x01\x80")),
     "corrupt or truncated GraphDef: a packed varint runs past the end of its field at byte 36"),
    (const_node(tensor_header(9, 2) + length_delimited(10, b"\x01" + b"\xff" * 10 + b"\x01")),
     "corrupt or truncated GraphDef: a varint longer than 10 bytes at byte 36"),
    (const_node(tensor_header(1, 2 ** 40) + key(5, 5) + b"\x00" * 4),
     "node 'c' attr 'value': tensor of shape [1099511627776] holds 1 values; filling it exceeds the 256 MiB "
     "allowed for such tensors"),
    (const_node(tensor_header(1, 2 ** 62, 2 ** 62)), "node 'c' attr 'value': tensor of shape "
                                                     "[4611686018427387904, 4611686018427387904] holds 0 values; "
                                                     "filling it exceeds the 256 MiB allowed for such tensors"),
    (const_node(tensor_header(8, 1)), "node 'c' attr 'value': tensor dtype 8 (complex64) is not supported "
                                      "(expected one of float, double, int32, uint8, int16, int8, string, int64, "
                                      "bool, uint16, half, uint32, uint64)"),
    (const_node(tensor_header(1, 3) + length_delimited(4, b"\x00" * 8)),
     "node 'c' attr 'value': tensor_content of 8 bytes for shape [3] of float (expected 12)"),
    (const_node(tensor_header(1, 1) + length_delimited(5, b"\x00" * 8)),
     "node 'c' attr 'value': 2 values for shape [1] (expected at most 1)"),
    (const_node(tensor_header(1, -1)), "node 'c' attr 'value': tensor shape [-1] (expected at most 32 sizes >= 0)"),
    (const_node(tensor_header(4, 1) + key(7, 0) + varint(300)),
     "node 'c' attr 'value': a value outside the range of uint8"),
    (const_node(tensor_header(7, 1) + length_delimited(4, b"ab")),
     "node 'c' attr 'value': a string tensor with tensor_content (expected string_val)"),
], ids=["long varint", "cut varint", "huge length", "wrong wire type", "bad wire type", "open group",
        "known field as group", "not utf-8", "cut packed varint", "long packed varint", "huge fill",
        "overflowing shape", "complex64", "content size", "too many values", "negative size", "uint8 range",
        "string content"])
def test_hostile_data_is_refused_without_allocating(data, expected):
    assert read_error(data) == f"x.pb: {expected}"


def test_functions_are_refused_by_both_readers(standin_pb):
    import tensorflow as tf

    with_function = tf.compat.v1.GraphDef.FromString(standin_pb.read_bytes())
    with_function.library.function.add().signature.name = "hidden"
    for backend in inception_file.BACKENDS:
        with pytest.raises(EvaluatorError, match=r"^x\.pb: the graph defines function hidden, .* refusing to run it$"):
            inception_file.parse_graph_def(Path("x.pb"), with_function.SerializeToString(), backend=backend)
