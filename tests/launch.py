"""Run the project's scripts the way users do: plain python, mpiexec or torchrun, as subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

# A tiny class-conditional U-Net and classifier for 16x16 images: seconds per run on a CPU.
TINY_MODEL = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
              "--num_head_channels 16 --class_cond True --num_classes 4 --learn_sigma True").split()
TINY_CLASSIFIER = ("--image_size 16 --classifier_width 64 --classifier_depth 1 --classifier_channel_mult 1,2 "
                   "--classifier_attention_resolutions 8 --classifier_pool attention --num_classes 4").split()


def script_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("OPENAI_LOGDIR", None)
    if extra:
        env.update(extra)
    return env


def command(script: str, args: list[str], launcher: str = "python", nproc: int = 2) -> list[str]:
    path = os.path.join(ROOT, "scripts", script)
    if launcher == "python":
        return [PYTHON, path, *args]
    if launcher == "mpiexec":
        return [shutil.which("mpiexec") or "mpiexec", "-n", str(nproc), "--oversubscribe", PYTHON, path, *args]
    if launcher == "torchrun":
        return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                path, *args]
    raise ValueError(launcher)


def run_script(script: str, args: list[str], launcher: str = "python", nproc: int = 2, env: dict | None = None,
               timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run a script to completion (launcher "main": its main() in this process); with check, fail with its output
    when it exits non-zero."""
    args = [str(a) for a in args]
    if launcher == "main":
        code, stdout, stderr = _in_process(script, args, env)
        proc = subprocess.CompletedProcess([script, *args], code, stdout, stderr)
    else:
        proc = subprocess.run(command(script, args, launcher, nproc), env=script_env(env), capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def make_image_folder(folder, count: int = 16, size: int = 20, classes: int = 4, seed: int = 0) -> str:
    """Class-prefixed PNGs (<class>_<i>.png) whose colour depends on the class."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % classes
        base = np.array([60 * label, 255 - 60 * label, 128], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"c{label}_{i:03d}.png"))
    return str(folder)


def read_samples(path) -> dict:
    """The arrays of a samples npz."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def classifier_probability(classifier_path: str, samples: dict) -> float:
    """Mean probability a trained classifier (with its args.json) gives the requested labels (arr_1) of the final,
    noise-free samples (arr_0)."""
    import torch

    from guided_diffusion.loading.checkpoint_flags import checkpoint_args
    from guided_diffusion.script_util import classifier_defaults, create_classifier

    args = classifier_defaults()
    saved = checkpoint_args(classifier_path)
    args.update({k: saved[k] for k in args})
    classifier = create_classifier(**args)
    classifier.load_state_dict(torch.load(classifier_path, weights_only=True))
    classifier.eval()
    x = torch.from_numpy(samples["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        probs = torch.softmax(classifier(x, torch.zeros(len(x), dtype=torch.long)), dim=-1)
    return float(probs[range(len(x)), torch.from_numpy(samples["arr_1"])].mean())


def train_tiny_checkpoints(root) -> dict:
    """Tiny diffusion model, classifier and upsampler checkpoints (with their args.json), trained by the scripts
    in this process; "cfg" is a model trained with label dropout, "cfg_early" its checkpoint at half the steps
    (a guide)."""
    images = make_image_folder(os.path.join(root, "images"), count=16, size=16)
    call_main("image_train.py", ["--data_dir", images, "--log_dir", os.path.join(root, "model"), "--batch_size", 4,
                                 "--max_steps", 2, "--save_interval", 2, *TINY_MODEL])
    call_main("classifier_train.py", ["--data_dir", images, "--log_dir", os.path.join(root, "classifier"),
                                      "--batch_size", 8, "--iterations", 30, "--save_interval", 30, "--lr", 1e-3,
                                      "--random_crop", "False", *TINY_CLASSIFIER])
    call_main("image_train.py", ["--data_dir", images, "--log_dir", os.path.join(root, "cfg"), "--batch_size", 4,
                                 "--max_steps", 4, "--save_interval", 2, "--class_dropout_prob", 0.25, "--lr", 5e-3,
                                 *TINY_MODEL])
    call_main("super_res_train.py", ["--data_dir", images, "--log_dir", os.path.join(root, "sr"), "--batch_size", 2,
                                     "--max_steps", 1, "--large_size", 64, "--small_size", 16, "--num_channels",
                                     32, "--num_res_blocks", 1, "--attention_resolutions", 8, "--class_cond",
                                     "True", "--num_classes", 4])
    return {"model": os.path.join(root, "model", "model000002.pt"),
            "classifier": os.path.join(root, "classifier", "model000030.pt"),
            "sr": os.path.join(root, "sr", "model000001.pt"), "images": images,
            "cfg": os.path.join(root, "cfg", "model000004.pt"), "cfg_early": os.path.join(root, "cfg", "model000002.pt")}


def _in_process(script: str, args: list, env: dict | None = None) -> tuple[int, str, str]:
    """Run scripts/<script>'s main in this process as cli.run does, with `env` added to the environment meanwhile:
    (exit code, stdout, stderr stripped)."""
    import contextlib
    import importlib.util
    import io

    from guided_diffusion.cli import run as cli

    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, "scripts", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(a) for a in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    environ = dict(os.environ)  # the process-group set-up writes RANK, MASTER_PORT, ...: keep them from leaking
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            os.environ.pop("OPENAI_LOGDIR", None)
            os.environ.update(env or {})
            cli.run(lambda: module.main(argv), script=script)
        except SystemExit as e:
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(environ)
    return code, stdout.getvalue(), stderr.getvalue().strip()


def run_main(script: str, args: list) -> tuple[int, str]:
    """Run scripts/<script>'s main in this process as cli.run does: (exit code, stderr stripped)."""
    code, _, stderr = _in_process(script, args)
    return code, stderr


def call_main(script: str, args: list) -> str:
    """Run scripts/<script>'s main in this process; fail with its output unless it succeeds; return its stdout."""
    return run_script(script, args, launcher="main").stdout


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll condition() until true; fail the test if proc exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.01)


def train_straight_and_killed(args_for, tmp_path, last_checkpoint: str):
    """Train tmp_path/straight uninterrupted; train tmp_path/killed, SIGKILL it once its step-2 checkpoint is
    written, then rerun it (--resume_checkpoint auto in args_for). Returns (straight, killed) folders."""
    import signal

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script("image_train.py", args_for(straight))
    proc = subprocess.Popen(command("image_train.py", [str(a) for a in args_for(killed)]), env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (killed / "opt000002.pt").exists(), proc, "checkpoint at step 2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / last_checkpoint).exists()
    assert "resuming from" in run_script("image_train.py", args_for(killed)).stdout
    return straight, killed
