"""The evaluator's two Inception backends side by side: ``--backend torch`` against ``--backend tf``, one process.

    python benchmarks/bench_evaluator_backends.py [--num_ref 2000] [--num_sample 1500] [--image_size 64]
        [--dinov2_images 64] [--workdir DIR] [--json OUT.json] [--quick]

Both backends evaluate the same generated ``.npz`` batches (uint8 64x64 smooth random images from
``tests/inception_standin.smooth_images``, the sample batch with a shifted colour distribution) with the
full-architecture stand-in graph of ``evaluations/inception_standin.py`` (the real graph's op types, node names
and Inception-v3 widths with seeded random weights, so one image costs what it costs in the real graph), through
the real command line, ``evaluations/evaluator.main(argv)``, called in this process:

* ``startup``: the graph read and made ready (TensorFlow: imported into a session; PyTorch: converted op by op,
  then again with the converted constants cached), measured once per backend, outside the calls below;
* ``cold``: a call with no cached reference activations (a fresh ``--cache_dir`` per backend, holding only the
  converted graph of the torch backend): both Inception passes, the reference activations then cached;
* ``cached``: the same call again: the reference activations and k-NN radii come from the cache, only the
  sample pass runs.

The calls alternate (tf cold, torch cold, tf cached, torch cached) so that a change of machine load hits both
backends alike.  Images/s counts the images that went through Inception (reference + sample when cold, sample
when cached).  The metrics of the two backends are checked against the tolerance that
``tests/test_inception_torch.py`` and ``evaluations/README.md`` state: FID and sFID within 1e-3 relative, the
Inception Score within 1e-3 of its distance from 1, precision and recall identical.  ``--dinov2_images N`` adds
the FD_DINOv2 feature rate (ViT-L/14, random weights, EDM2's preprocessing) on N of the sample images.

Prints a JSON report and a Markdown table.  ``--quick`` runs a tiny configuration (a few dozen 32x32 images,
the stand-in graph with channels divided by 8, ViT-S/14 for DINOv2) for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

BACKENDS = ("tf", "torch")
NUMERIC = ("inception_score", "fid", "sfid", "precision", "recall")
FD_RTOL = 1e-3  # FID and sFID, relative
IS_TOL = 1e-3  # Inception Score, relative to its distance from 1 (random weights give scores near 1)
MIN_IMAGES = 4  # precision/recall: k = 3 nearest neighbours
QUICK = dict(num_ref=24, num_sample=16, image_size=32, width_divisor=8, dinov2_images=4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: counts large enough for precision/recall, positive sizes."""
    parser = argparse.ArgumentParser(prog="bench_evaluator_backends.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_ref", type=int, default=2000, help="reference images")
    parser.add_argument("--num_sample", type=int, default=1500, help="sample images")
    parser.add_argument("--image_size", type=int, default=64, help="side of the generated images")
    parser.add_argument("--width_divisor", type=int, default=1,
                        help="stand-in graph channels divided by this (1: the real graph's cost)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stand-in graph's weights")
    parser.add_argument("--dinov2_images", type=int, default=64,
                        help="sample images to time FD_DINOv2's features on (0: skip)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per Inception / DINOv2 batch")
    parser.add_argument("--workdir", help="keep graph, images, caches and logs here (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the report to PATH")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny run for tests, as defaults: {', '.join(f'--{k} {v}' for k, v in QUICK.items())}")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args(argv)
    for flag in ("num_ref", "num_sample"):
        if getattr(args, flag) < MIN_IMAGES:
            parser.error(f"--{flag} must be at least {MIN_IMAGES} (precision/recall use 3 nearest neighbours), "
                         f"got {getattr(args, flag)}")
    for flag in ("image_size", "width_divisor", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if not 0 <= args.dinov2_images <= args.num_sample:
        parser.error(f"--dinov2_images must be between 0 and --num_sample ({args.num_sample}), "
                     f"got {args.dinov2_images}")
    return args


def write_batch(path: Path, count: int, size: int, seed: int, shift: float) -> None:
    """``count`` smooth random uint8 images in ``arr_0`` (stored, as guided-diffusion's sample batches)."""
    from inception_standin import smooth_images

    np.savez(path, np.concatenate([smooth_images(min(1000, count - i), size, seed * 100003 + i, shift)
                                   for i in range(0, count, 1000)]))


def call_evaluator(argv: list[str], log: Path) -> tuple[float, dict[str, Any]]:
    """Run ``evaluator.main(argv + --json)`` here, its output appended to ``log``; wall seconds and metrics."""
    from evaluations import evaluator

    out = log.with_suffix(".json")
    with open(log, "a") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        start = time.perf_counter()
        code = evaluator.main([*argv, "--json", str(out)])
        seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"evaluator.py {' '.join(argv)} exited {code}; see {log}")
    return seconds, json.loads(out.read_text())


