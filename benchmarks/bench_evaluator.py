"""Benchmark evaluations/evaluator.py against a straightforward re-implementation of the original algorithm.

Both sides run as separate processes on the same generated ``.npz`` batches (uint8, stored
members, like guided-diffusion's sample batches) and on the stand-in Inception graph of
``tests/inception_standin.py`` (the real 95 MB graph cannot be downloaded here; the stand-in has
the same tensor names and shapes but costs far less per image, see RESULTS_evaluator.md).

* ``baseline``: the original evaluator's algorithm, written out here: the graph imported twice
  (features, softmax), float32 batches of 64, both batches' activations computed on every call,
  ``np.cov`` statistics, ``scipy.linalg.sqrtm`` Fréchet distances, and 10000x10000 distance blocks
  (float32, or float16 first as the original with ``--distance_precision float16``), fetched whole
  for ``np.partition`` radii.
* ``ours``: the real command line ``python evaluations/evaluator.py REF SAMPLE --json ...``, run
  ``cold`` (empty cache: both feature passes, the reference activations then cached), ``warm`` (the
  same command again: reference activations, statistics and k-NN radii from the cache) and
  ``precomputed`` (against a reference built once with ``--ref_stats_out``, which carries its
  activations: ``precomputed_first`` computes its k-NN radii, ``precomputed`` finds them cached);
  plus a separate cold run of the same library calls with per-phase timers.

Wall time and peak RSS (``ru_maxrss`` of each child process) are measured around each process.
Prints one JSON object.  Quick run: ``--num_ref 2000 --num_sample 2000``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from contextlib import contextmanager
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

KEYS = ("inception_score", "fid", "sfid", "precision", "recall")


class Phases:
    """Wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


# ---------------------------------------------------------------- baseline: the original algorithm


def _npz_batches(path: str, batch_size: int) -> Iterator[np.ndarray]:
    """arr_0 in batches, streamed from the zip member as the original does."""
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as member:
        np.lib.format.read_magic(member)
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            yield np.frombuffer(member.read(rows * row), dtype).reshape((rows, *shape[1:]))


