"""The PyTorch backend of the Inception evaluator: the graph converted op by op gives TensorFlow's features and metrics.

The graph is evaluations/inception_standin.py's: the real graph's op types, node names and Inception-v3
architecture with random weights, channels divided by 8 (the last block keeps its 2048 outputs) to stay fast.
Tolerances: features within 1e-4 of their largest magnitude, FID/sFID within 1e-3 relative, Inception Score
within 1e-3 of its distance from 1 (random weights give scores near 1), precision/recall identical under the
original's float16 distance rule.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inception_standin as old_standin  # noqa: E402
from evaluations import evaluator, graph_torch, inception_file, inception_standin, inception_torch  # noqa: E402
from evaluations import graph_def as graph_def_module  # noqa: E402
from evaluations.distances import Float16FirstDistances  # noqa: E402
from evaluations.errors import EvaluatorError  # noqa: E402
from evaluations.inception import InceptionNetwork  # noqa: E402
from evaluations.metrics import feature_statistics, frechet_distance, inception_score, precision_recall  # noqa: E402

IMAGES = 48
BATCH = 16


pytestmark = pytest.mark.usefixtures("cache_dir")  # a fresh default cache dir per test (conftest)


@pytest.fixture(scope="module")
def standin_pb(tmp_path_factory):
    return inception_standin.write_graph(tmp_path_factory.mktemp("torch_backend") / "standin.pb", 3, 8)


@pytest.fixture(scope="module")
def graph(standin_pb):
    """The stand-in graph as the torch backend reads it (without TensorFlow)."""
    return inception_file.load_graph(str(standin_pb), backend="torch")


@pytest.fixture(scope="module")
def networks(standin_pb, graph):
    """(TensorFlow, PyTorch) networks of the same stand-in graph (the torch one converted without a cache)."""
    tf_graph = inception_file.load_graph(str(standin_pb))
    return InceptionNetwork(tf_graph.graph_def, tf_graph.source), inception_torch.TorchInceptionNetwork(graph, None)


@pytest.fixture(scope="module")
def images():
    """Reference and sample images of odd sizes (the graph resizes them to 299x299)."""
    return (old_standin.smooth_images(IMAGES, size=45, seed=1),
            old_standin.smooth_images(IMAGES, size=45, seed=2, shift=0.3))


def batches(array):
    return (array[i : i + BATCH] for i in range(0, len(array), BATCH))


@pytest.fixture(scope="module")
def features(networks, images):
    """{backend: (reference features, sample features)}."""
    return {name: tuple(network.features(batches(x), len(x), softmax=True, desc=name) for x in images)
            for name, network in zip(("tf", "torch"), networks)}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_features_match_tensorflow(features):
    for ref_or_sample in (0, 1):
        tf_f, torch_f = features["tf"][ref_or_sample], features["torch"][ref_or_sample]
        assert torch_f.pool.shape == (IMAGES, 2048) and torch_f.spatial.shape == (IMAGES, 17 * 17 * 7)
        assert torch_f.softmax.shape == (IMAGES, 1008)
        for name in ("pool", "spatial", "softmax"):
            a, b = getattr(torch_f, name), getattr(tf_f, name)
            assert a.dtype == np.float32 and np.abs(b).max() > 0.1  # non-trivial features
            assert relative_error(a, b) < 1e-4, name


@pytest.mark.slow  # 45 s on 2 cores: the metrics of both backends (the features are compared in the quick loop)
def test_metrics_match_tensorflow(features):
    (tf_ref, tf_sample), (torch_ref, torch_sample) = features["tf"], features["torch"]
    for attr in ("pool", "spatial"):  # FID, sFID
        tf_fd = frechet_distance(*feature_statistics(getattr(tf_sample, attr)),
                                 *feature_statistics(getattr(tf_ref, attr)))
        torch_fd = frechet_distance(*feature_statistics(getattr(torch_sample, attr)),
                                    *feature_statistics(getattr(torch_ref, attr)))
        assert tf_fd > 1.0 and abs(torch_fd - tf_fd) / tf_fd < 1e-3, attr
    tf_is, torch_is = inception_score(tf_sample.softmax), inception_score(torch_sample.softmax)
    assert tf_is > 1.005 and abs(torch_is - tf_is) < 1e-3 * (tf_is - 1)  # random features: a score near 1
    kernels = Float16FirstDistances()
    tf_pr = precision_recall(tf_ref.pool, tf_sample.pool, kernels)
    assert precision_recall(torch_ref.pool, torch_sample.pool, kernels) == tf_pr
    assert 0.0 < min(tf_pr) and max(tf_pr) < 1.0


def test_old_stand_in_graph_converts_too(tmp_path):
    """The tests' first stand-in (Placeholder input, AddV2, VALID pools) goes through the same converter."""
    path = str(old_standin.write_graph(tmp_path / "old.pb"))
    graph = inception_file.load_graph(path)
    x = old_standin.smooth_images(6, size=32, seed=4)
    tf_out = InceptionNetwork(graph.graph_def, graph.source).run(x, softmax=True)
    torch_out = inception_torch.TorchInceptionNetwork(inception_file.load_graph(path, backend="torch"),
                                                      None).run(x, softmax=True)
    for a, b in zip(torch_out, tf_out):
        assert a.shape == b.shape and relative_error(a, b) < 1e-4


