"""Training throughput (images/s) of a small configuration with 1 and 2 data-parallel processes.

    python benchmarks/bench_train.py [--steps 40] [--batch_size 16] [--launcher torchrun|mpiexec]

Runs scripts/image_train.py as users do (gloo on CPU, nccl on GPU) on generated 32x32 images and reads the
images_per_sec column of progress.csv, skipping the first logged interval (start-up). Prints JSON with the
ratio of 2-process to 1-process throughput.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from launch import make_image_folder, run_script  # noqa: E402

MODEL = ("--image_size 32 --num_channels 64 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 16 "
         "--num_head_channels 32 --learn_sigma True").split()


def throughput(images: str, nproc: int, steps: int, batch_size: int, launcher: str, workdir: str) -> dict:
    log_dir = os.path.join(workdir, f"run{nproc}")
    args = ["--data_dir", images, "--log_dir", log_dir, "--batch_size", batch_size, "--max_steps", steps,
            "--log_interval", 5, "--save_interval", 10**9, *MODEL]
    start = time.perf_counter()
    run_script("image_train.py", args, launcher="python" if nproc == 1 else launcher, nproc=nproc,
               env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}, timeout=3600)
    wall = time.perf_counter() - start
    with open(os.path.join(log_dir, "progress.csv")) as f:
        rates = [float(row["images_per_sec"]) for row in csv.DictReader(f)][1:]
    return {"processes": nproc, "images_per_sec": round(sum(rates) / len(rates), 2), "wall_s": round(wall, 1),
            "global_batch": batch_size * nproc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16, help="per process")
    parser.add_argument("--launcher", choices=["torchrun", "mpiexec"], default="torchrun")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        images = make_image_folder(os.path.join(workdir, "images"), count=256, size=32)
        one = throughput(images, 1, args.steps, args.batch_size, args.launcher, workdir)
        two = throughput(images, 2, args.steps, args.batch_size, args.launcher, workdir)
    print(json.dumps({"config": " ".join(MODEL), "cpu_count": os.cpu_count(), "runs": [one, two],
                      "speedup_2_over_1": round(two["images_per_sec"] / one["images_per_sec"], 2)}, indent=1))


if __name__ == "__main__":
    main()
