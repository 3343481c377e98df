"""The training scripts end to end, launched as users launch them: mpiexec, torchrun and plain python."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from launch import (TINY_CLASSIFIER, TINY_MODEL, call_main, command, make_image_folder, run_main, run_script, script_env,
                    wait_for)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=16)


def _train_args(images, log_dir, *extra):
    return ["--data_dir", images, "--log_dir", log_dir, "--batch_size", "4", "--log_interval", "2",
            "--save_interval", "2", *TINY_MODEL, *extra]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.mpi
def test_image_train_under_mpiexec(images, tmp_path):
    """Logs go to $OPENAI_LOGDIR when --log_dir is not given, as in the original."""
    log_dir = str(tmp_path / "run")
    args = _train_args(images, "", "--max_steps", "4")
    proc = run_script("image_train.py", args, launcher="mpiexec",
                      env={"OPENAI_LOG_FORMAT_MPI": "log", "OPENAI_LOGDIR": log_dir})
    assert proc.stdout.splitlines()[0] == f"Logging to {log_dir}"
    files = sorted(os.listdir(log_dir))
    assert files == sorted(["args.json", "log.txt", "log-rank001.txt", "progress.csv",
                            "model000002.pt", "ema_0.9999_000002.pt", "opt000002.pt",
                            "model000004.pt", "ema_0.9999_000004.pt", "opt000004.pt"])
    # Rank 1 trained too (its own log has loss tables), and DDP kept the replicas identical.
    rank1 = open(os.path.join(log_dir, "log-rank001.txt")).read()
    assert "| loss " in rank1
    assert "parameters identical on all 2 ranks at step 4" in proc.stdout
    csv = open(os.path.join(log_dir, "progress.csv")).read().splitlines()
    header = csv[0].split(",")
    assert {"loss", "mse", "vb", "loss_q0", "grad_norm", "param_norm", "images_per_sec", "samples"} <= set(header)
    assert csv[-1].split(",")[header.index("samples")] == "32"  # 4 steps x 4 images x 2 ranks
    args = json.load(open(os.path.join(log_dir, "args.json")))
    assert args["num_channels"] == 32 and args["class_cond"] is True


@pytest.mark.mpi
def test_classifier_train_under_mpiexec(images, tmp_path):
    log_dir = str(tmp_path / "clf")
    args = ["--data_dir", images, "--val_data_dir", images, "--log_dir", log_dir, "--batch_size", "4",
            "--iterations", "4", "--save_interval", "2", "--log_interval", "2", "--eval_interval", "2",
            *TINY_CLASSIFIER]
    proc = run_script("classifier_train.py", args, launcher="mpiexec")
    assert sorted(f for f in os.listdir(log_dir) if f.endswith(".pt")) == [
        "model000002.pt", "model000004.pt", "opt000002.pt", "opt000004.pt"]
    assert "parameters identical on all 2 ranks at step 4" in proc.stdout
    header = open(os.path.join(log_dir, "progress.csv")).readline().strip().split(",")
    assert {"train_loss", "train_acc@1", "train_acc@5", "train_loss_q3", "val_loss", "val_acc@1"} <= set(header)


@pytest.mark.mpi
def test_torchrun_and_super_res_train(images, tmp_path):
    log_dir = str(tmp_path / "sr")
    args = ["--data_dir", images, "--log_dir", log_dir, "--batch_size", "2", "--max_steps", "2",
            "--save_interval", "2", "--log_interval", "1", "--large_size", "64", "--small_size", "16",
            "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8"]
    proc = run_script("super_res_train.py", args, launcher="torchrun")
    assert "parameters identical on all 2 ranks at step 2" in proc.stdout
    state = _weights(os.path.join(log_dir, "model000002.pt"))
    assert state["input_blocks.0.0.weight"].shape == (32, 6, 3, 3)  # image + upsampled low-res


@pytest.mark.slow
def test_single_process_without_mpi4py(images, tmp_path):
    blocker = tmp_path / "blocker" / "mpi4py"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('mpi4py is not installed')\n")
    log_dir = str(tmp_path / "single")
    run_script("image_train.py", _train_args(images, log_dir, "--max_steps", "2"),
               env={"PYTHONPATH": str(blocker.parent)})
    assert os.path.exists(os.path.join(log_dir, "model000002.pt"))


def _complete(log_dir, step):
    names = [f"model{step:06d}.pt", f"ema_0.9999_{step:06d}.pt", f"opt{step:06d}.pt"]
    return all(os.path.exists(os.path.join(log_dir, n)) for n in names)


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_auto_resume_is_exact(images, tmp_path):
    extra = ["--max_steps", "8", "--dropout", "0.1", "--random_crop", "True",
             "--schedule_sampler", "loss-second-moment", "--ema_rate", "0.99"]
    straight = str(tmp_path / "straight")
    run_script("image_train.py", _train_args(images, straight, *extra))

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(command("image_train.py", _train_args(images, killed, *extra)), env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(os.path.join(killed, "opt000002.pt")), proc, "checkpoint at step 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model000008.pt"))
    resumed = run_script("image_train.py", _train_args(images, killed, *extra, "--resume_checkpoint", "auto"))
    assert "resuming from" in resumed.stdout
    for name in ("model000008.pt", "ema_0.99_000008.pt"):
        _assert_same(_weights(os.path.join(straight, name)), _weights(os.path.join(killed, name)))


def test_resume_from_ema_file_keeps_its_step(images, tmp_path):
    log_dir = str(tmp_path / "ema")
    call_main("image_train.py", _train_args(images, log_dir, "--max_steps", "2"))
    other = str(tmp_path / "from_ema")
    stdout = call_main("image_train.py", _train_args(
        images, other, "--max_steps", "4", "--resume_checkpoint", os.path.join(log_dir, "ema_0.9999_000002.pt")))
    assert "at step 2" in stdout
    assert sorted(f for f in os.listdir(other) if f.startswith("model")) == ["model000004.pt"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch_size", "4", "--microbatch", "3"], "--batch_size 4 is not divisible by --microbatch 3"),
        (["--num_classes", "2"], "holds 4 classes"),
        (["--data_dir", "/nonexistent/folder"], "data_dir not found: /nonexistent/folder"),
    ],
)
def test_bad_training_input(images, tmp_path, extra, message):
    code, stderr = run_main("image_train.py", _train_args(images, str(tmp_path / "bad"), *extra))
    assert code == 2 and message in stderr and "\n" not in stderr  # one line, no traceback


def test_unprefixed_files_with_class_cond(tmp_path):
    folder = tmp_path / "plain"
    make_image_folder(folder, count=4)
    for f in os.listdir(folder):
        os.rename(folder / f, folder / f.replace("_", "-"))
    code, stderr = run_main("image_train.py", _train_args(str(folder), str(tmp_path / "bad")))
    assert code == 2 and "class_cond needs class-prefixed file names" in stderr


def test_resume_with_another_architecture(images, tmp_path):
    log_dir = str(tmp_path / "arch")
    call_main("image_train.py", _train_args(images, log_dir, "--max_steps", "2"))
    args = _train_args(images, str(tmp_path / "other"), "--resume_checkpoint",
                       os.path.join(log_dir, "model000002.pt"))
    args[args.index("--num_channels") + 1] = "64"
    code, stderr = run_main("image_train.py", args)
    assert code == 2 and "use --num_channels 32 (now 64)" in stderr


def _rank_pid(script: str, rank: int, log_dir: str) -> int | None:
    """The process of this test's run (its log folder on the command line) that is MPI rank `rank`; other runs
    of the script on the machine are left alone."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        mine = script.encode() in cmdline and log_dir.encode() + b"\0" in cmdline
        if mine and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.mpi