@pytest.mark.parametrize("align_corners,half_pixel", [(False, False), (True, False), (False, True)])
def test_resize_bilinear_is_tensorflow_1s(align_corners, half_pixel):
    import tensorflow as tf
    import torch

    rng = np.random.default_rng(0)
    for (h, w), size in (((7, 5), (13, 4)), ((17, 19), (5, 11)), ((3, 3), (299, 299)), ((45, 45), (299, 299))):
        x = rng.uniform(0, 255, (2, h, w, 3)).astype(np.float32)
        expected = tf.compat.v1.image.resize_bilinear(x, size, align_corners=align_corners,
                                                      half_pixel_centers=half_pixel).numpy()
        got = graph_torch.resize_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), size, align_corners, half_pixel)
        got = got.permute(0, 2, 3, 1).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
    if not (align_corners or half_pixel):  # torch's own bilinear (half-pixel centres) is another resize
        ours = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size, mode="bilinear")
        assert np.abs(ours.permute(0, 2, 3, 1).numpy() - expected).max() > 1.0


def test_same_padding_of_convolutions_and_pools():
    """Asymmetric TF SAME padding (stride 2 on even and odd sizes), AvgPool excluding padded cells, MaxPool."""
    import tensorflow as tf
    import torch

    v1 = tf.compat.v1
    rng = np.random.default_rng(1)
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        x = v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
        w = tf.constant(rng.standard_normal((4, 3, 3, 5)).astype(np.float32), name="w")
        conv = tf.nn.conv2d(x, w, [1, 2, 2, 1], "SAME", name="conv")
        tf.nn.avg_pool2d(conv, [1, 2, 3, 1], [1, 2, 2, 1], "SAME", name="avg")
        tf.nn.max_pool2d(conv - 5.0, [1, 3, 2, 1], [1, 2, 1, 1], "SAME", name="max")
        tf.nn.avg_pool2d(conv, [1, 3, 3, 1], [1, 1, 1, 1], "SAME", name="avg3")
    graph_def = graph_def_module.read_graph_def(tf_graph.as_graph_def().SerializeToString(), "test graph")
    outputs = ["avg", "max", "avg3"]
    plan = graph_torch.plan_graph(graph_def, outputs, "ExpandDims", "test graph")
    module = graph_torch.GraphModule(plan, graph_torch.convert_constants(graph_def, plan))
    with v1.Session(graph=tf_graph) as session:
        for h, w_ in ((8, 8), (9, 7), (10, 13)):
            images = rng.uniform(-1, 1, (2, h, w_, 3)).astype(np.float32)
            expected = session.run([f"{name}:0" for name in outputs], {"ExpandDims:0": images})
            got = [t.numpy() for t in module(torch.from_numpy(images))]
            for a, b in zip(got, expected):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_converted_graph_is_cached_by_checksum(capsys, graph, tmp_path):
    cache = tmp_path / "cache"
    first = inception_torch.TorchInceptionNetwork(graph, cache)
    path = inception_torch.converted_path(cache, graph.sha256)
    assert f"converted the Inception graph for PyTorch and cached it in {path}" in capsys.readouterr().out
    import torch

    state = torch.load(path, weights_only=True)
    assert state["mixed_6/conv/conv2d_params"].shape == (24, 96, 1, 1)  # OIHW, node names kept
    assert state["softmax/weights"].shape == (2048, 1008)
    x = old_standin.smooth_images(3, size=20, seed=5)
    second = inception_torch.TorchInceptionNetwork(graph, cache)
    assert f"using the converted Inception graph cached in {path}" in capsys.readouterr().out
    for a, b in zip(first.run(x, True), second.run(x, True)):
        np.testing.assert_array_equal(a, b)
    path.write_bytes(path.read_bytes()[:1000])  # damaged: reported, converted and cached again
    inception_torch.TorchInceptionNetwork(graph, cache)
    out, err = capsys.readouterr()
    assert f"warning: ignoring the unreadable converted Inception graph {path}" in err
    assert "cached it in" in out and torch.load(path, weights_only=True).keys() == state.keys()
    torch.save({"softmax/weights": state["softmax/weights"]}, path)  # another graph's state: not used
    inception_torch.TorchInceptionNetwork(graph, cache)
    assert f"converted Inception graph {path}: it does not fit the graph" in capsys.readouterr().err


