"""EDM2's protocol for a sampling run in the evaluator: the run's output folder (its npz and record, as the
sampling scripts write them) or a folder of images named by seed, 50,000 images expected (--num_images),
several seed sets (--seeds) with each set's metrics and their minimum and mean, one reference pass, one-line
errors.

FD_DINOv2 on the official code's tiny random backbone (tests/fixtures/dinov2) keeps these fast; one test runs the
ADM suite on the stand-in Inception graph (tests/inception_standin.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inception_standin
from evaluations import dinov2, evaluator, inception_file, metrics
from evaluations.distances import Float16FirstDistances
from evaluations.inception import InceptionNetwork
from evaluations.seed_sets import parse_seed_set, parse_seed_sets
from evaluations.errors import EvaluatorError
from guided_diffusion.sampling.record import sample_record
from guided_diffusion.sampling.writer import SampleWriter, generate

FIXTURE = Path(__file__).parent / "fixtures" / "dinov2"
SEED = 100  # the runs' --seed: image i has seed 100 + i
RUN_IMAGES = 30
NAME = f"samples_{RUN_IMAGES}x20x20x3"

pytestmark = pytest.mark.usefixtures("cache_dir")  # a fresh default cache dir per test (conftest)


@pytest.fixture(scope="module")
def tiny(tiny_dinov2):
    """(config, state dict) of the official code's small random DINOv2 backbone."""
    return tiny_dinov2[:2]


@pytest.fixture
def weights(tiny, tmp_path, monkeypatch):
    """The evaluator's FD_DINOv2 on the tiny backbone: its weights file, for --dinov2_weights."""
    config, state = tiny
    monkeypatch.setattr(dinov2, "VITL14", config)
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path


def images(count: int, seed: int, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


RUN = images(RUN_IMAGES, 7)


def write_run(folder: Path, count: int = RUN_IMAGES, seed: int = SEED) -> Path:
    """A sampling run's output folder, written by the sampling scripts' own writer and record: image i is RUN[i]."""
    record = sample_record("image_sample", {"seed": seed, "num_samples": count, "image_size": 20, "batch_size": 4})
    writer = SampleWriter(str(folder), count, 20, 20, with_labels=False, record=record)
    return Path(generate(writer, 4, lambda indices: (RUN[indices], None)))


def run_main(capsys, *argv):
    code = evaluator.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def warnings(err: str) -> list[str]:
    """The warning lines of stderr (which also carries the progress bars)."""
    return [line for line in err.splitlines() if line.startswith("warning")]


def fd_of(capsys, weights, ref, sample) -> float:
    """FD_DINOv2 of a sample batch evaluated on its own (all its images)."""
    code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4,
                              "--num_images", "all", ref, sample)
    assert code == 0, err
    return float(out.split("FD_DINOv2: ")[1])


@pytest.fixture
def ref(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, images(12, 0))
    return path


# ---------------------------------------------------------------- seed sets


def test_seed_set_syntax_is_edm2s():
    seeds = parse_seed_set("1,2,5-10")
    assert seeds.ranges == ((1, 1), (2, 2), (5, 10)) and seeds.size == 8
    assert list(seeds.contains(np.arange(12))) == [False, True, True, False, False] + [True] * 6 + [False]
    assert parse_seed_set("0-49999").size == 50000
    assert parse_seed_set("0-999999999999").size == 10 ** 12  # kept as ranges, not a list
    assert [s.text for s in parse_seed_sets(["0-9", "10-19", "20"])] == ["0-9", "10-19", "20"]


@pytest.mark.parametrize("texts, message", [
    (["abc"], "--seeds abc: expected seeds and inclusive ranges such as 0-49999 or 1,2,5-10 (non-negative "
              "integers), got 'abc'"),
    (["0-9,"], "--seeds 0-9,: expected seeds and inclusive ranges such as 0-49999 or 1,2,5-10 (non-negative "
               "integers), got an empty item"),
    (["-3"], "--seeds -3: expected seeds and inclusive ranges"),
    (["10-5"], "--seeds 10-5: the range 10-5 runs backwards (write 5-10)"),
    (["0-5,3"], "--seeds 0-5,3: seed 3 is listed twice; a seed set names each seed once"),
    (["0-9", "20-29", "5-14"], "--seeds: the seed sets 0-9 and 5-14 share seed 5; the sets must not overlap"),
    (["0-9", "0-9"], "--seeds: the seed sets 0-9 and 0-9 share seed 0"),
])
def test_bad_seed_sets(texts, message):
    with pytest.raises(EvaluatorError) as info:
        parse_seed_sets(texts)
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------- 50,000 images by default


