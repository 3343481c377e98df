"""Every command a user would paste from the README is run by a test or by .ci/run as written, or the README says
it needs a download (the released checkpoints, the Inception graph) or data of one's own."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import numpy as np
import pytest

from launch import ROOT, script_env

# Each command of the README's bash blocks (its first line, comment dropped) and what runs it.
COVERAGE = {
    "bash quickstart.sh": "test tests/test_quickstart.py::test_readme_first_command_starts_training",
    "bash setup.sh && .venv/bin/python -m pytest -q": "ci",
    ".venv/bin/python -m pytest -q": "ci",
    '.venv/bin/python -m pytest -q -m "not slow and not mpi"': "ci",
    "pip install torch": "by hand; setup.sh installs the pinned CPU build instead",
    'pip install -e ".[mpi,eval,dev]"': "ci (setup.sh installs these extras)",
    'pip install -e ".[eval]"': "ci (setup.sh installs this extra)",
    'pip install -e ".[latent]"': "ci (setup.sh installs this extra)",
    "python evaluations/evaluator.py REF.npz SAMPLE.npz [--json metrics.json]": "download: the Inception graph",
    "python evaluations/inception_standin.py --seed 0 --width_divisor 8 standin.pb":
        "test tests/test_readme.py::test_readme_offline_commands",
    "python evaluations/evaluator.py REF.npz SAMPLE.npz --inception_path standin.pb --json metrics.json":
        "test tests/test_readme.py::test_readme_offline_commands",
    "python datasets/digits_judge.py --out_dir judged unguided=samples_a.npz guided=samples_b.npz":
        "test tests/test_readme.py::test_readme_offline_commands",
}
DOWNLOAD_PREFIXES = {  # commands on the released checkpoints (downloads) or on a folder of one's own images
    "python scripts/classifier_sample.py $MODEL_FLAGS": "download: the released checkpoints",
    "python scripts/super_res_sample.py $SR_FLAGS": "download: the released checkpoints",
    "mpiexec -n 2 python scripts/image_train.py --data_dir DIR": "your data (DIR)",
    "torchrun --nproc_per_node 2 scripts/classifier_train.py --data_dir DIR": "your data (DIR)",
    "python scripts/super_res_train.py --data_dir DIR": "your data (DIR)",
    "mpiexec -n N python scripts/image_sample.py --model_path models/": "download: the released checkpoints",
    "python scripts/image_train.py --data_dir DIR": "your data (DIR)",
    "python scripts/image_sample.py --model_path runs/.../": "your trained run",
    "python scripts/image_sample.py --model_path edm2-": "download: EDM2's released pickles",
    "python scripts/image_sample.py --preset edm2-img512-": "download: EDM2's released pickles and Stability's VAE",
    "python scripts/classifier_sample.py --model_path edm-": "download: EDM's released pickle",
    "python scripts/convert_checkpoint.py edm2-": "download: EDM2's released pickles",
    "python scripts/reconstruct_ema.py --run_dir runs/image_train-": "your trained run",
    "python scripts/classifier_train.py --data_dir DIR": "your data (DIR)",
    "python scripts/image_sample.py --model_path RUN/": "your trained run",
}


def readme_commands() -> list[str]:
    """The first line of every command in the README's bash blocks (continuations and VAR=... lines dropped)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        previous = ""
        for line in block.splitlines():
            continued = previous.rstrip().endswith("\\") or (previous.count('"') % 2 == 1)
            previous = line if not continued else previous + line
            if continued or not line.strip() or re.match(r"^[A-Z_]+=", line):
                continue
            commands.append(re.sub(r"\s+#.*$", "", line).strip().rstrip("\\").strip())
    return commands


def coverage(command: str) -> str:
    if command in COVERAGE:
        return COVERAGE[command]
    for prefix, how in DOWNLOAD_PREFIXES.items():
        if command.startswith(prefix):
            return how
    return ""


def test_every_readme_command_is_accounted_for():
    """A command added to the README fails here until a test or CI runs it, or it is listed as needing a download
    or one's own data; the named tests exist and CI runs the test commands as written."""
    commands = readme_commands()
    assert len(commands) >= 25, commands
    missing = [c for c in commands if not coverage(c)]
    assert not missing, missing
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    for command in commands:
        how = coverage(command)
        if how == "ci":
            assert command.replace("bash setup.sh && ", "") in ci, command
        if how.startswith("test "):
            path, name = how[5:].split("::")
            assert f"def {name}(" in open(os.path.join(ROOT, path)).read(), how
    assert "bash setup.sh" in ci


def _labelled_digits(path, seed: int, noise: float) -> str:
    """Real digits (16x16 RGB, as the scripts write them) with noise, labelled: a samples npz."""
    from digits import digit_to_pil, load_digit_arrays, split_indices

    digits, labels = load_digit_arrays()
    test = split_indices(len(digits), "test")
    images = np.stack([np.asarray(digit_to_pil(digits[i], 16).convert("RGB")) for i in test])
    rng = np.random.default_rng(seed)
    images = np.clip(images.astype(np.float64) + rng.normal(0, noise, images.shape), 0, 255).astype(np.uint8)
    np.savez(path, images, labels[test])
    return str(path)


@pytest.mark.slow
def test_readme_offline_commands(tmp_path, digits_judge_session):
    """The README's offline evaluator commands and the judge command, as written, with the placeholder file names
    pointing at real files."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "datasets"))
    from inception_standin import smooth_images  # tests/ is on sys.path (conftest)

    _, cache = digits_judge_session
    np.savez(tmp_path / "REF.npz", smooth_images(300, size=32, seed=1))
    np.savez(tmp_path / "SAMPLE.npz", smooth_images(200, size=32, seed=2, shift=20.0))
    _labelled_digits(tmp_path / "samples_a.npz", 0, 60.0)
    _labelled_digits(tmp_path / "samples_b.npz", 1, 5.0)
    names = ("REF.npz", "SAMPLE.npz", "standin.pb", "metrics.json", "samples_a.npz", "samples_b.npz", "judged")
    env = script_env({"GUIDED_DIFFUSION_CACHE": cache, "PATH": os.path.dirname(sys.executable) + os.pathsep
                      + os.environ.get("PATH", "")})
    outputs = {}
    for command in readme_commands():
        if not coverage(command).endswith("test_readme_offline_commands"):
            continue
        argv = [str(tmp_path / a) if a in names or a.split("=")[-1] in names and "=" not in a else a
                for a in shlex.split(command)]
        argv = [f"{a.split('=')[0]}={tmp_path / a.split('=')[1]}" if "=" in a and a.split("=")[1] in names else a
                for a in argv]
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
        outputs[argv[1]] = proc.stdout
    assert list(outputs) == ["datasets/digits_judge.py", "evaluations/inception_standin.py",
                             "evaluations/evaluator.py"]
    assert "wrote the stand-in Inception graph" in outputs["evaluations/inception_standin.py"]
    assert all(f"\n{name}: " in outputs["evaluations/evaluator.py"]
               for name in ("Inception Score", "FID", "sFID", "Precision", "Recall"))
    assert (tmp_path / "metrics.json").exists()
    import json

    judged = json.load(open(tmp_path / "judged" / "results.json"))
    assert list(judged) == ["unguided", "guided"]
    assert judged["guided"]["recognized"] > 0.9 and judged["guided"]["fd"] < judged["unguided"]["fd"]