NO_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # import tensorflow fails, as where it is not installed
sys.path.insert(0, sys.argv[1])
from evaluations import evaluator
code = evaluator.main(sys.argv[2:])
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras") and sys.modules[m] is not None]
sys.exit(code)
"""


@pytest.mark.slow  # 45 s on 2 cores: both backends through the command line
def test_cli_torch_backend_gives_the_tf_numbers_without_tensorflow(capsys, tmp_path, standin_pb, images, cache_dir):
    """The tf backend in this process; the torch backend in one where TensorFlow cannot be imported (graph reading,
    conversion, features and the float16 precision/recall distances all in PyTorch)."""
    ref, sample = tmp_path / "ref.npz", tmp_path / "sample.npz"
    np.savez(ref, images[0])
    np.savez(sample, images[1])
    argv = [str(ref), str(sample), "--inception_path", str(standin_pb), "--batch_size", "16", "--backend"]
    code = evaluator.main([*argv, "tf"])
    outputs = {"tf": capsys.readouterr()[0]}
    assert code == 0
    child = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(ROOT), *argv, "torch"], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "GUIDED_DIFFUSION_CACHE": str(cache_dir)})
    assert child.returncode == 0, child.stderr[-3000:]
    outputs["torch"] = child.stdout
    printed = {backend: {line.split(": ")[0]: float(line.split(": ")[1]) for line in out.splitlines()
                         if line.split(": ")[0] in dict(evaluator.RESULTS).values()}
               for backend, out in outputs.items()}
    assert list(printed["torch"]) == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    for name, value in printed["tf"].items():
        assert abs(printed["torch"][name] - value) <= 1e-3 * abs(value), name
    assert printed["torch"]["Precision"] == printed["tf"]["Precision"]
    assert printed["torch"]["Recall"] == printed["tf"]["Recall"]
    assert inception_torch.converted_path(cache_dir, inception_file.load_graph(str(standin_pb)).sha256).exists()
    entries = [p for p in (cache_dir / "reference_activations").glob("*.npz") if ".radii_" not in p.name]
    assert len(entries) == 2  # one reference activation entry per backend


def test_foreign_op_is_refused_before_conversion(capsys, tmp_path, standin_pb, monkeypatch):
    import tensorflow as tf

    graph_def = inception_standin.build_graph_def(0, 8)
    extra = tf.Graph()
    with extra.as_default():
        tf.io.write_file(tf.constant(str(tmp_path / "x")), tf.constant("x"), name="evil/write")
    graph_def.node.extend(extra.as_graph_def().node)
    bad = tmp_path / "bad.pb"
    bad.write_bytes(graph_def.SerializeToString())
    monkeypatch.setattr(inception_torch, "plan_graph", lambda *a: pytest.fail("converted a refused graph"))
    np.savez(tmp_path / "a.npz", old_standin.smooth_images(8, size=16))
    code = evaluator.main([str(tmp_path / "a.npz")] * 2 + ["--inception_path", str(bad), "--backend", "torch"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"evaluator.py: error: --inception_path {bad}: the graph contains op WriteFile (node evil/write), which the "
        "Inception graph does not use; refusing to run it")


def test_allowed_op_the_converter_lacks_is_named():
    """An op the allow-list accepts but the feature path cannot hold (a Cast inside the network) is refused."""
    graph_def = inception_standin.build_graph_def(0, 8)
    relu = next(node for node in graph_def.node if node.name == "mixed_6/conv")
    cast = graph_def.node.add(name="mixed_6/cast", op="Cast", input=list(relu.input))
    relu.input[:] = [cast.name]
    graph_def = graph_def_module.read_graph_def(graph_def.SerializeToString(), "g.pb")
    with pytest.raises(EvaluatorError, match=r"^g\.pb: the torch backend cannot convert op Cast \(node mixed_6/cast\); "
                                             r"use --backend tf$"):
        graph_torch.plan_graph(graph_def, ["pool_3", "mixed_6/conv"], "ExpandDims", "g.pb")


def test_stand_in_builder_cli(capsys, tmp_path):
    out = tmp_path / "s.pb"
    assert inception_standin.main(["--seed", "5", "--width_divisor", "8", str(out)]) == 0
    graph = inception_file.load_graph(str(out))
    assert {node.op for node in graph.graph_def.node} == set(inception_file.INCEPTION_OP_TYPES)
    names = {node.name for node in graph.graph_def.node}
    assert {"ExpandDims", "ResizeBilinear", "mixed_6/conv", "mixed_10/join", "pool_3", "pool_3/_reshape",
            "softmax/logits/MatMul", "softmax/logits", "softmax"} <= names
    assert out.read_bytes() == inception_standin.build_graph_def(5, 8).SerializeToString()  # seeded
    with pytest.raises(SystemExit) as exit_info:
        inception_standin.main(["--width_divisor", "0", str(out)])
    assert exit_info.value.code == 2
    assert "--width_divisor must be a positive integer, got 0" in capsys.readouterr().err
    assert inception_standin.main(["--width_divisor", "8", str(tmp_path / "missing" / "s.pb")]) == 2
    assert capsys.readouterr().err.startswith(f"inception_standin.py: error: {tmp_path / 'missing' / 's.pb'}: ")


def test_full_width_stand_in_has_the_real_architecture(tmp_path):
    """At full width the stand-in has the 2015 graph's convolution blocks and about its 23.8 M weights."""
    graph_def = inception_standin.build_graph_def(0, 1)
    convs = [node for node in graph_def.node if node.op == "Conv2D"]
    weights = sum(int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim]))
                  for node in graph_def.node if node.op == "Const" and node.attr["dtype"].type == 1)
    assert len(convs) == 94 and 23_500_000 < weights < 24_000_000
    mixed_6 = next(node for node in graph_def.node if node.name == "mixed_6/conv/conv2d_params")
    assert [d.size for d in mixed_6.attr["value"].tensor.tensor_shape.dim] == [1, 1, 768, 192]


def test_default_backend_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import evaluations.evaluator as e; "
            "a = e.parse_args(['r.npz', 's.npz']); print(a.backend, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["tf", "False"], result.stderr