def test_fewer_than_50000_images_warn_in_one_line_and_evaluate(capsys, weights, ref, tmp_path):
    sample = tmp_path / "sample.npz"
    np.savez(sample, images(12, 1))
    expected = fd_of(capsys, weights, ref, sample)
    code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4, ref,
                              sample)
    assert code == 0
    assert warnings(err) == [
        f"warning: {sample} has 12 images, not the 50000 expected (--num_images); the metrics depend on the number "
        "of images, so these are not comparable with published numbers"]
    assert float(out.split("FD_DINOv2: ")[1]) == expected
    code, _, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--num_images", 12, ref,
                            sample)
    assert code == 0 and warnings(err) == []


def test_more_images_use_the_first_num_images(capsys, weights, ref, tmp_path):
    pixels = images(15, 1)
    np.savez(tmp_path / "sample.npz", pixels)
    np.savez(tmp_path / "first.npz", pixels[:10])
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    expected = fd_of(capsys, weights, ref, tmp_path / "first.npz")
    assert expected != fd_of(capsys, weights, ref, tmp_path / "sample.npz")
    for sample in (tmp_path / "sample.npz", folder):
        code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4,
                                  "--num_images", 10, ref, sample)
        assert code == 0 and warnings(err) == []
        assert f"using the first 10 of the 15 images of {sample} (--num_images 10)" in out
        assert float(out.split("FD_DINOv2: ")[1]) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- a run's output


def test_run_folder_is_evaluated_through_its_npz(capsys, weights, ref, tmp_path):
    """The run folder holds the npz, its record and a PNG grid of another size: the npz is what counts."""
    npz = write_run(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [f"{NAME}.json", f"{NAME}.npz", f"{NAME}.png"]
    expected = fd_of(capsys, weights, ref, npz)
    code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4,
                              "--num_images", RUN_IMAGES, ref, tmp_path / "run")
    assert code == 0 and warnings(err) == []
    assert f"using the sampling run's output {npz}" in out
    assert float(out.split("FD_DINOv2: ")[1]) == expected


def test_seed_sets_give_each_sets_metrics_and_their_min_and_mean(capsys, weights, ref, tmp_path):
    """Three seed sets of a run: each set's FD_DINOv2 is that of an npz holding only its images, min and mean are
    over those, the reference is computed once, and the npz, the run folder and EDM2's PNG layout agree."""
    write_run(tmp_path / "run")
    sets = {"100-109": RUN[0:10], "110-114,125-129": np.concatenate([RUN[10:15], RUN[25:30]]),
            "115-124": RUN[15:25]}
    separately = []
    for i, subset in enumerate(sets.values()):
        np.savez(tmp_path / f"set{i}.npz", subset)
        separately.append(fd_of(capsys, weights, ref, tmp_path / f"set{i}.npz"))
    assert len(set(separately)) == 3
    edm2 = tmp_path / "edm2_out"  # generate_images.py --subdirs: out/000000/000123.png
    (edm2 / "000000").mkdir(parents=True)
    for i in reversed(range(RUN_IMAGES)):
        Image.fromarray(RUN[i]).save(edm2 / "000000" / f"{SEED + i:06d}.png")

    reports = []
    for sample in (tmp_path / "run", tmp_path / "run" / f"{NAME}.npz", edm2):
        out_json = tmp_path / "metrics.json"
        code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4,
                                  "--num_images", 10, "--seeds", *sets, "--json", out_json, ref, sample)
        assert code == 0 and warnings(err) == []
        assert out.count("computing reference DINOv2 features...") == 1
        assert out.count("computing sample DINOv2 features...") == 3
        report = json.loads(out_json.read_text())
        assert [(s["seeds"], s["images"]) for s in report["seed_sets"]] == [(text, 10) for text in sets]
        np.testing.assert_allclose([s["fd_dinov2"] for s in report["seed_sets"]], separately, rtol=1e-9)
        assert report["min"]["fd_dinov2"] == pytest.approx(min(separately), rel=1e-9)
        assert report["mean"]["fd_dinov2"] == pytest.approx(np.mean(separately), rel=1e-9)
        assert sorted(report) == ["mean", "min", "seed_sets"]
        lines = out.splitlines()
        summary = lines.index("over 3 seed sets:")
        assert lines[summary + 1] == (f"  FD_DINOv2: min {report['min']['fd_dinov2']}, "
                                      f"mean {report['mean']['fd_dinov2']}")
        assert "seed set 110-114,125-129 (10 images):" in lines
        reports.append(report)
    assert reports[0] == reports[1]
    np.testing.assert_allclose([s["fd_dinov2"] for s in reports[2]["seed_sets"]], separately, rtol=1e-6)


