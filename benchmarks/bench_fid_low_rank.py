"""FID when the sample set has fewer images than feature dimensions: the eigenvector factor over the kept
eigenvalues (evaluations.metrics.frechet_distance) against the full clipped factor, timed in the same run.

Both compute tr((S1 S2)^1/2) as the sum of square roots of the eigenvalues of F^T S2 F with S1 = F F^T.
The full factor keeps all d columns of V sqrt(max(L, 0)), so F^T S2 F is d x d; the kept factor drops the
eigenvalues at rounding level, so it has about one column per image. Errors are against the exact low-rank
formula from the features themselves (singular values of the centred cross product).

    python benchmarks/bench_fid_low_rank.py [--dims 2048] [--images 300,1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
from scipy import linalg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluations import metrics  # noqa: E402


def full_factor_fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The baseline: the singular branch with every eigenvector kept (eigenvalues clipped at zero)."""
    values, vectors = linalg.eigh(sigma1)
    factor = vectors * np.sqrt(np.clip(values, 0.0, None))
    inner = factor.T @ sigma2 @ factor
    trace_covmean = np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def exact_fid(a: np.ndarray, b: np.ndarray) -> float:
    """tr((Sa Sb)^1/2) = sum of singular values of ca cb^T / (n - 1) for centred features ca, cb (equal n)."""
    ca, cb = a - a.mean(0), b - b.mean(0)
    diff = a.mean(0) - b.mean(0)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(diff @ diff + ((ca**2).sum() + (cb**2).sum() - 2 * cross) / (len(a) - 1))


def timed(fn, args, repeats: int) -> tuple[float, float]:
    """(median seconds, value) over `repeats` calls."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--images", default="300,1000", help="sample counts, each below --dims")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}")
    print("| images | full factor | kept factor | speed-up | error, full | error, kept |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in (int(v) for v in args.images.split(",")):
        a = rng.standard_normal((n, args.dims)) ** 2  # skewed, non-Gaussian features
        b = rng.standard_normal((n, args.dims)) * 1.2 + 0.1
        stats = (*metrics.feature_statistics(a), *metrics.feature_statistics(b))
        exact = exact_fid(a, b)
        full_s, full = timed(full_factor_fid, stats, args.repeats)
        kept_s, kept = timed(metrics.frechet_distance, stats, args.repeats)
        print(f"| {n} | {full_s:.3f} s | {kept_s:.3f} s | {full_s / kept_s:.2f}x | {abs(full - exact) / exact:.1e} | "
              f"{abs(kept - exact) / exact:.1e} |")


if __name__ == "__main__":
    main()
