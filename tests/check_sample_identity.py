"""Fingerprints of every sampling script's output for fixed seeds, to show that a change to the code leaves the
samples bit-identical.

    python tests/check_sample_identity.py WORK_DIR record before.json   # on the old code
    python tests/check_sample_identity.py WORK_DIR compare before.json  # on the new code: exit 1 on any difference

WORK_DIR keeps the tiny checkpoints (trained by the scripts on first use), so both runs sample the same weights.
The cases: ADM classifier-guided DDIM, ADM Heun with classifier-free guidance, EDM2 (NVlabs snapshot) with
autoguidance by an EDM snapshot and guidance intervals, control conditioning with its guidance, the cascade.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import call_main, make_image_folder, train_tiny_checkpoints  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "nvlabs")
COMMON = ["--num_samples", 3, "--batch_size", 2, "--progress", False]


def checkpoints(work: str) -> dict:
    """The tiny checkpoints, trained once into WORK_DIR."""
    index = os.path.join(work, "checkpoints.json")
    if os.path.exists(index):
        return json.load(open(index))
    paths = train_tiny_checkpoints(os.path.join(work, "adm"))
    control = os.path.join(work, "control")
    images = make_image_folder(os.path.join(work, "control_images"), count=16, size=16)
    call_main("image_train.py", [
        "--data_dir", images, "--log_dir", control, "--image_size", 16, "--channel_mult", "1,2", "--class_cond", True,
        "--num_classes", 4, "--class_dropout_prob", 0.2, "--batch_size", 4, "--max_steps", 4, "--save_interval", 4,
        "--lr", 1e-2, "--random_crop", True, "--random_resize", "0.5,1", "--control_cond", "crop,flip,size",
        "--control_dropout_prob", 0.2, "--arch", "edm2", "--model_channels", 16, "--num_blocks", 1,
        "--attn_resolutions", ""])
    paths["control"] = os.path.join(control, "model000004.pt")
    json.dump(paths, open(index, "w"))
    return paths


def cases(ckpt: dict) -> dict:
    """name: (script, arguments, the npz files it writes relative to its log dir)."""
    return {
        "adm_classifier_ddim": ("classifier_sample.py", [
            "--model_path", ckpt["model"], "--classifier_path", ckpt["classifier"], "--classifier_scale", 3,
            "--timestep_respacing", "ddim5", "--use_ddim", True, *COMMON], ["samples_3x16x16x3.npz"]),
        "adm_heun_cfg": ("image_sample.py", [
            "--model_path", ckpt["cfg"], "--sampler", "heun", "--steps", 4, "--cfg_scale", 2, "--classes", "1-3",
            *COMMON], ["samples_3x16x16x3.npz"]),
        "edm2_autoguidance_intervals": ("image_sample.py", [
            "--model_path", os.path.join(FIXTURES, "edm2_snapshot.pkl"), "--guide_model_path",
            os.path.join(FIXTURES, "edm_snapshot.pkl"), "--guide_scale", 2, "--guide_interval", "0.3,20",
            "--sampler", "heun", "--steps", 4, "--classes", "0-2", *COMMON], ["samples_3x16x16x3.npz"]),
        "control_cfg": ("image_sample.py", [
            "--model_path", ckpt["control"], "--sampler", "heun", "--steps", 4, "--classes", 1,
            "--control", "flip=1 size=8", "--control_cfg_scale", 3, "--cfg_scale", 2, "--cfg_interval", "0.2,50",
            *COMMON], ["samples_3x16x16x3.npz"]),
        "cascade": ("cascade_sample.py", [
            "--base_model_path", ckpt["model"], "--base_flags", "--timestep_respacing 6",
            "--classifier_path", ckpt["classifier"], "--classifier_scale", 2, "--sr_model_path", ckpt["sr"],
            "--sr_flags", "--timestep_respacing 4", "--use_ddim", "True", "--num_samples", 3, "--batch_size", 2],
            ["base/samples_3x16x16x3.npz", "upsampled/samples_3x64x64x3.npz"]),
    }


def fingerprints(work: str) -> dict:
    """{case/file: {array name: sha256 of its bytes, dtype and shape}} for every case, sampled afresh."""
    ckpt = checkpoints(work)
    out = {}
    for name, (script, args, files) in cases(ckpt).items():
        log_dir = os.path.join(work, "runs", name)
        if os.path.exists(log_dir):
            shutil.rmtree(log_dir)
        call_main(script, [*args, "--log_dir", log_dir])
        for file in files:
            with np.load(os.path.join(log_dir, file)) as data:
                out[f"{name}/{file}"] = {key: hashlib.sha256(f"{data[key].dtype}{data[key].shape}".encode()
                                                              + data[key].tobytes()).hexdigest()
                                         for key in sorted(data.files)}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("record", "compare"):
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    work, mode, path = argv
    os.makedirs(work, exist_ok=True)
    now = fingerprints(work)
    if mode == "record":
        json.dump(now, open(path, "w"), indent=1)
        print(f"recorded {len(now)} sample files in {path}")
        return 0
    before = json.load(open(path))
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for key in differ:
        print(f"DIFFERENT: {key}")
    print(f"{len(before) - len(differ)} of {len(before)} sample files bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