def test_dead_rank_ends_the_run(images, tmp_path):
    log_dir = str(tmp_path / "dead")
    proc = subprocess.Popen(
        command("image_train.py", _train_args(images, log_dir, "--max_steps", "100000", "--save_interval", "100000"),
                launcher="mpiexec"), env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(os.path.join(log_dir, "progress.csv")), proc, "progress.csv")
        pid = _rank_pid("image_train.py", 1, log_dir)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def numbered_images(tmp_path_factory):
    """24 images of 12 classes named 0..11 (0_000.png ... 11_011.png): a text sort would put 10 before 2."""
    folder = tmp_path_factory.mktemp("numbered")
    make_image_folder(folder, count=24, size=16, classes=12)
    for name in os.listdir(folder):
        os.rename(folder / name, folder / name[1:])  # c3_003.png -> 3_003.png
    return str(folder)


def _without_num_classes(flags):
    i = flags.index("--num_classes")
    return flags[:i] + flags[i + 2:]


def test_num_classes_and_class_names_come_from_the_data(numbered_images, tmp_path):
    """No --num_classes: the model gets the data's 12 classes (not 1000), args.json keeps the label order, and
    sampling rebuilds the same network from it, drawing labels 0..11; --classes needs a labelled model."""
    log_dir = tmp_path / "model"
    call_main("image_train.py", ["--data_dir", numbered_images, "--log_dir", log_dir, "--batch_size", 4,
                                 "--max_steps", 1, "--save_interval", 1, *_without_num_classes(TINY_MODEL)])
    saved = json.loads((log_dir / "args.json").read_text())
    assert saved["num_classes"] == 12 and saved["class_names"] == [str(k) for k in range(12)]
    assert _weights(log_dir / "model000001.pt")["label_emb.weight"].shape[0] == 12
    samples = tmp_path / "samples"
    call_main("image_sample.py", ["--model_path", log_dir / "model000001.pt", "--num_samples", 24, "--batch_size", 24,
                                  "--timestep_respacing", 2, "--log_dir", samples, "--grid", False])
    with np.load(samples / "samples_24x16x16x3.npz") as data:
        labels = data["arr_1"]
    assert labels.min() >= 0 and labels.max() <= 11 and len(set(labels.tolist())) > 5

    plain = tmp_path / "plain"
    call_main("image_train.py", ["--data_dir", numbered_images, "--log_dir", plain, "--batch_size", 4,
                                 "--max_steps", 1, "--save_interval", 1, *_without_num_classes(TINY_MODEL),
                                 "--class_cond", False])
    assert "class_names" not in json.loads((plain / "args.json").read_text())
    code, stderr = run_main("image_sample.py", ["--model_path", plain / "model000001.pt", "--classes", "3",
                                                "--num_samples", 2, "--timestep_respacing", 2,
                                                "--log_dir", tmp_path / "bad"])
    assert code == 2 and stderr == (
        f"image_sample.py: error: --classes 3: the model {plain / 'model000001.pt'} is unconditional (class_cond "
        "False), so it would ignore the labels; use a class-conditional model or guide this one with a classifier "
        "(classifier_sample.py --classifier_path)")


