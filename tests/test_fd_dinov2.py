"""FD_DINOv2 and EDM2/EDM statistics files in the evaluator: the DINOv2 backbone against the official code's
features (tests/fixtures/dinov2, written by tests/make_dinov2_fixture.py), its weights (given, cached,
downloaded), the .pkl/.npz statistics formats, the command line and its one-line errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import inception_standin
from evaluations import dinov2, dinov2_weights, evaluator, metrics, stats_files
from evaluations.dinov2 import VITL14, DinoV2Features, preprocess, state_dict_layout
from evaluations.errors import EvaluatorError

FIXTURE = Path(__file__).parent / "fixtures" / "dinov2"


pytestmark = pytest.mark.usefixtures("cache_dir")  # a fresh default cache dir per test (conftest)


@pytest.fixture(scope="module")
def tiny(tiny_dinov2):
    """(config, state dict, the fixture's arrays) of the official code's small random backbone."""
    return tiny_dinov2


@pytest.fixture
def tiny_cli(tiny, tmp_path, monkeypatch):
    """The evaluator's FD_DINOv2 on the tiny backbone: its weights file (passed as --dinov2_weights)."""
    config, state, _ = tiny
    monkeypatch.setattr(dinov2, "VITL14", config)
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path


def run_main(capsys, *argv):
    code = evaluator.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def images(count: int, seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def one_line_error(code, err, message):
    assert code == 2
    assert err.splitlines() == [f"evaluator.py: error: {message}"]


# ---------------------------------------------------------------- the backbone


@pytest.mark.parametrize("mode", ["torch", "pil"])
def test_backbone_reproduces_the_official_features(tiny, mode):
    config, state, arrays = tiny
    network = DinoV2Features(config, state, mode, device="cpu")
    for batch in "ab":
        expected = arrays[f"features_{batch}_{mode}"]
        ours = network(arrays[f"images_{batch}"])
        assert ours.shape == expected.shape == (len(arrays[f"images_{batch}"]), 64)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_resize_modes_differ_and_normalize_as_edm2():
    white = np.full((2, 30, 20, 3), 255, np.uint8)
    for mode in ("torch", "pil"):
        x = preprocess(white, mode)
        assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
        expected = (1 - torch.tensor(dinov2.IMAGENET_MEAN)) / torch.tensor(dinov2.IMAGENET_STD)
        torch.testing.assert_close(x[0, :, 100, 100], expected)
    noisy = images(1, seed=0)
    assert (preprocess(noisy, "torch") - preprocess(noisy, "pil")).abs().max() > 1e-3


def test_vitl14_has_the_official_state_dict_layout():
    official = json.loads((FIXTURE / "vitl14_layout.json").read_text())
    ours = state_dict_layout(VITL14)
    assert list(ours) == list(official)
    assert {name: list(shape) for name, shape in ours.items()} == official
    assert dinov2.parameter_count(VITL14) == 304_368_640
    assert ours["cls_token"] == (1, 1, 1024) and ours["pos_embed"] == (1, 37 * 37 + 1, 1024)


# ---------------------------------------------------------------- weights


def test_weights_downloaded_once_into_the_cache(tiny, tmp_path, capsys):
    config, state, _ = tiny
    source = tmp_path / "served.pth"
    torch.save(state, source)
    cache = tmp_path / "cache"
    loaded = dinov2_weights.load_weights(None, source.as_uri(), str(cache), config)
    assert sorted(loaded) == sorted(state)
    assert (cache / dinov2_weights.FILE_NAME).read_bytes() == source.read_bytes()
    assert "downloading the DINOv2" in capsys.readouterr().out
    source.unlink()  # the cached copy is used from now on
    again = dinov2_weights.load_weights(None, source.as_uri(), str(cache), config)
    torch.testing.assert_close(again["pos_embed"], state["pos_embed"])
    assert "downloading" not in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == [dinov2_weights.FILE_NAME]


def test_corrupt_cached_weights_are_downloaded_again(tiny, tmp_path, capsys):
    config, state, _ = tiny
    source = tmp_path / "served.pth"
    torch.save(state, source)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / dinov2_weights.FILE_NAME).write_bytes(b"truncated")
    dinov2_weights.load_weights(None, source.as_uri(), str(cache), config)
    err = capsys.readouterr().err
    assert f"warning: {cache / dinov2_weights.FILE_NAME}: cannot read it as a PyTorch state dict (" in err
    assert "); downloading it again" in err
    assert (cache / dinov2_weights.FILE_NAME).read_bytes() == source.read_bytes()


def test_offline_download_is_a_one_line_error(tiny_cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dinov2_weights, "DINOV2_URL", "http://127.0.0.1:9/dinov2_vitl14_pretrain.pth")
    np.savez(tmp_path / "ref.npz", images(4, 0))
    np.savez(tmp_path / "sample.npz", images(4, 1))
    code, _, err = run_main(capsys, "--metrics", "fd_dinov2", tmp_path / "ref.npz", tmp_path / "sample.npz")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("evaluator.py: error: cannot download the DINOv2 weights from http://127.0.0.1:9/")
    assert err.rstrip().endswith("fetch them by hand and pass --dinov2_weights PATH")
    assert not any(Path(os.environ["GUIDED_DIFFUSION_CACHE"]).glob("*.tmp"))


def test_weights_that_are_not_the_backbone_are_refused(tiny, tmp_path):
    config, state, _ = tiny
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "norm.bias"}, "not a state dict of DINOv2 tiny: "
                    "missing norm.bias (1)"),
        "shape": ({**state, "cls_token": torch.zeros(1, 1, 32)}, "not a state dict of DINOv2 tiny: cls_token has "
                  "shape (1, 1, 32), expected (1, 1, 64)"),
        "nan": ({**state, "norm.bias": torch.full((64,), float("nan"))}, "norm.bias is not finite floating-point"),
        "list": ([1, 2], "not a state dict of DINOv2 tiny (expected a dict of tensors, got list)"),
    }
    for name, (value, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(value, path)
        with pytest.raises(EvaluatorError) as info:
            dinov2_weights.load_weights(str(path), config=config)
        assert str(info.value).startswith(f"--dinov2_weights {path}: ") and message in str(info.value), name
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(EvaluatorError, match="cannot read it as a PyTorch state dict"):
        dinov2_weights.load_weights(str(tmp_path / "junk.pth"), config=config)


# ---------------------------------------------------------------- statistics files


def test_edm2_pickle_round_trip_and_plain_format(tmp_path):
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    path = tmp_path / "ref.pkl"
    stats_files.write_edm2_pkl(str(path), {"fd_dinov2": (mu, sigma)}, 7)
    with open(path, "rb") as file:
        raw = pickle.load(file)
    assert raw.keys() == {"num_images", "fd_dinov2"} and raw["num_images"] == 7
    assert raw["fd_dinov2"]["sigma"].dtype == np.float64
    read = stats_files.read_edm2_pkl(str(path))
    np.testing.assert_array_equal(read["fd_dinov2"][1], sigma)
    for protocol in (0, 2, 5):  # EDM2's files: the writer's default protocol, whatever its Python
        path.write_bytes(pickle.dumps({"fid": {"mu": mu.astype(np.float32), "sigma": sigma}}, protocol=protocol))
        np.testing.assert_array_equal(stats_files.read_edm2_pkl(str(path))["fid"][0], mu)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("content, message", [
    ("payload", "not an EDM2 statistics pickle (it refers to posix.mkdir; only dicts of numpy arrays are allowed)"),
    ([1, 2], "not an EDM2 statistics pickle (holds a list, not a dict)"),
    ({"fid": {"mu": np.zeros(2)}}, "'fid' must be a dict with 'mu' and 'sigma', found ['mu']"),
    ({"kid": 1}, "not an EDM2 statistics pickle (unknown entries: kid)"),
    ({"num_images": 3}, "holds no statistics (neither 'fid' nor 'fd_dinov2')"),
    ({"fid": {"mu": np.zeros(2), "sigma": -np.eye(2)}}, "fid sigma is not a covariance matrix: negative variance"),
    ({"fid": {"mu": np.zeros(2), "sigma": np.array([["a", "b"], ["c", "d"]])}}, "fid sigma must be a numeric"),
    (b"\x80\x05junk", "not an EDM2 statistics pickle"),
])
def test_wrong_pickles_are_refused_without_running_them(tmp_path, content, message):
    path = tmp_path / "ref.pkl"
    marker = tmp_path / "ran"
    if content == "payload":
        content = {"fid": _Payload(marker)}
    path.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content))
    with pytest.raises(EvaluatorError) as info:
        stats_files.read_edm2_pkl(str(path))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert not marker.exists()