def run_baseline(ref: str, sample: str, graph_path: str, out: str, float16: bool) -> None:
    """The original evaluator's algorithm, phase by phase."""
    from scipy import linalg

    phases = Phases()
    with phases("startup"):
        import tensorflow.compat.v1 as tf

        def import_graph(**kwargs):
            graph_def = tf.GraphDef()
            with open(graph_path, "rb") as f:  # the original reads and parses the file per import
                graph_def.ParseFromString(f.read())
            return tf.import_graph_def(graph_def, **kwargs)

        config = tf.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        graph = tf.Graph()
        with graph.as_default():
            images = tf.placeholder(tf.float32, [None, None, None, 3])
            pool, spatial = import_graph(
                input_map={"ExpandDims:0": images}, return_elements=["pool_3:0", "mixed_6/conv:0"], name="a"
            )
            spatial = spatial[..., :7]
            pool_in = tf.placeholder(tf.float32, [None, 2048])
            (matmul,) = import_graph(return_elements=["softmax/logits/MatMul"], name="b")
            softmax = tf.nn.softmax(tf.matmul(pool_in, matmul.inputs[1]))

            u, v = tf.placeholder(tf.float32, [None, None]), tf.placeholder(tf.float32, [None, None])

            def distances(a, b):
                na = tf.reshape(tf.reduce_sum(tf.square(a), 1), [-1, 1])
                nb = tf.reshape(tf.reduce_sum(tf.square(b), 1), [1, -1])
                return tf.maximum(na - 2 * tf.matmul(a, b, False, True) + nb, 0.0)

            if float16:
                d16 = distances(tf.cast(u, tf.float16), tf.cast(v, tf.float16))
                block = tf.cond(
                    tf.reduce_all(tf.math.is_finite(d16)), lambda: tf.cast(d16, tf.float32), lambda: distances(u, v)
                )
            else:
                block = distances(u, v)
            r1, r2 = tf.placeholder(tf.float32, [None, None]), tf.placeholder(tf.float32, [None, None])
            in_1 = tf.reduce_any(block[..., None] <= r2, axis=1)
            in_2 = tf.reduce_any(block[..., None] <= r1[:, None], axis=0)
        sess = tf.Session(graph=graph, config=config)

        def activations(batches):
            pools, spatials = [], []
            for batch in batches:
                p, s = sess.run([pool, spatial], {images: batch.astype(np.float32)})
                pools.append(p.reshape([p.shape[0], -1]))
                spatials.append(s.reshape([s.shape[0], -1]))
            return np.concatenate(pools), np.concatenate(spatials)

        activations([np.zeros([8, 64, 64, 3])])  # warm-up

    with phases("reference_features"):
        ref_acts = activations(_npz_batches(ref, 64))
    with phases("sample_features"):
        sample_acts = activations(_npz_batches(sample, 64))

    with phases("statistics"):
        stats = [(np.mean(a, axis=0), np.cov(a, rowvar=False)) for a in (*ref_acts, *sample_acts)]

    with phases("inception_score"):
        probs = np.concatenate(
            [sess.run(softmax, {pool_in: sample_acts[0][i : i + 512]}) for i in range(0, len(sample_acts[0]), 512)]
        )
        scores = []
        for i in range(0, len(probs), 5000):
            part = probs[i : i + 5000]
            kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
            scores.append(np.exp(np.mean(np.sum(kl, 1))))
        inception_score = float(np.mean(scores))

    def frechet(s1, s2, eps=1e-6):
        (mu1, sigma1), (mu2, sigma2) = s1, s2
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        diff = mu1 - mu2
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))

    with phases("frechet_distances"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fid = frechet(stats[2], stats[0])
        sfid = frechet(stats[3], stats[1])

    with phases("precision_recall"):
        batch_size, k = 10000, 3

        def partition(arr):
            workers = min(os.cpu_count() or 1, len(arr))
            chunks = np.array_split(arr, workers)
            with ThreadPool(workers) as threads:
                return np.concatenate(threads.map(partial(np.partition, kth=np.arange(k + 1), axis=1), chunks))

        def radii(feats):
            out = np.zeros([len(feats), 1], np.float32)
            dist = np.zeros([batch_size, len(feats)], np.float32)
            for b1 in range(0, len(feats), batch_size):
                rows = feats[b1 : b1 + batch_size]
                for b2 in range(0, len(feats), batch_size):
                    dist[: len(rows), b2 : b2 + batch_size] = sess.run(block, {u: rows, v: feats[b2 : b2 + batch_size]})
                out[b1 : b1 + len(rows)] = partition(dist[: len(rows)])[:, [k]]
            return out

        f1, f2 = ref_acts[0], sample_acts[0]
        rad1, rad2 = radii(f1), radii(f2)
        status1 = np.zeros([len(f1), 1], bool)
        status2 = np.zeros([len(f2), 1], bool)
        for b1 in range(0, len(f1), batch_size):
            for b2 in range(0, len(f2), batch_size):
                a, b = sess.run(
                    [in_1, in_2],
                    {u: f1[b1 : b1 + batch_size], v: f2[b2 : b2 + batch_size],
                     r1: rad1[b1 : b1 + batch_size], r2: rad2[b2 : b2 + batch_size]},
                )
                status1[b1 : b1 + batch_size] |= a
                status2[b2 : b2 + batch_size] |= b
        precision, recall = float(status2.mean()), float(status1.mean())

    metrics = dict(zip(KEYS, (inception_score, fid, sfid, precision, recall)))
    Path(out).write_text(json.dumps({"metrics": metrics, "phases": phases.seconds}))


# ---------------------------------------------------------------- ours, phase by phase


def run_ours(ref: str, sample: str, graph_path: str, out: str, distance_precision: str) -> None:
    """The calls evaluations/evaluator.py makes on a cold cache, with per-phase timers."""
    phases = Phases()
    with phases("startup"):
        from evaluations import metrics
        from evaluations.evaluator import DISTANCE_KERNELS
        from evaluations.inception import InceptionNetwork
        from evaluations.inception_file import load_graph
        from evaluations.npz_io import NpzImages

        graph = load_graph(graph_path)
        network = InceptionNetwork(graph.graph_def, graph_path)
    with phases("reference_features"):
        images = NpzImages(ref)
        ref_features = network.features(images.batches(64), images.count, softmax=False, desc="reference")
    with phases("sample_features"):
        images = NpzImages(sample)
        sample_features = network.features(images.batches(64), images.count, softmax=True, desc="sample")
    with phases("statistics"):
        stats = [
            metrics.feature_statistics(f)
            for f in (ref_features.pool, ref_features.spatial, sample_features.pool, sample_features.spatial)
        ]
    with phases("inception_score"):
        inception_score = metrics.inception_score(sample_features.softmax)
    with phases("frechet_distances"):
        fid = metrics.frechet_distance(*stats[2], *stats[0])
        sfid = metrics.frechet_distance(*stats[3], *stats[1])
    with phases("precision_recall"):
        kernels = DISTANCE_KERNELS[distance_precision]()
        precision, recall = metrics.precision_recall(ref_features.pool, sample_features.pool, kernels)
    result = dict(zip(KEYS, (inception_score, fid, sfid, precision, recall)))
    Path(out).write_text(json.dumps({"metrics": result, "phases": phases.seconds}))


# ---------------------------------------------------------------- driver


def write_batch(path: Path, count: int, size: int, seed: int, shift: float) -> None:
    """Generate ``count`` stand-in images in chunks and save them with np.savez (stored members)."""
    from inception_standin import smooth_images

    chunks = [smooth_images(min(1000, count - i), size, seed * 100003 + i, shift) for i in range(0, count, 1000)]
    np.savez(path, np.concatenate(chunks))


def timed(cmd: List[str], log: Path) -> Dict[str, float]:
    """Run ``cmd``; return its wall time and peak RSS, failing loudly if it fails."""
    start = time.perf_counter()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_ref", type=int, default=10000)
    parser.add_argument("--num_sample", type=int, default=10000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--workdir", help="keep generated data here (default: a temporary folder)")
    parser.add_argument("--distance_precision", choices=["float32", "float16"], default="float32",
                        help="k-NN distances on both sides: float32 (default; ours' exact definition, the "
                        "original's fallback) or float16 first (the original's rule; ours' --distance_precision)")
    parser.add_argument("--no_phases", action="store_true", help="skip the per-phase run of ours")
    parser.add_argument("--child", nargs=6, metavar=("SIDE", "REF", "SAMPLE", "GRAPH", "OUT", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, ref, sample, graph, out, precision = args.child
        if side == "ours":
            run_ours(ref, sample, graph, out, precision)
        else:
            run_baseline(ref, sample, graph, out, float16=precision == "float16")
        return

    from inception_standin import write_graph

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_evaluator_"))
    work.mkdir(parents=True, exist_ok=True)
    graph = write_graph(work / "standin.pb")
    ref = work / f"ref_{args.num_ref}_{args.image_size}.npz"
    sample = work / f"sample_{args.num_sample}_{args.image_size}.npz"
    if not ref.exists():
        write_batch(ref, args.num_ref, args.image_size, seed=1, shift=0.0)
    if not sample.exists():
        write_batch(sample, args.num_sample, args.image_size, seed=2, shift=0.3)

    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    files = [str(ref), str(sample), str(graph)]
    report = {
        "machine": f"{os.cpu_count()} CPU cores",
        "images": {"reference": args.num_ref, "sample": args.num_sample, "size": args.image_size},
        "graph": "stand-in (tests/inception_standin.py)",
        "distance_precision": args.distance_precision,
    }
    report["baseline"] = timed([*me, "baseline", *files, str(work / "baseline.json"), args.distance_precision],
                               work / "baseline.log")
    report["baseline"].update(json.loads((work / "baseline.json").read_text()))

    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    script = [sys.executable, str(ROOT / "evaluations" / "evaluator.py")]
    common = ["--inception_path", str(graph), "--cache_dir", str(cache)]
    evaluate = [*common, "--distance_precision", args.distance_precision]
    built = work / "built_ref.npz"
    runs = {
        "cold": [*script, str(ref), str(sample), *evaluate],
        "warm": [*script, str(ref), str(sample), *evaluate],
        "build_reference": [*script, "--ref_stats_out", str(built), str(ref), *common, "--ref_max_images",
                            str(args.num_ref)],
        "precomputed_first": [*script, str(built), str(sample), *evaluate],
        "precomputed": [*script, str(built), str(sample), *evaluate],
    }
    for name, cmd in runs.items():
        out_json = work / f"ours_{name}.json"
        report[name] = timed(cmd + (["--json", str(out_json)] if name != "build_reference" else []),
                             work / f"ours_{name}.log")
        if name != "build_reference":
            report[name]["metrics"] = json.loads(out_json.read_text())
    if not args.no_phases:
        phases = timed([*me, "ours", *files, str(work / "ours_phases.json"), args.distance_precision],
                       work / "ours_phases.log")
        report["cold"]["phases"] = json.loads((work / "ours_phases.json").read_text())["phases"]
        report["cold"]["phases_run"] = phases

    base = report["baseline"]["metrics"]
    for name in ("cold", "warm", "precomputed_first", "precomputed"):
        ours = report[name]["metrics"]
        report[name]["speedup"] = round(report["baseline"]["wall_s"] / report[name]["wall_s"], 2)
        report[name]["relative_difference"] = {key: abs(ours[key] - base[key]) / abs(base[key]) for key in KEYS[:3]}
        report[name]["absolute_difference"] = {key: abs(ours[key] - base[key]) for key in KEYS[3:]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
