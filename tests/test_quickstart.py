"""The main job: the README's first command exactly as written (both recipes) until training runs; --fast at 200
training steps end to end with the judge's table, results and plot; every option path and bad flag of
scripts/quickstart.py in this process."""

from __future__ import annotations

import json
import os
import re
import importlib.util
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from launch import ROOT, script_env

HEADER = "| guidance scale | recognized as requested | FD | precision | recall | digits present | samples |"


@pytest.mark.slow
def test_quickstart_fast(tmp_path, digits_judge_session):
    _, cache = digits_judge_session
    out = tmp_path / "quickstart"
    proc = subprocess.run(["bash", os.path.join(ROOT, "quickstart.sh"), "--fast", "--steps", "200", "--out", str(out),
                           "--skip_setup"],
                          env=script_env({"GUIDED_DIFFUSION_CACHE": cache}), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    table = lines[lines.index(HEADER):lines.index(HEADER) + 4]
    assert table[1] == "|---|---|---|---|---|---|---|"
    results = json.load(open(out / "judge" / "results.json"))
    assert list(results) == ["0", "10"]
    for scale, row in results.items():
        assert row["samples"] == 100 and row["fd"] > 0 and 1 <= row["classes_present"] <= 10
        assert os.path.exists(row["grid"]) and os.path.exists(row["npz"])
        assert table[2 + list(results).index(scale)].startswith(f"| {scale} | {100 * row['recognized']:.1f}% | "
                                                                f"{row['fd']:.2f} | {row['precision']:.3f} |")
    assert results["10"]["recognized"] > results["0"]["recognized"], results
    assert Image.open(out / "judge" / "tradeoff.png").size[0] > 300
    assert os.path.exists(out / "diffusion" / "args.json") and os.path.exists(out / "classifier" / "args.json")


@pytest.mark.slow
def test_quickstart_fast_edm2_recipe(tmp_path, digits_judge_session):
    """--recipe edm2: EDM2's network, power-function EMAs reconstructed afterwards, CFG; the same judge table."""
    _, cache = digits_judge_session
    out = tmp_path / "edm2"
    proc = subprocess.run(["bash", os.path.join(ROOT, "quickstart.sh"), "--fast", "--steps", "200", "--recipe", "edm2",
                           "--out", str(out), "--skip_setup"],
                          env=script_env({"GUIDED_DIFFUSION_CACHE": cache}), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = HEADER.replace("guidance scale", "CFG scale")
    lines = proc.stdout.splitlines()
    assert lines[lines.index(header) + 1] == "|---|---|---|---|---|---|---|"
    results = json.load(open(out / "judge" / "results.json"))
    assert list(results) == ["1", "2"] and all(row["samples"] == 100 for row in results.values())
    assert results["2"]["recognized"] > results["1"]["recognized"], results
    args = json.load(open(out / "diffusion" / "args.json"))
    assert (args["arch"], args["objective"], args["phema_stds"]) == ("edm2", "edm2", "0.05,0.10")
    assert os.path.exists(out / "diffusion" / "phema_recon_0.100_000200.pt")




def _quickstart_module():
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "scripts", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("quickstart", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


quickstart = _quickstart_module()


TRAINING_STEP = re.compile(r"^training:.*\b[1-9][0-9]*/[0-9]+ ")  # the progress bar after a finished step


@pytest.mark.slow
@pytest.mark.parametrize("command, folder, first_line", [
    ("bash quickstart.sh", "quickstart", "quickstart: training the diffusion model (2500 steps)"),
    ("bash quickstart.sh --recipe edm2", "quickstart-edm2",
     "quickstart: training EDM2's network (2000 steps, power-function EMAs 0.05,0.10)"),
])
def test_readme_first_command_starts_training(tmp_path, command, folder, first_line):
    """The README's first command, exactly as written (set-up included), runs until its first training step has
    been logged; then it is stopped. Only where runs go by default is redirected ($GUIDED_DIFFUSION_RUNS)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert f"\n{command} " in readme or f"`{command}`" in readme, command
    proc = subprocess.Popen(command.split(), cwd=ROOT, env=script_env({"GUIDED_DIFFUSION_RUNS": str(tmp_path)}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen, pending, deadline = [], "", time.monotonic() + 600
    try:
        while time.monotonic() < deadline and not any(TRAINING_STEP.search(line) for line in seen):
            chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
            if not chunk:
                break
            *lines, pending = re.split(r"[\r\n]", pending + chunk)  # the progress bar rewrites its line with \r
            seen += lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = "\n".join(seen[-60:])
    assert first_line in seen, text
    assert any(TRAINING_STEP.search(line) for line in seen[seen.index(first_line):]), text
    out = tmp_path / folder
    assert f"wrote 1437 digit images (train, 16x16) to {out}/digits" in seen, text
    assert (out / "diffusion" / "args.json").exists()


def _run_main(argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = quickstart.cli(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("flags, message", [
    (["--recipe", "edm3"], "--recipe edm3: choose adm or edm2"),
    (["--steps", "0"], "--steps 0: expected a positive whole number of training steps"),
    (["--steps", "1e3"], "--steps 1e3: expected a positive whole number of training steps"),
    (["--steps", "-5"], "--steps -5: expected a positive whole number of training steps"),
    (["--out"], "--out: expected one argument (usage: " + quickstart.USAGE + ")"),
    (["--out", ""], "--out: expected a folder name, got an empty string"),
    (["--fats"], "unrecognized arguments: --fats (usage: " + quickstart.USAGE + ")"),
])
def test_quickstart_flag_errors(tmp_path, flags, message):
    """A bad flag is one line and exit code 2 before anything runs; an earlier run's folder is left as it was."""
    out = tmp_path / "earlier"
    (out / "judge").mkdir(parents=True)
    (out / "judge" / "results.json").write_text("{}")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    argv = [*flags, "--out", str(out)] if "--out" not in flags else flags
    code, err = _run_main(argv)
    assert code == 2 and err.splitlines() == [f"quickstart.sh: error: {message}"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_quickstart_sh_reports_errors_on_one_line():
    """The wrapper hands its flags over unchanged and keeps the one-line error and exit code."""
    bad = subprocess.run(["bash", os.path.join(ROOT, "quickstart.sh"), "--recipe", "foo"], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.splitlines() == ["quickstart.sh: error: --recipe foo: choose adm or edm2"]


def test_quickstart_out_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = _run_main(["--out", str(tmp_path / "file"), "--skip_setup"])
    assert code == 2 and err.splitlines() == [f"quickstart.sh: error: --out {tmp_path / 'file'}: exists and is not a "
                                              "folder"]


class _Recorder:
    """Stands in for Launcher.script: records each step and leaves the checkpoints a training run would."""

    def __init__(self):
        self.calls = []

    def __call__(self, launcher, path, *args, parallel=True):
        args = [str(a) for a in args]
        self.calls.append((os.path.basename(path), args))
        flag = dict(zip(args, args[1:]))
        if path.endswith("image_train.py"):
            steps = int(flag["--max_steps"])
            os.makedirs(flag["--log_dir"], exist_ok=True)
            open(os.path.join(flag["--log_dir"], f"ema_0.995_{steps:06d}.pt"), "w").close()
        elif path.endswith("classifier_train.py"):
            os.makedirs(flag["--log_dir"], exist_ok=True)
            open(os.path.join(flag["--log_dir"], f"model{int(flag['--iterations']):06d}.pt"), "w").close()
        elif path.endswith("reconstruct_ema.py"):
            steps = max(int(n[-9:-3]) for n in os.listdir(flag["--run_dir"]) if n.startswith("ema_"))
            open(os.path.join(flag["--run_dir"], f"phema_recon_0.100_{steps:06d}.pt"), "w").close()

    def flags(self, script):
        return [dict(zip(args, args[1:])) for name, args in self.calls if name == script]


@pytest.mark.parametrize("flags, folder, train, classifier, per_digit, scales, respacing", [
    ([], "quickstart", 2500, 1500, 36, ["0", "0.5", "1", "2", "3", "10"], "ddim50"),
    (["--fast"], "quickstart-fast", 300, 300, 10, ["0", "10"], "ddim20"),
    (["--steps", "40"], "quickstart", 40, 40, 36, ["0", "0.5", "1", "2", "3", "10"], "ddim50"),
    (["--recipe", "edm2"], "quickstart-edm2", 2000, 0, 36, ["1", "1.5", "2", "3"], ""),
    (["--recipe", "edm2", "--fast", "--steps", "7"], "quickstart-edm2-fast", 7, 0, 10, ["1", "2"], ""),
])
def test_every_option_path_runs_the_pipeline(tmp_path, monkeypatch, flags, folder, train, classifier, per_digit,
                                             scales, respacing):
    """Each option path gets past its start and runs every step with the budget the README states (the steps
    recorded instead of run); its output folder is the default one under $GUIDED_DIFFUSION_RUNS."""
    recorder = _Recorder()
    monkeypatch.setattr(quickstart.Launcher, "script",
                        lambda launcher, path, *args, parallel=True: recorder(launcher, path, *args, parallel=parallel))
    monkeypatch.setenv("GUIDED_DIFFUSION_RUNS", str(tmp_path))
    code, err = _run_main([*flags, "--skip_setup"])
    assert code == 0, err
    out = str(tmp_path / folder)
    steps = [name for name, _ in recorder.calls]
    digits, = recorder.flags("digits.py")
    assert digits["--out_dir"] == f"{out}/digits"
    train_flags, = recorder.flags("image_train.py")
    assert train_flags["--max_steps"] == str(train) and train_flags["--log_dir"] == f"{out}/diffusion"
    if classifier:
        assert steps == ["digits.py", "image_train.py", "classifier_train.py", *["classifier_sample.py"] * len(scales),
                         "digits_judge.py"]
        assert recorder.flags("classifier_train.py")[0]["--iterations"] == str(classifier)
        samples = recorder.flags("classifier_sample.py")
        assert [s["--classifier_scale"] for s in samples] == scales
        assert {s["--timestep_respacing"] for s in samples} == {respacing}
        stem = f"ema_0.995_{train:06d}_model{classifier:06d}_{respacing}"
    else:
        assert steps == ["digits.py", "image_train.py", "reconstruct_ema.py", *["image_sample.py"] * len(scales),
                         "digits_judge.py"]
        assert train_flags["--arch"] == "edm2"
        samples = recorder.flags("image_sample.py")
        assert [s["--cfg_scale"] for s in samples] == scales
        stem = f"phema_recon_0.100_{train:06d}_heun18"
    assert {s["--num_samples"] for s in samples} == {str(10 * per_digit)}
    # samples live in a folder named after the checkpoints that made them: other --steps never judge old samples
    assert all(s["--log_dir"].startswith(f"{out}/samples/{stem}/") for s in samples)
    judge = recorder.calls[-1][1]
    assert judge[-len(scales):] == [f"{scale}={s['--log_dir']}/samples_{10 * per_digit}x16x16x3.npz"
                                    for scale, s in zip(scales, samples)]


def test_missing_checkpoint_after_training_is_an_error(tmp_path, monkeypatch):
    """A folder trained past --steps without a checkpoint at that step: a one-line error, no sampling."""
    recorder = _Recorder()
    monkeypatch.setattr(quickstart.Launcher, "script",
                        lambda launcher, path, *args, parallel=True: recorder.calls.append((path, args)))
    code, err = _run_main(["--out", str(tmp_path), "--steps", "20", "--skip_setup"])
    assert code == 2 and err.splitlines() == [
        f"quickstart.sh: error: {tmp_path}/diffusion/ema_0.995_000020.pt was not written: {tmp_path}/diffusion holds "
        "a run that was saved at other steps than 20; use --out DIR for a fresh run or --steps to match"]
    assert [os.path.basename(p) for p, _ in recorder.calls] == ["digits.py", "image_train.py", "classifier_train.py"]