def startup_seconds(graph: Path, cache: Path, backend: str) -> float:
    """Seconds to read the graph and make the backend's network ready (evaluator.load_network)."""
    from evaluations import evaluator

    args = evaluator.parse_args(["unused.npz", "unused.npz", "--inception_path", str(graph), "--backend", backend,
                                 "--cache_dir", str(cache)])
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        start = time.perf_counter()
        evaluator.load_network(args)
        return time.perf_counter() - start


def agreement(tf: dict[str, float], torch: dict[str, float]) -> dict[str, Any]:
    """The differences of the torch backend's metrics from TensorFlow's, each with whether it is within the
    documented tolerance."""
    checks = {}
    for key in ("fid", "sfid"):
        diff = abs(torch[key] - tf[key]) / abs(tf[key])
        checks[key] = {"relative_difference": diff, "tolerance": FD_RTOL, "ok": diff <= FD_RTOL}
    diff = abs(torch["inception_score"] - tf["inception_score"]) / abs(tf["inception_score"] - 1)
    checks["inception_score"] = {"difference_over_distance_from_1": diff, "tolerance": IS_TOL, "ok": diff <= IS_TOL}
    for key in ("precision", "recall"):
        checks[key] = {"difference": abs(torch[key] - tf[key]), "tolerance": 0.0, "ok": torch[key] == tf[key]}
    return {"checks": checks, "all_ok": all(check["ok"] for check in checks.values())}


