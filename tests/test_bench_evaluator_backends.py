"""benchmarks/bench_evaluator_backends.py: both Inception backends timed on the same batches, the cached call served
from the cache, the metrics compared against the documented tolerance, and its flags checked."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_evaluator_backends as bench  # noqa: E402

TF = {"inception_score": 1.02, "fid": 100.0, "sfid": 500.0, "precision": 0.5, "recall": 0.25}


def test_agreement_holds_the_documented_tolerance():
    within = {**TF, "fid": 100.09, "sfid": 500.4, "inception_score": 1.02001}  # 9e-4, 8e-4 rel.; IS 5e-4 of 0.02
    result = bench.agreement(TF, within)
    assert result["all_ok"]
    assert result["checks"]["fid"]["relative_difference"] == pytest.approx(9e-4)
    assert result["checks"]["inception_score"]["difference_over_distance_from_1"] == pytest.approx(5e-4)
    beyond = {**within, "sfid": 500.6, "recall": 0.25 + 1 / 1500}  # 1.2e-3 rel.; one recall neighbour differs
    result = bench.agreement(TF, beyond)
    assert not result["all_ok"]
    assert [k for k, check in result["checks"].items() if not check["ok"]] == ["sfid", "recall"]


@pytest.mark.parametrize("argv, message", [
    (["--num_ref", "3"], "--num_ref must be at least 4 (precision/recall use 3 nearest neighbours), got 3"),
    (["--num_sample", "10", "--dinov2_images", "11"],
     "--dinov2_images must be between 0 and --num_sample (10), got 11"),
    (["--image_size", "0"], "--image_size must be a positive integer, got 0"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench_evaluator_backends.py: error: {message}"


def test_quick_sets_defaults_that_flags_override():
    args = bench.parse_args(["--quick", "--dinov2_images", "0"])
    assert (args.num_ref, args.num_sample, args.width_divisor, args.dinov2_images) == (24, 16, 8, 0)
    assert (bench.parse_args([]).num_ref, bench.parse_args([]).num_sample) == (2000, 1500)


@pytest.mark.slow
def test_quick_run_times_both_backends_cold_and_cached(tmp_path, capsys):
    work = tmp_path / "work"
    assert bench.main(["--quick", "--workdir", str(work), "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"]["reference"] == 24 and report["images"]["sample"] == 16
    assert report["graph"]["width_divisor"] == 8
    for backend in ("tf", "torch"):
        for phase, count in (("cold", 40), ("cached", 16)):
            run = report["runs"][backend][phase]
            assert run["inception_images"] == count
            assert run["images_per_s"] == pytest.approx(count / run["seconds"], rel=0.01)
        # the cached call was served from the cache the cold call filled, and gave the same numbers
        log = (work / f"{backend}_cached.log").read_text()
        assert "using cached reference activations" in log
        assert "using cached reference activations" not in (work / f"{backend}_cold.log").read_text()
        assert report["cached_equals_cold"][backend]
    assert list((work / "cache_torch").glob("inception_torch_*.pt"))  # converted once, at the startup measurement
    for phase in ("cold", "cached"):
        ratio = report["runs"]["torch"][phase]["seconds"] / report["runs"]["tf"][phase]["seconds"]
        assert report["torch_over_tf_seconds"][phase] == pytest.approx(ratio, abs=2e-3)
        assert report["agreement"][phase]["all_ok"]
    dino = report["fd_dinov2_features"]
    assert dino["network"] == "dinov2_vits14" and dino["images"] == 4 and dino["finite"]
    table = capsys.readouterr().out
    assert "| cold (no cached reference activations) | 40 |" in table
    assert "| reference activations cached | 16 |" in table
