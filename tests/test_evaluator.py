"""Tests for evaluations/: same numbers as the definitions, streamed npz I/O, reference building, clear errors.

A stand-in Inception graph (tests/inception_standin.py) with the real tensor names and shapes is
loaded through --inception_path.  The main batches have 1300 images each; the comparison with
``scipy.linalg.sqrtm`` takes 2600 so that the 2048-d covariances are full rank and 1e-6 is meaningful.
"""

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import linalg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import inception_standin  # noqa: E402
from evaluations import activation_cache, evaluator, inception_file, metrics  # noqa: E402
from evaluations.activation_cache import CACHE_SUBDIR  # noqa: E402
from evaluations.distances import Float16FirstDistances, PairwiseDistances  # noqa: E402
from evaluations.errors import EvaluatorError  # noqa: E402
from evaluations.image_folder import FolderImages, center_crop  # noqa: E402
from evaluations.inception import InceptionNetwork  # noqa: E402
from evaluations.npz_io import ACTS_GRAPH_KEY, NpzImages, ReferenceFile, read_reference  # noqa: E402
from evaluations import reference  # noqa: E402
from evaluations.reference import (  # noqa: E402
    ReferenceFeatures,
    cached_reference_radii,
    reference_features,
    stored_activations,
    subset_indices,
)

NUM_IMAGES = 2600  # full-rank 2048-d covariances, for the sqrtm check
MAIN_IMAGES = 1300  # the main batches, for everything else
SCRIPT = ROOT / "evaluations" / "evaluator.py"


# ---------------------------------------------------------------- fixtures (shared by the whole module)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluator")


pytestmark = pytest.mark.usefixtures("cache_dir")  # a fresh default cache dir per test (conftest)


@pytest.fixture(scope="module")
def standin_pb(data_dir):
    return inception_standin.write_graph(data_dir / "standin.pb")


@pytest.fixture(scope="module")
def ref_images():
    return inception_standin.smooth_images(MAIN_IMAGES, seed=1)


@pytest.fixture(scope="module")
def sample_images():
    return inception_standin.smooth_images(MAIN_IMAGES, seed=2, shift=0.3)


@pytest.fixture(scope="module")
def full_rank_npzs(data_dir):
    """Batches of NUM_IMAGES images (stored members): (reference, sample)."""
    ref, sample = data_dir / "ref.npz", data_dir / "sample.npz"
    np.savez(ref, inception_standin.smooth_images(NUM_IMAGES, seed=1))
    np.savez(sample, inception_standin.smooth_images(NUM_IMAGES, seed=2, shift=0.3))
    return ref, sample


@pytest.fixture(scope="module")
def standin_graph(standin_pb):
    return inception_file.load_graph(str(standin_pb))


@pytest.fixture(scope="module")
def network(standin_graph):
    return InceptionNetwork(standin_graph.graph_def, standin_graph.source)


@pytest.fixture(scope="module")
def kernels():
    return PairwiseDistances()


def features_of(network, images: np.ndarray, softmax: bool, desc: str):
    return network.features((images[i : i + 64] for i in range(0, len(images), 64)), len(images), softmax=softmax,
                            desc=desc)


@pytest.fixture(scope="module")
def ref_features(network, ref_images):
    return features_of(network, ref_images, softmax=False, desc="reference")


@pytest.fixture(scope="module")
def sample_features(network, sample_images):
    return features_of(network, sample_images, softmax=True, desc="sample")


@pytest.fixture(scope="module")
def full_rank_features(network, full_rank_npzs):
    """Features of the full-rank batches, streamed from their npz files: (reference, sample)."""
    ref, sample = (NpzImages(str(path)) for path in full_rank_npzs)
    return (network.features(ref.batches(64), ref.count, softmax=False, desc="reference"),
            network.features(sample.batches(64), sample.count, softmax=True, desc="sample"))


@pytest.fixture(scope="module")
def small_npzs(data_dir, ref_images, sample_images):
    """300-image batches for the slower end-to-end paths that do not check sqrtm agreement (stored and deflated
    members)."""
    ref, sample = data_dir / "small_ref.npz", data_dir / "small_sample.npz"
    np.savez(ref, ref_images[:300])
    np.savez_compressed(sample, sample_images[:300])
    return ref, sample


@pytest.fixture(scope="module")
def direct_fids(full_rank_features):
    """FID and sFID of the full-rank batches computed the direct way (sqrtm), once."""
    ref_features, sample_features = full_rank_features
    return {
        "fid": sqrtm_fid(sample_features.pool, ref_features.pool),
        "sfid": sqrtm_fid(sample_features.spatial, ref_features.spatial),
    }


