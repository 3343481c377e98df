"""The sampling scripts end to end on tiny checkpoints trained in the test: in this process (their main) and under
mpiexec, as users run them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image

from launch import TINY_CLASSIFIER, classifier_probability, command, read_samples, run_main, run_script, script_env, wait_for

FAST = ["--timestep_respacing", "8", "--use_ddim", "True"]
MPIEXEC = pytest.param("mpiexec", marks=pytest.mark.mpi)


@pytest.fixture(scope="module")
def base_samples(trained, tmp_path_factory):
    """Six class-conditional samples made in this process, batch size 4."""
    log_dir = tmp_path_factory.mktemp("base")
    run_script("image_sample.py", ["--model_path", trained["model"], "--num_samples", 6, "--batch_size", 4,
                                   "--log_dir", log_dir, "--seed", 3, *FAST], launcher="main")
    return str(log_dir / "samples_6x16x16x3.npz")


def test_image_sample_outputs(base_samples):
    data = read_samples(base_samples)
    assert data["arr_0"].shape == (6, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].shape == (6,) and data["arr_1"].dtype == np.int64 and set(data["arr_1"]) <= set(range(4))
    grid = Image.open(base_samples.replace(".npz", ".png"))
    assert grid.size == (6 * 18 + 2, 18 + 2)  # one row of six 16x16 images with 2-pixel gaps
    assert not os.path.exists(base_samples.replace(".npz", ".parts"))


@pytest.mark.mpi
def test_same_images_for_any_batch_size_and_process_count(trained, base_samples, tmp_path):
    """Also: without --log_dir the samples go to $OPENAI_LOGDIR, as in the original."""
    run_script("image_sample.py", ["--model_path", trained["model"], "--num_samples", 6, "--batch_size", 1,
                                   "--seed", 3, *FAST], launcher="mpiexec", env={"OPENAI_LOGDIR": str(tmp_path)})
    again = read_samples(tmp_path / "samples_6x16x16x3.npz")
    first = read_samples(base_samples)
    assert np.array_equal(first["arr_1"], again["arr_1"])
    assert np.abs(first["arr_0"].astype(int) - again["arr_0"]).max() <= 1


def test_rerun_resumes_a_killed_run(trained, base_samples, tmp_path):
    args = ["--model_path", trained["model"], "--num_samples", 6, "--batch_size", 1, "--log_dir", tmp_path,
            "--seed", 3, *FAST]
    proc = subprocess.Popen(command("image_sample.py", [str(a) for a in args]), env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "samples_6x16x16x3.parts"
    wait_for(lambda: parts.exists() and len(list(parts.glob("part_*.npz"))) >= 2, proc, "two finished part files")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "samples_6x16x16x3.npz").exists()
    resumed = run_script("image_sample.py", args, launcher="main")
    assert "resuming:" in resumed.stdout
    first, again = read_samples(base_samples), read_samples(tmp_path / "samples_6x16x16x3.npz")
    assert np.array_equal(first["arr_1"], again["arr_1"])
    assert np.abs(first["arr_0"].astype(int) - again["arr_0"]).max() <= 1


@pytest.mark.slow  # 45 s: a statistical check (test_samplers checks classifier guidance quickly)
@pytest.mark.parametrize("launcher", ["main", MPIEXEC])
def test_classifier_guidance_raises_the_requested_class(trained, tmp_path, launcher):
    probabilities = {}
    for scale in (0, 20):
        folder = tmp_path / f"scale{scale}"
        run_script("classifier_sample.py", [
            "--model_path", trained["model"], "--classifier_path", trained["classifier"], "--classifier_scale",
            scale, "--num_samples", 8, "--batch_size", 4, "--classes", "0-3", "--log_dir", folder, *FAST,
        ], launcher=launcher)
        samples = read_samples(folder / "samples_8x16x16x3.npz")
        assert list(samples["arr_1"]) == [0, 1, 2, 3, 0, 1, 2, 3]
        probabilities[scale] = classifier_probability(trained["classifier"], samples)
    assert probabilities[20] > probabilities[0] + 0.05, probabilities


@pytest.mark.parametrize("launcher", ["main", MPIEXEC])
def test_super_res_sample_passes_labels_on(trained, base_samples, tmp_path, launcher):
    run_script("super_res_sample.py", ["--model_path", trained["sr"], "--base_samples", base_samples,
                                       "--num_samples", 6, "--batch_size", 2, "--log_dir", tmp_path, *FAST],
               launcher=launcher)
    out = read_samples(tmp_path / "samples_6x64x64x3.npz")
    assert out["arr_0"].shape == (6, 64, 64, 3) and out["arr_0"].dtype == np.uint8
    assert np.array_equal(out["arr_1"], read_samples(base_samples)["arr_1"])
    assert (tmp_path / "samples_6x64x64x3.png").exists()


@pytest.mark.parametrize("launcher", ["main", MPIEXEC])
def test_cascade_sample(trained, tmp_path, launcher):
    run_script("cascade_sample.py", [
        "--base_model_path", trained["model"], "--base_flags", "--timestep_respacing 6",
        "--classifier_path", trained["classifier"], "--classifier_scale", 2,
        "--sr_model_path", trained["sr"], "--sr_flags", "--timestep_respacing 4", "--use_ddim", "True",
        "--num_samples", 3, "--batch_size", 2, "--log_dir", tmp_path,
    ], launcher=launcher)
    base = read_samples(tmp_path / "base" / "samples_3x16x16x3.npz")
    upsampled = read_samples(tmp_path / "upsampled" / "samples_3x64x64x3.npz")
    assert upsampled["arr_0"].shape == (3, 64, 64, 3)
    assert np.array_equal(base["arr_1"], upsampled["arr_1"])
    assert (tmp_path / "base" / "samples_3x16x16x3.png").exists()
    assert (tmp_path / "upsampled" / "samples_3x64x64x3.png").exists()


@pytest.mark.parametrize("launcher", ["main", MPIEXEC])
def test_image_nll(trained, tmp_path, launcher):
    proc = run_script("image_nll.py", ["--model_path", trained["model"], "--data_dir", trained["images"],
                                       "--num_samples", 4, "--batch_size", 2, "--timestep_respacing", 20,
                                       "--log_dir", tmp_path], launcher=launcher)
    assert "| vb_q3" in proc.stdout and "done 4 images: bpd=" in proc.stdout
    bpd = np.load(tmp_path / "bpd.npz")["arr_0"]
    assert bpd.shape == (4,) and np.isfinite(bpd).all() and (bpd > 0).all()
    vb = np.load(tmp_path / "vb_terms.npz")["arr_0"]
    assert vb.shape == (20,)


def test_bad_input(trained, base_samples, tmp_path):
    def fails(script, args, message):
        code, stderr = run_main(script, [*args, "--log_dir", tmp_path / "bad"])
        assert code == 2 and message in stderr and "\n" not in stderr, stderr

    fails("image_sample.py", ["--model_path", trained["model"], "--num_channels", 64],
          "use --num_channels 32 (now 64)")
    fails("image_sample.py", ["--model_path", str(tmp_path / "missing.pt")], "--model_path not found")
    wrong_size = ["--model_path", trained["sr"], "--base_samples", base_samples, "--small_size", 32,
                  "--large_size", 64]
    fails("super_res_sample.py", wrong_size, "holds 16x16 images but the upsampler takes --small_size 32")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, read_samples(base_samples)["arr_0"])
    fails("super_res_sample.py", ["--model_path", trained["sr"], "--base_samples", unlabelled],
          "has no labels (arr_1) but the upsampler is class-conditional")
    other = tmp_path / "other_classifier"
    other.mkdir()
    shutil.copy(trained["classifier"], other / "model.pt")
    (other / "args.json").write_text('{"image_size": 32, "num_classes": 4}')
    fails("classifier_sample.py", ["--model_path", trained["model"], "--classifier_path", str(other / "model.pt"),
                                   *TINY_CLASSIFIER[2:]],
          "was trained with image_size 32 but the model uses 16")
    fails("classifier_sample.py", ["--model_path", trained["model"], "--classifier_path", trained["classifier"],
                                   "--classes", "7"], "--classes '7': labels must lie in 0..3")
    fails("classifier_sample.py", ["--model_path", trained["model"], "--classifier_path", trained["classifier"],
                                   "--classes", "5-3"], "--classes '5-3': a range must go upward, e.g. 3-5, not 5-3")