def test_seed_sets_larger_or_smaller_than_num_images(capsys, weights, ref, tmp_path):
    """A set with more images than --num_images uses its first ones (by seed), one with fewer is evaluated after a
    one-line warning that also counts its seeds without an image."""
    write_run(tmp_path / "run")
    np.savez(tmp_path / "first.npz", RUN[:10])
    expected = fd_of(capsys, weights, ref, tmp_path / "first.npz")
    code, out, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", weights, "--batch_size", 4,
                              "--num_images", 10, ref, tmp_path / "run", "--seeds", "100-111", "112-119,500-509")
    assert code == 0
    assert "seed set 100-111: using its first 10 of 12 images (--num_images 10)" in out
    assert warnings(err) == [
        f"warning: {tmp_path / 'run' / NAME}.npz for seed set 112-119,500-509 has 8 images, not the 10 expected "
        "(--num_images; 10 of the set's seeds have no image); the metrics depend on the number of images, so these "
        "are not comparable with numbers from 10 images"]
    assert out.split("seed set 100-111 (10 images):\n  FD_DINOv2: ")[1].split("\n")[0] == str(expected)
    assert "seed set 112-119,500-509 (8 images):" in out


# ---------------------------------------------------------------- bad input


def test_run_errors_are_one_line_and_write_nothing(capsys, weights, ref, tmp_path):
    run = tmp_path / "run"
    npz = write_run(run)
    plain = tmp_path / "plain.npz"
    np.savez(plain, RUN)
    named = tmp_path / "named"
    named.mkdir()
    for name in ("000001.png", "seed000002.png", "cat.png"):
        Image.fromarray(RUN[0]).save(named / name)
    twice = tmp_path / "twice"
    (twice / "a").mkdir(parents=True)
    for name in ("a/000003.png", "seed3.png"):
        Image.fromarray(RUN[0]).save(twice / name)
    two_runs = tmp_path / "cascade"  # cascade_sample.py: base/ and upsampled/
    write_run(two_runs / "base")
    write_run(two_runs / "upsampled")
    unfinished = tmp_path / "unfinished"
    (unfinished / f"{NAME}.parts").mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / f"{NAME}.npz", RUN[:20])
    (other / f"{NAME}.json").write_text((run / f"{NAME}.json").read_text())  # records 30 images
    capsys.readouterr()
    out_json = tmp_path / "m.json"
    flags = ["--metrics", "fd_dinov2", "--dinov2_weights", weights, "--json", out_json]
    cases = [
        ([ref, run, "--num_images", 0], "--num_images 0: expected a positive number of images or 'all'"),
        ([ref, run, "--num_images", "many"], "--num_images many: expected a positive number of images or 'all'"),
        ([ref, run, "--seeds", "0-9", "abc"], "--seeds abc: expected seeds and inclusive ranges such as 0-49999 or "
         "1,2,5-10 (non-negative integers), got 'abc'"),
        ([ref, run, "--seeds", "100-109", "105-114"], "--seeds: the seed sets 100-109 and 105-114 share seed 105; "
         "the sets must not overlap (each is an independent evaluation)"),
        ([ref, run, "--seeds", "100-109", "500-599"], f"--seeds 500-599: none of the 30 images of {npz} has one of "
         "these seeds (they have seeds 100-129)"),
        ([ref, run, "--seeds", "100-109", "129"], f"{npz} (seeds 129): has 1 image(s); FID statistics needs at "
         "least 2"),
        ([ref, plain, "--seeds", "0-9"], f"{plain}: no record of its images' seeds (plain.json, written by the "
         "sampling scripts, is not beside it); --seeds needs a sampling run's npz with its record, or image files "
         "named by seed as EDM/EDM2's generate scripts write them (000123.png) or seed000123.png"),
        ([ref, named, "--seeds", "1-2"], f"{named / 'cat.png'}: no seed in its name; --seeds needs image files named "
         "by seed"),
        ([ref, twice, "--seeds", "3"], f"{twice / 'a' / '000003.png'} and {twice / 'seed3.png'} both have seed 3; "
         "--seeds needs one image per seed"),
        ([ref, two_runs], f"{two_runs}: holds 2 sampling outputs ({two_runs / 'base' / NAME}.npz, "
         f"{two_runs / 'upsampled' / NAME}.npz); pass the npz to evaluate"),
        ([ref, unfinished], f"{unfinished}: the sampling run is unfinished ({unfinished / NAME}.parts holds only some "
         "batches); rerun its sampling command to finish it"),
        ([ref, other, "--seeds", "100-109"], f"{other / NAME}.json: records --num_samples 30, but "
         f"{other / NAME}.npz holds 20 images"),
        (["--ref_stats_out", tmp_path / "r.pkl", ref, "--seeds", "0-9"], "--seeds chooses sample images; "
         "--ref_stats_out uses every image of the reference"),
        ([named, run, "--image_size", 16], f"{npz}: --image_size applies to image folders only"),
    ]
    for argv, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        code, out, err = run_main(capsys, *flags, *argv)
        assert code == 2 and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith(f"evaluator.py: error: {message}"), (argv, err)
        assert "computing" not in out, argv  # refused before any feature pass
        assert sorted(p.name for p in tmp_path.iterdir()) == before, argv