def test_classifier_num_classes_from_the_data(numbered_images, tmp_path):
    log_dir = tmp_path / "clf"
    call_main("classifier_train.py", ["--data_dir", numbered_images, "--val_data_dir", numbered_images,
                                      "--log_dir", log_dir, "--batch_size", 4, "--iterations", 1,
                                      "--save_interval", 1, *_without_num_classes(TINY_CLASSIFIER)])
    saved = json.loads((log_dir / "args.json").read_text())
    assert saved["num_classes"] == 12 and saved["class_names"] == [str(k) for k in range(12)]
    assert _weights(log_dir / "model000001.pt")["out.2.c_proj.weight"].shape[0] == 12


@pytest.mark.parametrize("script", ["image_train.py", "classifier_train.py"])
def test_stray_file_with_an_empty_class_name(numbered_images, tmp_path, script):
    folder = tmp_path / "stray"
    shutil.copytree(numbered_images, folder)
    shutil.copy(folder / "0_000.png", folder / "_x.png")
    flags = [*TINY_MODEL, "--max_steps", 1] if script == "image_train.py" else [*TINY_CLASSIFIER, "--iterations", 1]
    code, stderr = run_main(script, ["--data_dir", folder, "--log_dir", tmp_path / "bad", "--batch_size", 4,
                                     *_without_num_classes(flags)])
    assert code == 2 and stderr == (
        f"{script}: error: {folder / '_x.png'}: empty class name (the file name starts with '_'; the class is the "
        f"name's part before the first '_', e.g. 3_0001.png): rename the file or move it out of {folder}")