def run_main(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = evaluator.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def printed_metrics(out: str) -> dict:
    """The metric lines of the CLI's stdout, by JSON key, in printed order."""
    values = {}
    for line in out.splitlines():
        for key, label in evaluator.RESULTS:
            if line.startswith(f"{label}: "):
                values[key] = float(line[len(label) + 2 :])
    return values


def sqrtm_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID computed the direct way: np.cov and scipy.linalg.sqrtm of the covariance product."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    diff = a.mean(0) - b.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0)


def brute_force_pr(ref: np.ndarray, sample: np.ndarray, k: int = 3):
    """Precision/recall by the definition, in float64 over full distance matrices."""
    ref_radii = np.sort(squared_distances(ref, ref), axis=1)[:, k]  # column 0 is the point itself
    sample_radii = np.sort(squared_distances(sample, sample), axis=1)[:, k]
    cross = squared_distances(sample, ref)
    precision_gap = (cross - ref_radii[None, :]).min(axis=1)  # <= 0: sample inside some reference ball
    recall_gap = (cross - sample_radii[:, None]).min(axis=0)
    return (precision_gap <= 0).mean(), (recall_gap <= 0).mean(), precision_gap, recall_gap, ref_radii


def original_pr(distances, ref: np.ndarray, sample: np.ndarray, block: int, k: int = 3):
    """The original ManifoldEstimator's loops: radii by ``np.partition`` over whole rows of ``block``-sized
    distance batches, coverage by ``<=`` against the radii, precision and recall as fractions covered."""

    def radii(features):
        out = np.zeros(len(features), np.float32)
        for b1 in range(0, len(features), block):
            rows = np.concatenate([distances(features[b1 : b1 + block], features[b2 : b2 + block])
                                   for b2 in range(0, len(features), block)], axis=1)
            out[b1 : b1 + block] = np.partition(rows, k, axis=1)[:, k]
        return out

    ref_radii, sample_radii = radii(ref), radii(sample)
    ref_in, sample_in = np.zeros(len(ref), bool), np.zeros(len(sample), bool)
    for b1 in range(0, len(ref), block):
        for b2 in range(0, len(sample), block):
            d = distances(ref[b1 : b1 + block], sample[b2 : b2 + block])
            ref_in[b1 : b1 + block] |= (d <= sample_radii[None, b2 : b2 + block]).any(axis=1)
            sample_in[b2 : b2 + block] |= (d <= ref_radii[b1 : b1 + block, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


def numpy_float16_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The original's float16-first distance batch in numpy float16 arithmetic (sums accumulated in float64)."""
    with np.errstate(all="ignore"):
        u16, v16 = u.astype(np.float16), v.astype(np.float16)
        norm_u = np.sum(u16 * u16, axis=1, dtype=np.float64).astype(np.float16)[:, None]
        norm_v = np.sum(v16 * v16, axis=1, dtype=np.float64).astype(np.float16)[None, :]
        products = (u16.astype(np.float64) @ v16.astype(np.float64).T).astype(np.float16)
        d16 = np.maximum(norm_u - 2 * products + norm_v, np.float16(0))
    if np.isfinite(d16).all():
        return d16.astype(np.float32)
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    return np.maximum((u32 * u32).sum(1)[:, None] - 2 * (u32 @ v32.T) + (v32 * v32).sum(1)[None, :], 0)


def tensorflow_float16_distances():
    """The original's DistanceBlock graph (float16 first, float32 when not finite), as a function of two batches."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        u, v = v1.placeholder(tf.float32, [None, None]), v1.placeholder(tf.float32, [None, None])

        def batch_pairwise_distances(a, b):
            norm_a = tf.reshape(tf.reduce_sum(tf.square(a), 1), [-1, 1])
            norm_b = tf.reshape(tf.reduce_sum(tf.square(b), 1), [1, -1])
            return tf.maximum(norm_a - 2 * tf.matmul(a, b, False, True) + norm_b, 0.0)

        block16 = batch_pairwise_distances(tf.cast(u, tf.float16), tf.cast(v, tf.float16))
        block = tf.cond(tf.reduce_all(tf.math.is_finite(block16)), lambda: tf.cast(block16, tf.float32),
                        lambda: batch_pairwise_distances(u, v))
    session = tf.compat.v1.Session(graph=graph)
    return lambda a, b: session.run(block, {u: a, v: b})


# ---------------------------------------------------------------- features and metrics


def test_features_have_the_original_shapes_and_spatial_slice(network, standin_pb, ref_images, ref_features):
    import tensorflow as tf

    assert ref_features.pool.shape == (MAIN_IMAGES, 2048)
    assert ref_features.spatial.shape == (MAIN_IMAGES, 17 * 17 * 7)
    assert ref_features.softmax is None
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
        (mixed,) = tf.import_graph_def(
            inception_file.parse_graph_def(standin_pb, standin_pb.read_bytes()),
            input_map={"ExpandDims:0": images}, return_elements=["mixed_6/conv:0"], name="direct",
        )
    with tf.compat.v1.Session(graph=graph) as session:
        raw = session.run(mixed, {images: ref_images[:5].astype(np.float32)})
    assert raw.shape == (5, 17, 17, 768)
    np.testing.assert_allclose(ref_features.spatial[:5], raw[..., :7].reshape(5, -1), rtol=1e-5, atol=1e-6)
    assert ref_features.pool.std(axis=0).min() > 0  # every feature varies with the image


@pytest.mark.slow
def test_fid_and_sfid_match_scipy_sqrtm(full_rank_features, direct_fids):
    ref_features, sample_features = full_rank_features
    for key, a, b in (("fid", sample_features.pool, ref_features.pool),
                      ("sfid", sample_features.spatial, ref_features.spatial)):
        mu1, sigma1 = metrics.feature_statistics(a, chunk=1000)
        mu2, sigma2 = metrics.feature_statistics(b)
        np.testing.assert_allclose(sigma1, np.cov(a.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
        assert np.linalg.eigvalsh(sigma1).min() > 0 and np.linalg.eigvalsh(sigma2).min() > 0  # full rank
        fast = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
        direct = direct_fids[key]
        assert direct > 10  # the stand-in makes FID non-trivial
        assert abs(fast - direct) <= 1e-6 * abs(direct)


def test_frechet_distance_with_fewer_images_than_dimensions(ref_features, sample_features):
    """Singular covariances take the eigh branch; compare with the exact low-rank formula.

    (``sqrtm`` is off by ~2e-6 relative here, which is why the sqrtm checks use full-rank batches.)
    """
    a, b = sample_features.pool[:300].astype(np.float64), ref_features.pool[:300].astype(np.float64)
    ca, cb = a - a.mean(0), b - b.mean(0)
    diff = a.mean(0) - b.mean(0)
    # tr((Sa Sb)^1/2) = sum of singular values of ca cb^T / (n - 1), exactly, for centred data ca, cb.
    exact = diff @ diff + ((ca**2).sum() + (cb**2).sum() - 2 * np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / 299
    mu1, sigma1 = metrics.feature_statistics(a)
    mu2, sigma2 = metrics.feature_statistics(b)
    with pytest.raises(linalg.LinAlgError):
        linalg.cholesky(sigma1)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(exact, rel=1e-8)


def test_frechet_distance_on_small_full_rank_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((500, 40)), rng.standard_normal((400, 40)) * 1.3 + 0.2
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(sqrtm_fid(a, b), rel=1e-10)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        metrics.frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_covariance_problem_accepts_covariances_and_names_what_is_wrong():
    rng = np.random.default_rng(0)
    few = rng.standard_normal((30, 64))  # fewer images than dimensions: singular, eigenvalues ~ -1e-15
    mu, sigma = metrics.feature_statistics(few)
    assert metrics.covariance_problem(mu, sigma) is None
    assert metrics.covariance_problem(mu, sigma.astype(np.float32).astype(np.float64)) is None  # stored as float32
    assert metrics.covariance_problem(mu, np.zeros_like(sigma)) is None  # identical images
    nan = sigma.copy()
    nan[3, 5] = np.nan
    skew = sigma.copy()
    skew[0, 1] += 0.5
    indefinite = sigma.copy()
    indefinite[0, 1] = indefinite[1, 0] = 2 * np.sqrt(sigma[0, 0] * sigma[1, 1])
    cases = {
        "negative definite": (-np.eye(64), "negative variance -1 at [0, 0]"),
        "NaN": (nan, "sigma holds NaN or infinite values"),
        "not symmetric": (skew, "not symmetric (entries differ from their transpose by up to 0.5"),
        "indefinite": (indefinite, "not positive semi-definite (eigenvalue -"),
        "wrong shape": (sigma[:, :63], "mu has shape (64,) and sigma (64, 63); expected (D,) and (D, D)"),
    }
    for what, (bad, message) in cases.items():
        assert message in (metrics.covariance_problem(mu, bad) or ""), what
    with pytest.raises(ValueError, match="the second statistics are not a finite mean"):
        metrics.frechet_distance(mu, sigma, mu, nan)


@pytest.mark.parametrize("damage, message", [
    ("negative_definite", "sigma is not a covariance matrix: negative variance -1 at [0, 0]"),
    ("nan", "sigma_s holds NaN or infinite values"),
    ("asymmetric", "sigma is not a covariance matrix: not symmetric (entries differ from their transpose by up to 3"),
    ("wrong_shape", "mu_s has shape (2023,) and sigma_s (2023, 2022); expected (D,) and (D, D)"),
])
def test_error_reference_statistics_that_are_no_covariance(capsys, tmp_path, good_pair, damage, message):
    """Precomputed statistics that cannot be a covariance are refused when read (they printed FID -769 or a
    scipy traceback); the sigma_s row checks the sFID statistics too."""
    ref, sample, extra = good_pair
    with np.load(ref) as npz:
        images = npz["arr_0"]
    stats = {"mu": np.zeros(2048), "sigma": np.eye(2048), "mu_s": np.zeros(2023), "sigma_s": np.eye(2023)}
    if damage == "negative_definite":
        stats["sigma"] = -np.eye(2048)
    elif damage == "nan":
        stats["sigma_s"][7, 7] = np.nan
    elif damage == "asymmetric":
        stats["sigma"][0, 1] = 3.0
    else:
        stats["sigma_s"] = stats["sigma_s"][:, :-1]
    bad = tmp_path / f"{damage}.npz"
    np.savez(bad, arr_0=images, **stats)
    last = assert_error(capsys, [bad, sample, *extra])
    assert last.startswith(f"evaluator.py: error: {bad}: {message}")


def test_inception_score_matches_the_definition(sample_features):
    logits = sample_features.pool.astype(np.float64) @ inception_standin.softmax_weights().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(sample_features.softmax, probs, rtol=1e-4, atol=1e-7)
    direct = np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1)))
    assert 1.5 < direct < 1008
    assert metrics.inception_score(sample_features.softmax) == pytest.approx(direct, rel=1e-5)


def test_inception_score_splits_and_zero_probabilities():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(10, 0.3), size=2500).astype(np.float32)
    probs[0, :] = 0
    probs[0, 0] = 1  # exact zeros must count as 0 * log 0 = 0, not NaN
    parts = [probs[:1000], probs[1000:2000], probs[2000:]]
    expected = np.mean([metrics.inception_score(part, split_size=len(part)) for part in parts])
    score = metrics.inception_score(probs, split_size=1000)
    assert np.isfinite(score) and score == pytest.approx(expected, rel=1e-6)


def test_precision_recall_match_brute_force(ref_features, sample_features, kernels):
    ref, sample = ref_features.pool, sample_features.pool
    precision, recall, precision_gap, recall_gap, ref_radii = brute_force_pr(ref, sample)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # non-trivial sets
    # Every point is decided by a margin well above float32 error, so the kernels must agree exactly.
    scale = np.median(ref_radii)
    assert min(np.abs(precision_gap).min(), np.abs(recall_gap).min()) > 1e-4 * scale
    centred = ref - ref.mean(0)
    np.testing.assert_allclose(metrics.manifold_radii(centred, kernels), ref_radii, rtol=5e-5)
    np.testing.assert_allclose(metrics.manifold_radii(centred, kernels, block=500), ref_radii, rtol=5e-5)
    assert metrics.precision_recall(ref, sample, kernels) == (precision, recall)
    # Small ragged blocks (several row and column blocks) give the same answer.
    assert metrics.precision_recall(ref[:1000], sample[:900], kernels, block=407) == brute_force_pr(
        ref[:1000], sample[:900]
    )[:2]


def test_float16_distances_equal_a_numpy_float16_recomputation():
    """On 1-d features every sum has one term, so float16 arithmetic is order-free and numpy can redo it exactly."""
    rng = np.random.default_rng(4)
    ref, sample = rng.uniform(0, 100, (700, 1)), rng.uniform(5, 105, (600, 1))
    kernels = Float16FirstDistances()
    float16 = metrics.precision_recall(ref, sample, kernels, block=250)
    assert float16 == original_pr(numpy_float16_distances, ref, sample, block=250)
    assert float16 != brute_force_pr(ref, sample)[:2]  # float16 rounding moves points across the radii
    # Points near 300 overflow float16 in |u|^2: the batches holding them fall back to float32.  Near 200,
    # |u|^2 stays finite but 2 u.v overflows: -inf, which the maximum turns into 0 (the batch stays float16).
    for low, high in ((295, 305), (185, 250)):
        scaled = ref.copy()
        scaled[:30] = rng.uniform(low, high, (30, 1))
        pr = metrics.precision_recall(scaled, sample, kernels, block=250)
        assert pr == original_pr(numpy_float16_distances, scaled, sample, block=250)
    with pytest.raises(ValueError):
        kernels.nearest(ref[:10], ref[:10], 4, both=True)


def test_float16_distances_equal_the_original_graph(ref_features, sample_features):
    ref, sample = ref_features.pool[:1300], sample_features.pool[:1100]
    original = tensorflow_float16_distances()
    kernels = Float16FirstDistances()
    assert metrics.precision_recall(ref, sample, kernels, block=500) == original_pr(original, ref, sample, 500)
    largest_norm = (ref[:40].astype(np.float64) ** 2).sum(axis=1).max()
    for scale in (300, np.sqrt(60000 / largest_norm)):  # float16 overflow in |u|^2, then only in 2 u.v
        scaled = ref.copy()
        scaled[:40] *= scale
        pr = metrics.precision_recall(scaled, sample, kernels, block=500)
        assert pr == original_pr(original, scaled, sample, 500)


# ---------------------------------------------------------------- command line


GUARD = """
import atexit, json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]

@atexit.register
def report():
    loaded = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
    with open(os.environ["IMPORT_REPORT"], "w") as out:
        json.dump(loaded, out)
"""


@pytest.mark.slow
def test_cli_prints_the_original_lines_and_json(tmp_path, standin_pb, small_npzs, ref_features, sample_features):
    """The script run from elsewhere, with the package's editable install hidden: no torch import."""
    ref_npz, sample_npz = small_npzs
    out_json = tmp_path / "metrics.json"
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {**os.environ, "PYTHONPATH": str(guard), "IMPORT_REPORT": str(tmp_path / "imports.json")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(ref_npz), str(sample_npz), "--inception_path", str(standin_pb),
         "--json", str(out_json)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    imported = json.loads((tmp_path / "imports.json").read_text())
    assert imported["guided_diffusion.cli.fileio"] == str(ROOT / "guided_diffusion" / "cli" / "fileio.py")
    assert "tensorflow" in imported
    assert [name for name in imported if name.split(".")[0] in ("torch", "torchvision")] == []

    lines = [line for line in proc.stdout.splitlines() if line.split(": ")[0] in dict(evaluator.RESULTS).values()]
    assert [line.split(": ")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    printed = printed_metrics(proc.stdout)
    assert json.loads(out_json.read_text()) == {**printed, "distance_precision": "float16"}
    assert "float32" not in proc.stdout  # the original's rule is the default and needs no note

    ref, sample = ref_features.pool[:300], sample_features.pool[:300]
    fid = metrics.frechet_distance(*metrics.feature_statistics(sample), *metrics.feature_statistics(ref))
    sfid = metrics.frechet_distance(*metrics.feature_statistics(sample_features.spatial[:300]),
                                    *metrics.feature_statistics(ref_features.spatial[:300]))
    assert printed["fid"] == pytest.approx(fid, rel=1e-6) and printed["sfid"] == pytest.approx(sfid, rel=1e-6)
    assert printed["inception_score"] == pytest.approx(metrics.inception_score(sample_features.softmax[:300]),
                                                       rel=1e-6)
    # Precision and recall by default: the original's float16-first rule, as published numbers were computed.
    original = original_pr(tensorflow_float16_distances(), ref, sample, 10000)
    assert (printed["precision"], printed["recall"]) == original


def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "missing.npz"), str(tmp_path / "other.npz")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"evaluator.py: error: {tmp_path / 'missing.npz'}: no such file"]


@pytest.mark.slow
def test_reference_built_from_npz_reproduces_full_statistics(capsys, tmp_path, cache_dir, standin_pb, standin_graph,
                                                             small_npzs, ref_features, sample_features):
    ref, sample = small_npzs
    built = tmp_path / "built_ref.npz"
    code, out, err = run_main(capsys, "--ref_stats_out", built, ref, "--ref_max_images", 120,
                              "--inception_path", standin_pb)
    assert code == 0, err
    assert "wrote" in out
    keep = subset_indices(300, 120)
    stats = {}
    with np.load(built) as npz:
        assert sorted(npz.files) == ["acts", "acts_inception_sha256", "acts_spatial", "arr_0", "mu", "mu_s",
                                     "sigma", "sigma_s"]
        with np.load(ref) as source:
            np.testing.assert_array_equal(npz["arr_0"], source["arr_0"][keep])
        np.testing.assert_array_equal(npz["acts"], ref_features.pool[:300][keep])
        np.testing.assert_array_equal(npz["acts_spatial"], ref_features.spatial[:300][keep])
        assert str(npz[ACTS_GRAPH_KEY]) == hashlib.sha256(standin_pb.read_bytes()).hexdigest()
        for key, features in (("", ref_features.pool[:300]), ("_s", ref_features.spatial[:300])):
            mu, sigma = metrics.feature_statistics(features)
            np.testing.assert_allclose(npz[f"mu{key}"], mu, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(npz[f"sigma{key}"], sigma, rtol=1e-5, atol=1e-6)
            stats[key] = (npz[f"mu{key}"], npz[f"sigma{key}"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    # Evaluating against it uses its statistics (all 300 images) for FID and its arr_0 activations for P/R,
    # without a reference feature pass.
    code, out, err = run_main(capsys, built, sample, "--inception_path", standin_pb, "--distance_precision",
                              "float32")
    assert code == 0, err
    assert f"using the reference activations stored in {built}" in out
    assert "computing reference batch activations" not in out
    assert "Precision and recall use exact float32 k-NN distances (--distance_precision float32)" in out
    (radii,) = (cache_dir / CACHE_SUBDIR).iterdir()  # only its k-NN radii are cached
    assert radii.name.endswith(".radii_float32.npz")
    printed = printed_metrics(out)
    for key, suffix, features in (("fid", "", sample_features.pool), ("sfid", "_s", sample_features.spatial)):
        expected = metrics.frechet_distance(*metrics.feature_statistics(features[:300]), *stats[suffix])
        assert printed[key] == pytest.approx(expected, rel=1e-6)
    pr = brute_force_pr(ref_features.pool[:300][keep], sample_features.pool[:300])[:2]
    assert (printed["precision"], printed["recall"]) == pr

    # Activations from another Inception file, or that do not fit arr_0, are not used.
    images = NpzImages(str(built))
    reference = read_reference(str(built))
    assert reference.stats is not None and reference.acts_graph == standin_graph.sha256
    assert stored_activations(images, reference, standin_graph) is reference.acts
    assert stored_activations(images, replace(reference, acts_graph="0" * 64), standin_graph) is None
    short = replace(reference, acts=tuple(a[:-1] for a in reference.acts))
    assert stored_activations(images, short, standin_graph) is None
    out = capsys.readouterr().out
    assert "come from another Inception file" in out and "do not fit its arr_0" in out


@pytest.mark.slow
def test_reference_activation_cache_and_float32_cli(capsys, tmp_path, standin_pb, small_npzs, ref_features,
                                                    sample_features):
    ref, sample = small_npzs
    cache = tmp_path / "cache"
    argv = [ref, sample, "--inception_path", standin_pb, "--cache_dir", cache]
    code, cold, err = run_main(capsys, *argv)
    assert code == 0, err
    assert "computing reference batch activations" in cold and "cached the reference activations" in cold
    (entry,) = [p for p in (cache / CACHE_SUBDIR).iterdir() if p.name.count(".") == 1]
    radii = {p.name for p in (cache / CACHE_SUBDIR).iterdir()} - {entry.name}
    assert radii == {f"{entry.stem}.radii_float16.npz"}
    float16 = original_pr(tensorflow_float16_distances(), ref_features.pool[:300], sample_features.pool[:300], 10000)
    default = printed_metrics(cold)
    assert (default["precision"], default["recall"]) == float16

    # The second run takes the reference activations from the cache (and checks --distance_precision float32
    # end to end): the same Inception Score and FIDs, the exact precision/recall, and a note saying so.
    code, warm, err = run_main(capsys, *argv, "--distance_precision", "float32")
    assert code == 0, err
    assert f"using cached reference activations from {entry}" in warm
    assert "computing reference batch activations" not in warm
    assert "use exact float32 k-NN distances" in warm and "float32" not in cold
    printed = printed_metrics(warm)
    keys = ("inception_score", "fid", "sfid")
    assert [printed[key] for key in keys] == [default[key] for key in keys]
    exact = brute_force_pr(ref_features.pool[:300], sample_features.pool[:300])[:2]
    assert (printed["precision"], printed["recall"]) == exact != float16
    assert (cache / CACHE_SUBDIR / f"{entry.stem}.radii_float32.npz").exists()


def test_reference_radii_are_kept_beside_the_cache_entry(tmp_path, capsys, monkeypatch, ref_features, kernels):
    acts = (ref_features.pool[:300], ref_features.spatial[:300])
    features = ReferenceFeatures(acts, {}, tmp_path / "entry.npz")
    radii = cached_reference_radii(features, kernels, "float32")
    np.testing.assert_array_equal(radii, metrics.reference_radii(acts[0], kernels))
    monkeypatch.setattr(reference, "reference_radii", None)  # the second call must not compute them
    np.testing.assert_array_equal(cached_reference_radii(features, kernels, "float32"), radii)
    activation_cache.store_entry(features.entry, acts, None)  # a new entry drops radii derived from the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.npz"]
    assert "cached the reference activations" in capsys.readouterr().out


def test_damaged_cache_entry_is_rebuilt(capsys, tmp_path, small_npzs, network, standin_graph, ref_features):
    ref, _ = small_npzs
    images = NpzImages(str(ref))

    def features():
        return reference_features(images, ReferenceFile(), network, standin_graph, 64, tmp_path)

    first = features()
    (entry,) = (tmp_path / CACHE_SUBDIR).iterdir()
    assert first.entry == entry
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])
    again = features()
    assert "ignoring the unreadable activation cache entry" in capsys.readouterr().err
    assert entry.read_bytes() == good
    np.testing.assert_array_equal(again.acts[0], first.acts[0])
    np.testing.assert_array_equal(first.acts[0], ref_features.pool[:300])
    assert all(np.array_equal(first.stats[key], again.stats[key]) for key in first.stats)
    assert sorted(p.name for p in (tmp_path / CACHE_SUBDIR).iterdir()) == [entry.name]  # no temporary files


def test_activation_cache_entries(tmp_path, capsys, small_npzs):
    ref, _ = small_npzs
    entry = activation_cache.cache_entry(tmp_path, str(ref), "a" * 64, 64)
    assert activation_cache.load_entry(entry, 300) is None  # no entry yet
    rng = np.random.default_rng(0)
    acts = (rng.random((300, 6), np.float32), rng.random((300, 4), np.float32))
    stats = metrics.fid_statistics(*acts)
    activation_cache.store_entry(entry, acts, None)
    loaded, no_stats = activation_cache.load_entry(entry, 300)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, acts)) and no_stats is None
    activation_cache.store_entry(entry, acts, stats)
    good = entry.read_bytes()
    loaded, loaded_stats = activation_cache.load_entry(entry, 300)
    assert all(np.array_equal(loaded_stats[key], stats[key]) for key in stats)
    assert activation_cache.load_entry(entry, 299) is None  # another image count
    activation_cache.store_entry(entry, acts, {**stats, "sigma": stats["sigma"][:5, :5]})
    assert activation_cache.load_entry(entry, 300) is None  # statistics that do not fit
    for damaged in (good[:-100] + bytes(100), b"not a zip file", good[: len(good) // 2]):
        entry.write_bytes(damaged)
        assert activation_cache.load_entry(entry, 300) is None
    assert capsys.readouterr().err.count("warning: ignoring") == 5
    # The key covers the file's bytes, the graph and the batch size.
    changed = tmp_path / "changed.npz"
    data = bytearray(ref.read_bytes())
    data[len(data) // 2] ^= 1
    changed.write_bytes(data)
    others = {activation_cache.cache_entry(tmp_path, str(changed), "a" * 64, 64),
              activation_cache.cache_entry(tmp_path, str(ref), "b" * 64, 64),
              activation_cache.cache_entry(tmp_path, str(ref), "a" * 64, 32)}
    assert entry not in others and len(others) == 3
    assert activation_cache.file_sha256(str(ref)) == hashlib.sha256(ref.read_bytes()).hexdigest()


def test_failed_reference_build_leaves_no_file(capsys, tmp_path, standin_pb):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(8):
        Image.fromarray(np.full((8, 8, 3), index * 30, np.uint8)).save(folder / f"img{index}.png")
    data = (folder / "img5.png").read_bytes()
    (folder / "img5.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_error(capsys, ["--ref_stats_out", out_dir / "ref.npz", folder, "--inception_path", standin_pb,
                          "--batch_size", 2], "img5.png", "cannot read image")
    assert list(out_dir.iterdir()) == []


def test_reference_built_from_image_folder(capsys, tmp_path, standin_pb):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    sizes = [(40, 30), (33, 50), (64, 64), (20, 24), (48, 36), (30, 30)]
    for index, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        name = folder / ("sub" if index % 2 else "") / f"img{index}.{'png' if index % 3 else 'jpg'}"
        Image.fromarray(pixels).save(name)
    built = tmp_path / "folder_ref.npz"

    code, _, err = run_main(capsys, "--ref_stats_out", built, folder, "--inception_path", standin_pb)
    assert code == 2 and "differ in size" in err and "--image_size" in err

    code, _, err = run_main(capsys, "--ref_stats_out", built, folder, "--image_size", 16,
                            "--inception_path", standin_pb)
    assert code == 0, err
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with np.load(built) as npz:
        expected = [center_crop(Image.open(p).convert("RGB"), 16) for p in files]
        np.testing.assert_array_equal(npz["arr_0"], np.stack(expected))
        assert npz["sigma"].shape == (2048, 2048)


# ---------------------------------------------------------------- bad input


@pytest.fixture()
def good_pair(small_npzs, standin_pb):
    ref, sample = small_npzs
    return ref, sample, ["--inception_path", standin_pb]


def assert_error(capsys, argv, *fragments):
    code, _, err = run_main(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith("evaluator.py: error: ")
    for fragment in fragments:
        assert str(fragment) in last
    return last


def test_error_missing_file(capsys, tmp_path, good_pair):
    ref, _, extra = good_pair
    assert_error(capsys, [ref, tmp_path / "nope.npz", *extra], tmp_path / "nope.npz", "no such file")


@pytest.mark.parametrize("arrays, fragments", [
    ({"images": np.zeros((5, 8, 8, 3), np.uint8)}, ("no 'arr_0'", "images")),
    ({"arr_0": np.zeros((5, 8, 8, 3), np.float32)}, ("float32", "(x + 1) * 127.5")),
    ({"arr_0": np.zeros((5, 3, 8, 8), np.uint8)}, ("NCHW",)),
    ({"arr_0": np.zeros((5, 8, 8), np.uint8)}, ("(5, 8, 8)",)),
    ({"arr_0": np.zeros((5, 8, 8, 4), np.uint8)}, ("3 channels",)),
    ({"arr_0": np.full((5, 8, 8, 3), 300, np.int64)}, ("0..255", "300")),
    ({"arr_0": np.zeros((1, 8, 8, 3), np.uint8)}, ("1 image(s)", "at least 2")),
], ids=["without_arr_0", "float", "nchw", "gray", "rgba", "out_of_range", "one_image"])
def test_error_bad_sample_batch(capsys, tmp_path, good_pair, arrays, fragments):
    """Batches the evaluator refuses, each named in the error with what was expected (and how to convert)."""
    ref, _, extra = good_pair
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert_error(capsys, [ref, bad, *extra], bad, *fragments)


def test_error_reference_too_small_for_precision_recall(capsys, tmp_path, good_pair):
    _, sample, extra = good_pair
    bad = tmp_path / "three.npz"
    np.savez(bad, np.zeros((3, 8, 8, 3), np.uint8))
    assert_error(capsys, [bad, sample, *extra], bad, "precision/recall", "k=3", "at least 4")


def test_error_truncated_or_corrupt_npz(capsys, tmp_path, good_pair, sample_images):
    ref, _, extra = good_pair
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, sample_images[:100])
    data = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    assert_error(capsys, [ref, cut, *extra], cut, "not a readable .npz")
    damaged = tmp_path / "damaged.npz"
    middle = len(data) // 2
    damaged.write_bytes(data[:middle] + bytes(200) + data[middle + 200 :])
    assert_error(capsys, [ref, damaged, *extra], damaged, "corrupt or truncated npz data")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_error_corrupt_inception_path_is_named(capsys, tmp_path, standin_pb, small_npzs, damage):
    ref, sample = small_npzs
    bad = tmp_path / "inception.pb"
    data = standin_pb.read_bytes()
    bad.write_bytes(b"\x00not a graph" * 10 if damage == "garbage" else data[: len(data) // 3])
    assert_error(capsys, [ref, sample, "--inception_path", bad], bad, "Inception")


def test_sixteen_bit_grayscale_folder_images_keep_their_levels(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "wide.png")
    (batch,) = FolderImages(str(tmp_path)).batches(8)
    assert batch.shape == (1, 4, 4, 3) and batch[0, 0, :, 1].tolist() == [0, 1, 128, 255]


def graph_with_write_file(target: Path):
    """The stand-in graph plus a WriteFile node that pool_3 depends on (so running pool_3 writes ``target``)."""
    import tensorflow as tf

    graph_def = inception_standin.build_graph_def()
    extra = tf.Graph()
    with extra.as_default():
        tf.io.write_file(tf.constant(str(target)), tf.constant("written by the graph"), name="evil/write")
    graph_def.node.extend(extra.as_graph_def().node)
    next(node for node in graph_def.node if node.name == "pool_3").input.append("^evil/write")
    return graph_def


def test_graph_with_foreign_ops_is_refused_before_running(capsys, tmp_path, small_npzs):
    """A graph file is a program: one with an op the Inception graph does not use is never imported or run."""
    ref, sample = small_npzs
    target = tmp_path / "written.txt"
    bad = tmp_path / "writer.pb"
    bad.write_bytes(graph_with_write_file(target).SerializeToString())
    last = assert_error(capsys, [ref, sample, "--inception_path", bad])
    assert last == (f"evaluator.py: error: --inception_path {bad}: the graph contains op WriteFile (node evil/write), "
                    "which the Inception graph does not use; refusing to run it")
    assert not target.exists()

    with_function = inception_standin.build_graph_def()
    with_function.library.function.add().signature.name = "hidden"
    with pytest.raises(EvaluatorError, match=r"^x\.pb: the graph defines function hidden, .* refusing to run it$"):
        inception_file.parse_graph_def(Path("x.pb"), with_function.SerializeToString())


def test_the_stand_in_and_the_inception_graph_ops_are_allowed(standin_pb):
    graph_def = inception_file.parse_graph_def(standin_pb, standin_pb.read_bytes())
    assert {node.op for node in graph_def.node} <= inception_file.ALLOWED_OPS
    # the real graph's op types as TensorFlow's summarize_graph lists them (CheckNumerics 99 times)
    real = ("Const CheckNumerics Identity BatchNormWithGlobalNormalization Conv2D Relu Concat AvgPool MaxPool Sub "
            "Softmax ResizeBilinear Reshape Mul MatMul ExpandDims DecodeJpeg Cast BiasAdd").split()
    assert set(real) <= inception_file.ALLOWED_OPS
    assert not {"WriteFile", "ReadFile", "PyFunc", "SaveV2", "PrintV2"} & inception_file.ALLOWED_OPS


# ---------------------------------------------------------------- npz streaming and the Inception file


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_npz_images_stream_in_batches(tmp_path, save, dtype):
    images = np.random.default_rng(1).integers(0, 256, (37, 9, 7, 3)).astype(dtype)
    path = tmp_path / "images.npz"
    save(path, images, extra=np.arange(3))
    reader = NpzImages(str(path))
    batches = list(reader.batches(10))
    assert reader.count == 37 and [len(b) for b in batches] == [10, 10, 10, 7]
    assert all(b.dtype == np.uint8 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_error_fortran_order_npz(capsys, tmp_path, good_pair):
    ref, _, extra = good_pair
    bad = tmp_path / "fortran.npz"
    np.savez(bad, np.asfortranarray(np.zeros((5, 8, 8, 3), np.uint8)))
    assert_error(capsys, [ref, bad, *extra], bad, "Fortran order")


def test_cached_corrupt_inception_file_is_downloaded_again(tmp_path, standin_pb, monkeypatch, capsys):
    data = standin_pb.read_bytes()
    url = standin_pb.as_uri()
    monkeypatch.setitem(inception_file.KNOWN_DIGESTS, url, (len(data), hashlib.md5(data).hexdigest()))
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / inception_file.FILE_NAME
    cached.write_bytes(data[:-100])  # truncated earlier download
    graph = inception_file.load_graph(None, url, str(cache))
    assert "softmax/logits/MatMul" in {node.name for node in graph.graph_def.node}
    assert graph.sha256 == hashlib.sha256(data).hexdigest()
    assert cached.read_bytes() == data
    err = capsys.readouterr().err
    assert str(cached) in err and "downloading it again" in err
    assert sorted(p.name for p in cache.iterdir()) == [inception_file.FILE_NAME]  # no temp files left

    cached.write_bytes(data[:-1] + b"\x00")  # same size, wrong MD5
    inception_file.load_graph(None, url, str(cache))
    assert cached.read_bytes() == data


def test_download_with_a_wrong_digest_leaves_nothing_behind(tmp_path, standin_pb, monkeypatch):
    url = standin_pb.as_uri()
    monkeypatch.setitem(inception_file.KNOWN_DIGESTS, url, (standin_pb.stat().st_size, "0" * 32))
    cache = tmp_path / "cache"
    with pytest.raises(EvaluatorError, match="download from .* is unusable.*MD5"):
        inception_file.load_graph(None, url, str(cache))
    assert list(cache.iterdir()) == []
    with pytest.raises(EvaluatorError, match="cannot download"):
        inception_file.load_graph(None, (tmp_path / "absent.pb").as_uri(), str(cache))


@pytest.mark.slow
def test_cli_downloads_into_the_cache_dir(capsys, tmp_path, standin_pb, small_npzs):
    """The graph goes into --cache_dir; with --no_cache the reference activations do not."""
    ref, sample = small_npzs
    cache = tmp_path / "cache"
    argv = [ref, sample, "--cache_dir", cache, "--inception_url", standin_pb.as_uri(), "--no_cache"]
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir()) == [inception_file.FILE_NAME]
    assert (cache / inception_file.FILE_NAME).read_bytes() == standin_pb.read_bytes()
    assert "FID: " in out and "cached" not in out


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GUIDED_DIFFUSION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inception_file.default_cache_dir() == tmp_path / "guided_diffusion"
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "mine"))
    assert inception_file.default_cache_dir() == tmp_path / "mine"