def test_seeds_that_took_the_batches_get_a_hint(capsys, ref, tmp_path):
    with pytest.raises(SystemExit) as info:
        evaluator.main(["--seeds", "0-9", "10-19", str(ref), str(tmp_path)])
    assert info.value.code == 2
    assert ("error: a reference batch is required (--seeds takes every list that follows it: put the batches before "
            "--seeds, or end its lists with another flag)") in capsys.readouterr().err


# ---------------------------------------------------------------- the ADM suite over seed sets


@pytest.mark.slow  # TensorFlow start-up, the stand-in Inception graph, 2048-d eigenproblems: about 30 s here
def test_adm_suite_over_seed_sets_computes_the_reference_once(capsys, tmp_path):
    """IS, FID, precision and recall of each seed set equal those of its images computed directly, with one
    reference pass (--no_cache: nothing cached to fall back on) for all sets. (sFID takes FID's code path with
    other features; left out to halve the time.)"""
    standin = inception_standin.write_graph(tmp_path / "standin.pb")
    ref_images = inception_standin.smooth_images(16, size=20, seed=1)
    np.savez(tmp_path / "ref.npz", ref_images)
    write_run(tmp_path / "run")
    code, out, err = run_main(capsys, "--inception_path", standin, "--no_cache", "--batch_size", 4, "--num_images",
                              10, "--metrics", "is,fid,pr", "--json", tmp_path / "m.json", tmp_path / "ref.npz",
                              tmp_path / "run", "--seeds", "100-109", "120-129")
    assert code == 0, err
    assert out.count("computing reference batch activations...") == 1
    assert out.count("computing sample batch activations...") == 2
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["distance_precision"] == "float16"

    graph = inception_file.load_graph(str(standin))
    network = InceptionNetwork(graph.graph_def, graph.source)

    def features(pixels, softmax):
        return network.features((pixels[i:i + 4] for i in range(0, len(pixels), 4)), len(pixels), softmax=softmax,
                                desc="direct")

    ref = features(ref_images, False)
    separately = []
    for subset in (RUN[0:10], RUN[20:30]):
        sample = features(subset, True)
        fid = metrics.frechet_distance(*metrics.feature_statistics(sample.pool), *metrics.feature_statistics(ref.pool))
        precision, recall = metrics.precision_recall(ref.pool, sample.pool, Float16FirstDistances())
        separately.append(dict(inception_score=metrics.inception_score(sample.softmax), fid=fid, precision=precision,
                               recall=recall))
    for got, expected in zip(report["seed_sets"], separately):
        assert sorted(got) == sorted(["seeds", "images", *expected])
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    for key in separately[0]:
        values = [expected[key] for expected in separately]
        assert report["min"][key] == pytest.approx(min(values), rel=1e-6)
        assert report["mean"][key] == pytest.approx(float(np.mean(values)), rel=1e-6)