def test_edm_npz_statistics(tmp_path):
    path = tmp_path / "edm.npz"
    np.savez(path, mu=np.ones(4, np.float32), sigma=np.eye(4))
    (mu, sigma), = stats_files.read_edm_npz(str(path)).values()
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.savez(path, mu=np.ones(4))
    with pytest.raises(EvaluatorError, match="an EDM statistics npz needs mu and sigma"):
        stats_files.read_edm_npz(str(path))


# ---------------------------------------------------------------- the command line


def test_cli_builds_an_edm2_pickle_and_evaluates_fd_dinov2(tiny, tiny_cli, tmp_path, capsys):
    config, state, _ = tiny
    ref_images, sample_images = images(9, 0), images(7, 1, size=20)
    np.savez(tmp_path / "ref.npz", ref_images)
    np.savez_compressed(tmp_path / "sample.npz", sample_images)
    out = tmp_path / "refs" / "ref.pkl"
    code, stdout, err = run_main(capsys, "--ref_stats_out", out, "--metrics", "fd_dinov2", "--dinov2_weights",
                                 tiny_cli, "--batch_size", 4, tmp_path / "ref.npz")
    assert code == 0, err
    assert f"wrote {out}: fd_dinov2 statistics of 9 images" in stdout
    with open(out, "rb") as file:
        raw = pickle.load(file)
    assert raw.keys() == {"num_images", "fd_dinov2"} and raw["num_images"] == 9
    network = DinoV2Features(config, state, "torch", device="cpu")
    ref_stats = metrics.feature_statistics(network(ref_images))
    np.testing.assert_allclose(raw["fd_dinov2"]["mu"], ref_stats[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(raw["fd_dinov2"]["sigma"], ref_stats[1], rtol=1e-6, atol=1e-9)

    expected = metrics.frechet_distance(*metrics.feature_statistics(network(sample_images)), *ref_stats)
    results = {}
    for ref in (out, tmp_path / "ref.npz"):  # the pickle, or the images themselves
        code, stdout, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_weights", tiny_cli, ref,
                                     tmp_path / "sample.npz", "--json", tmp_path / "m.json")
        assert code == 0, err
        assert [line.split(": ")[0] for line in stdout.splitlines() if ": " in line] == ["FD_DINOv2"]
        results[ref] = json.loads((tmp_path / "m.json").read_text())
        assert results[ref].keys() == {"fd_dinov2"}
        assert results[ref]["fd_dinov2"] == pytest.approx(expected, rel=1e-6)
    code, stdout, err = run_main(capsys, "--metrics", "fd_dinov2", "--dinov2_resize", "pil", "--dinov2_weights",
                                 tiny_cli, out, tmp_path / "sample.npz")
    pil = float(stdout.split("FD_DINOv2: ")[1])
    assert code == 0 and pil != pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # TensorFlow start-up and the stand-in Inception graph: tens of seconds here
def test_cli_fid_and_fd_dinov2_in_one_pickle(tiny_cli, tmp_path, capsys):
    standin = inception_standin.write_graph(tmp_path / "standin.pb")
    np.savez(tmp_path / "ref.npz", inception_standin.smooth_images(12, size=32, seed=1))
    np.savez(tmp_path / "sample.npz", inception_standin.smooth_images(10, size=32, seed=2, shift=0.3))
    flags = ["--inception_path", standin, "--dinov2_weights", tiny_cli]
    out = tmp_path / "ref.pkl"
    code, _, err = run_main(capsys, "--ref_stats_out", out, *flags, tmp_path / "ref.npz")  # default: fid,fd_dinov2
    assert code == 0, err
    stats = stats_files.read_edm2_pkl(str(out))
    assert list(stats) == ["fid", "fd_dinov2"] and stats["fid"][0].shape == (2048,)
    direct = {}
    for ref in (out, tmp_path / "ref.npz"):
        code, stdout, err = run_main(capsys, "--metrics", "is,fid,fd_dinov2", *flags, ref, tmp_path / "sample.npz")
        assert code == 0, err
        labels = [line.split(": ")[0] for line in stdout.splitlines() if ": " in line and "Inception Score" in line
                  or line.startswith(("FID:", "FD_DINOv2:"))]
        assert labels == ["Inception Score", "FID", "FD_DINOv2"]
        direct[ref] = {line.split(": ")[0]: float(line.split(": ")[1]) for line in stdout.splitlines()
                       if line.startswith(("Inception Score:", "FID:", "FD_DINOv2:"))}
    for label in ("Inception Score", "FID", "FD_DINOv2"):
        assert direct[out][label] == pytest.approx(direct[tmp_path / "ref.npz"][label], rel=1e-6)
    # EDM's .npz statistics (mu, sigma) serve FID too.
    np.savez(tmp_path / "edm.npz", mu=stats["fid"][0], sigma=stats["fid"][1])
    code, stdout, err = run_main(capsys, "--metrics", "fid", *flags, tmp_path / "edm.npz", tmp_path / "sample.npz")
    assert code == 0, err
    assert float(stdout.split("FID: ")[1]) == pytest.approx(direct[out]["FID"], rel=1e-9)


def test_cli_errors_are_one_line_and_write_nothing(tiny_cli, tmp_path, capsys):
    np.savez(tmp_path / "ref.npz", images(5, 0))
    np.savez(tmp_path / "sample.npz", images(5, 1))
    ref, sample = tmp_path / "ref.npz", tmp_path / "sample.npz"
    stats_files.write_edm2_pkl(str(tmp_path / "small.pkl"), {"fd_dinov2": (np.zeros(3), np.eye(3))}, 5)
    pickled_list = tmp_path / "list.pkl"
    pickled_list.write_bytes(pickle.dumps([1]))
    np.savez(tmp_path / "float.npz", images(5, 2).astype(np.float32) / 255)
    np.savez(tmp_path / "empty.npz", np.zeros((0, 24, 24, 3), np.uint8))
    np.savez(tmp_path / "nchw.npz", images(5, 2).transpose(0, 3, 1, 2))
    weights = ["--dinov2_weights", tiny_cli]
    cases = [
        (["--ref_stats_out", tmp_path / "out.txt", ref], f"--ref_stats_out {tmp_path / 'out.txt'}: expected a .npz "
         "(ADM reference batch) or .pkl (EDM2 statistics) file name"),
        (["--ref_stats_out", tmp_path / "out.pkl", "--metrics", "fid,pr", ref], f"--ref_stats_out "
         f"{tmp_path / 'out.pkl'}: an EDM2 .pkl holds fid and fd_dinov2 statistics only, not pr; use a .npz for "
         "the ADM suite"),
        (["--ref_stats_out", tmp_path / "out.npz", "--metrics", "fd_dinov2", ref], f"--ref_stats_out "
         f"{tmp_path / 'out.npz'}: FD_DINOv2 statistics are written to an EDM2 .pkl, not an ADM reference .npz"),
        ([tmp_path / "small.pkl", sample], f"{tmp_path / 'small.pkl'}: holds only fd_dinov2 statistics; --metrics "
         "fid,sfid,pr needs a reference with images (an ADM .npz batch or an image folder)"),
        (["--metrics", "fid", tmp_path / "small.pkl", sample], f"{tmp_path / 'small.pkl'}: holds only fd_dinov2 "
         "statistics; --metrics fid needs a reference with those statistics or images (an ADM .npz batch or an "
         "image folder)"),
        (["--metrics", "fd_dinov2", *weights, tmp_path / "small.pkl", sample], f"{tmp_path / 'small.pkl'}: "
         "fd_dinov2 mu has 3 dimensions, the DINOv2 features have 64"),
        (["--metrics", "fd_dinov2", *weights, pickled_list, sample], f"{pickled_list}: not an EDM2 statistics "
         "pickle (holds a list, not a dict)"),
        (["--metrics", "fd_dinov2", *weights, ref, tmp_path / "float.npz"], f"{tmp_path / 'float.npz'}: arr_0 has "
         "dtype float32; the evaluator takes uint8 images"),
        (["--metrics", "fd_dinov2", *weights, ref, tmp_path / "empty.npz"], f"{tmp_path / 'empty.npz'}: has 0 "
         "image(s); FID statistics needs at least 2"),
        (["--metrics", "fd_dinov2", *weights, ref, tmp_path / "nchw.npz"], f"{tmp_path / 'nchw.npz'}: arr_0 has "
         "shape (5, 3, 24, 24); expected NHWC images with 3 channels"),
        (["--ref_stats_out", tmp_path / "out.pkl", "--metrics", "fd_dinov2", *weights, tmp_path / "float.npz"],
         f"{tmp_path / 'float.npz'}: arr_0 has dtype float32"),
    ]
    for argv, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        code, _, err = run_main(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith(f"evaluator.py: error: {message}"), (argv, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, argv


def test_unknown_metric_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        evaluator.main(["--metrics", "fid,kid", "ref.npz", "sample.npz"])
    assert info.value.code == 2
    assert "unknown metric kid; choose from is, fid, sfid, pr, fd_dinov2" in capsys.readouterr().err