def dinov2_rate(sample: Path, count: int, batch_size: int, quick: bool) -> dict[str, Any]:
    """Images/s of FD_DINOv2's feature network (random weights) on ``count`` sample images, after a warm-up
    batch of 2 (the evaluator's DinoV2Features: resize to 224x224, normalize, ViT, class token)."""
    import torch

    from evaluations import dinov2

    config = dinov2.VITS14 if quick else dinov2.VITL14
    torch.manual_seed(0)
    network = dinov2.DinoV2Features(config, dinov2.DinoViT(config).state_dict())
    with np.load(sample) as data:
        images = data["arr_0"][:count]
    network(images[:2])
    start = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        features = network.features((images[i:i + batch_size] for i in range(0, count, batch_size)), count, "sample")
    seconds = time.perf_counter() - start
    return {"network": config.name, "images": count, "batch_size": batch_size, "seconds": round(seconds, 2),
            "images_per_s": round(count / seconds, 3), "finite": bool(np.isfinite(features).all())}


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and the load average at the time of the call."""
    import tensorflow as tf
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "tensorflow": tf.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "python": platform.python_version()}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write the graph and images, time both backends, compare their metrics; the report."""
    from evaluations.inception_standin import write_graph

    load_before = os.getloadavg()
    graph = write_graph(work / f"standin_seed{args.seed}_div{args.width_divisor}.pb", args.seed, args.width_divisor)
    ref = work / f"ref_{args.num_ref}_{args.image_size}.npz"
    sample = work / f"sample_{args.num_sample}_{args.image_size}.npz"
    write_batch(ref, args.num_ref, args.image_size, seed=1, shift=0.0)
    write_batch(sample, args.num_sample, args.image_size, seed=2, shift=0.3)
    caches = {backend: work / f"cache_{backend}" for backend in BACKENDS}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": machine(),
        "images": {"reference": args.num_ref, "sample": args.num_sample, "size": args.image_size,
                   "kind": "uint8 smooth random (tests/inception_standin.smooth_images)"},
        "graph": {"file": graph.name, "bytes": graph.stat().st_size, "width_divisor": args.width_divisor},
        "batch_size": args.batch_size,
        "startup_s": {},
    }
    for backend in BACKENDS:
        report["startup_s"][backend] = round(startup_seconds(graph, caches[backend], backend), 2)
    report["startup_s"]["torch_converted_cached"] = round(startup_seconds(graph, caches["torch"], "torch"), 2)

    counts = {"cold": args.num_ref + args.num_sample, "cached": args.num_sample}
    runs: dict[str, dict[str, Any]] = {backend: {} for backend in BACKENDS}
    for phase in ("cold", "cached"):
        for backend in BACKENDS:
            argv = [str(ref), str(sample), "--backend", backend, "--inception_path", str(graph),
                    "--cache_dir", str(caches[backend]), "--batch_size", str(args.batch_size)]
            seconds, metrics = call_evaluator(argv, work / f"{backend}_{phase}.log")
            runs[backend][phase] = {"seconds": round(seconds, 2), "inception_images": counts[phase],
                                    "images_per_s": round(counts[phase] / seconds, 3),
                                    "metrics": {key: metrics[key] for key in NUMERIC}}
    report["runs"] = runs
    report["torch_over_tf_seconds"] = {phase: round(runs["torch"][phase]["seconds"] / runs["tf"][phase]["seconds"], 3)
                                       for phase in counts}
    report["agreement"] = {phase: agreement(runs["tf"][phase]["metrics"], runs["torch"][phase]["metrics"])
                           for phase in counts}
    report["cached_equals_cold"] = {backend: runs[backend]["cold"]["metrics"] == runs[backend]["cached"]["metrics"]
                                    for backend in BACKENDS}
    if args.dinov2_images:
        report["fd_dinov2_features"] = dinov2_rate(sample, args.dinov2_images, args.batch_size, args.quick)
    report["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: seconds and images/s per backend and phase, torch/tf ratios."""
    runs, ratio = report["runs"], report["torch_over_tf_seconds"]
    lines = ["| call | images through Inception | tf | torch | torch / tf (time) |", "|---|---:|---:|---:|---:|"]
    startup = report["startup_s"]
    lines.append(f"| startup (graph ready) | - | {startup['tf']:.1f} s | {startup['torch']:.1f} s (converting), "
                 f"{startup['torch_converted_cached']:.1f} s (cached) | - |")
    labels = {"cold": "cold (no cached reference activations)", "cached": "reference activations cached"}
    for phase, label in labels.items():
        tf, torch = runs["tf"][phase], runs["torch"][phase]
        lines.append(f"| {label} | {tf['inception_images']} | {tf['seconds']:.1f} s ({tf['images_per_s']:.2f} img/s) "
                     f"| {torch['seconds']:.1f} s ({torch['images_per_s']:.2f} img/s) | {ratio[phase]:.2f} |")
    if "fd_dinov2_features" in report:
        dino = report["fd_dinov2_features"]
        lines.append(f"| FD_DINOv2 features ({dino['network']}, random weights) | {dino['images']} | - | "
                     f"{dino['seconds']:.1f} s ({dino['images_per_s']:.2f} img/s) | - |")
    metric_lines = ["", "| backend, call | IS | FID | sFID | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    for backend in BACKENDS:
        for phase in ("cold", "cached"):
            m = runs[backend][phase]["metrics"]
            metric_lines.append(f"| {backend}, {phase} | {m['inception_score']:.6f} | {m['fid']:.6f} | "
                                f"{m['sfid']:.6f} | {m['precision']:.4f} | {m['recall']:.4f} |")
    return "\n".join(lines + metric_lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when both backends agree within the tolerance, 1 when they do not."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_evaluator_backends_"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    print(table(report))
    if args.json:
        Path(args.json).write_text(text + "\n")
    agreed = all(check["all_ok"] for check in report["agreement"].values())
    if not agreed:
        print("bench_evaluator_backends.py: the backends' metrics differ beyond the tolerance", file=sys.stderr)
    return 0 if agreed else 1


if __name__ == "__main__":
    sys.exit(main())
