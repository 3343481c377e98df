"""The main job on the handwritten digits that ship with scikit-learn (no download, no GPU needed).

    bash quickstart.sh [--fast] [--steps N] [--out DIR] [--recipe adm|edm2]

1. set up (setup.sh: Open MPI, .venv, torch, the project); `--skip_setup` when that is done already,
2. export the digits as 16x16 class-prefixed PNGs (datasets/digits.py, the train split),
3. recipe adm: train an unconditional ADM (scripts/image_train.py) and a noisy classifier
   (scripts/classifier_train.py), data-parallel under mpiexec when it is available, then sample with classifier
   guidance at several scales (scripts/classifier_sample.py, DDIM);
   recipe edm2: train EDM2's network (class-conditional with label dropout, its loss and learning-rate schedule,
   power-function EMAs), pick the EMA length afterwards (scripts/reconstruct_ema.py) and sample with
   classifier-free guidance at several scales (scripts/image_sample.py, Heun, 35 evaluations),
4. judge the samples (datasets/digits_judge.py): the fraction an independent SVC reads as the requested digit,
   and the Frechet distance, precision and recall against the held-out real digits, per scale; the table, grids
   (OUT/judge/grid_*.png) and the trade-off plot (OUT/judge/tradeoff.png).

This file uses the standard library only: it runs under any python3 before set-up, checks its flags first (a bad
one is a one-line error and exit code 2, before anything is written) and starts every step as a subprocess of the
project's .venv python. Outputs go to --out, by default runs/quickstart[-edm2][-fast] under $GUIDED_DIFFUSION_RUNS
(default: runs/ in the project). A rerun resumes: finished training is not repeated, and samples live in a folder
named after the checkpoints that made them, so a rerun with other --steps samples and judges anew.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "quickstart.sh"
USAGE = "bash quickstart.sh [--fast] [--steps N] [--out DIR] [--recipe adm|edm2] [--skip_setup]"


class QuickstartError(Exception):
    """A one-line error for the user: printed as 'quickstart.sh: error: ...', exit code 2."""


@dataclass(frozen=True)
class Budget:
    """What one run of the main job trains and samples."""

    train_steps: int  # the diffusion network's training steps
    classifier_steps: int  # the noisy classifier's (adm only)
    per_digit: int  # samples per requested digit (x10 digits)
    scales: tuple[str, ...]  # guidance scales: classifier guidance (adm) or CFG (edm2)
    respacing: str = ""  # DDIM respacing (adm)


BUDGETS = {
    ("adm", False): Budget(2500, 1500, 36, ("0", "0.5", "1", "2", "3", "10"), "ddim50"),
    ("adm", True): Budget(300, 300, 10, ("0", "10"), "ddim20"),
    # EDM2's network at the main job's cost; EMA length and CFG scales from benchmarks/edm_recipes_digits.sh.
    ("edm2", False): Budget(2000, 0, 36, ("1", "1.5", "2", "3")),
    ("edm2", True): Budget(300, 0, 10, ("1", "2")),
}
EDM2_SIGMA_REL = 0.10  # the power-function EMA length reconstructed after training (scripts/reconstruct_ema.py)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's two-line usage + error becomes one line
        raise QuickstartError(f"{message.removeprefix('argument ')} (usage: {USAGE})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, each checked here: a bad one is a QuickstartError before anything runs or is written."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="a tiny budget, about 2 minutes")
    parser.add_argument("--steps", help="train every network N steps instead of the budget's count")
    parser.add_argument("--out", help="the output folder (default: runs/quickstart[-edm2][-fast])")
    parser.add_argument("--recipe", default="adm", help="adm (default) or edm2")
    parser.add_argument("--skip_setup", action="store_true", help="do not run setup.sh first")
    args = parser.parse_args(argv)
    if args.recipe not in ("adm", "edm2"):
        raise QuickstartError(f"--recipe {args.recipe}: choose adm or edm2")
    if args.steps is not None:
        if not (args.steps.isascii() and args.steps.isdigit() and int(args.steps) >= 1):
            raise QuickstartError(f"--steps {args.steps}: expected a positive whole number of training steps")
        args.steps = int(args.steps)
    if args.out is not None and not args.out.strip():
        raise QuickstartError("--out: expected a folder name, got an empty string")
    return args


def budget_for(args: argparse.Namespace) -> Budget:
    budget = BUDGETS[args.recipe, args.fast]
    if args.steps:
        budget = replace(budget, train_steps=args.steps, classifier_steps=args.steps if budget.classifier_steps else 0)
    return budget


def default_out(recipe: str, fast: bool) -> str:
    runs = os.environ.get("GUIDED_DIFFUSION_RUNS") or os.path.join(ROOT, "runs")
    return os.path.join(runs, "quickstart" + ("-edm2" if recipe == "edm2" else "") + ("-fast" if fast else ""))


@dataclass(frozen=True)
class Launcher:
    """How a script starts: 2 processes under mpiexec when Open MPI/MPICH and mpi4py are there, else one."""

    python: str
    prefix: tuple[str, ...]
    ranks: int
    env: dict

    @classmethod
    def detect(cls, python: str) -> Launcher:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
        mpiexec = shutil.which("mpiexec")
        if mpiexec and subprocess.run([python, "-c", "import mpi4py"], capture_output=True).returncode == 0:
            version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True)
            open_mpi = any(word in (version.stdout + version.stderr).lower() for word in ("open mpi", "openmpi",
                                                                                          "openrte"))
            # --oversubscribe goes to Open MPI only (MPICH's mpiexec rejects it).
            return cls(python, (mpiexec, "-n", "2", *(("--oversubscribe",) if open_mpi else ())), 2, env)
        return cls(python, (), 1, dict(env, OMP_NUM_THREADS="2"))

    def script(self, path: str, *args: str, parallel: bool = True) -> None:
        """Run a project script (relative to the project root) to completion; a failure stops the main job."""
        command = [*(self.prefix if parallel else ()), self.python, os.path.join(ROOT, path), *map(str, args)]
        sys.stdout.flush()
        code = subprocess.run(command, env=self.env, cwd=ROOT).returncode
        if code != 0:
            raise QuickstartError(f"{path} exited with status {code} (its output is above)")


def say(message: str) -> None:
    print(f"quickstart: {message}", flush=True)


def _checkpoint(path: str, log_dir: str, steps: int) -> str:
    """The checkpoint a training step must have left; a run already trained past `steps` without it says so."""
    if not os.path.exists(path):
        raise QuickstartError(f"{path} was not written: {log_dir} holds a run that was saved at other steps than "
                              f"{steps}; use --out DIR for a fresh run or --steps to match")
    return path


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def run_adm(run: Launcher, out: str, budget: Budget) -> list[str]:
    """Train the diffusion model and the classifier, sample at each classifier scale; the judge's pairs."""
    batch = str(64 // run.ranks)
    say(f"training the diffusion model ({budget.train_steps} steps)")
    run.script("scripts/image_train.py", "--data_dir", f"{out}/digits", "--log_dir", f"{out}/diffusion",
               "--image_size", "16", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
               "--attention_resolutions", "", "--lr", "2e-3", "--batch_size", batch, "--ema_rate", "0.995",
               "--random_flip", "False", "--max_steps", budget.train_steps, "--save_interval", "500",
               "--log_interval", "250", "--resume_checkpoint", "auto")
    say(f"training the noisy classifier ({budget.classifier_steps} steps)")
    run.script("scripts/classifier_train.py", "--data_dir", f"{out}/digits", "--log_dir", f"{out}/classifier",
               "--image_size", "16", "--classifier_width", "32", "--classifier_depth", "1",
               "--classifier_channel_mult", "1,2", "--classifier_attention_resolutions", "",
               "--classifier_pool", "adaptive", "--num_classes", "10", "--lr", "1e-3", "--batch_size", batch,
               "--iterations", budget.classifier_steps, "--random_crop", "False", "--random_flip", "False",
               "--save_interval", "500", "--log_interval", "250", "--resume_checkpoint", "auto")
    diffusion = _checkpoint(f"{out}/diffusion/ema_0.995_{budget.train_steps:06d}.pt", f"{out}/diffusion",
                            budget.train_steps)
    classifier = _checkpoint(f"{out}/classifier/model{budget.classifier_steps:06d}.pt", f"{out}/classifier",
                             budget.classifier_steps)
    samples = f"{out}/samples/{_stem(diffusion)}_{_stem(classifier)}_{budget.respacing}"
    pairs = []
    for scale in budget.scales:
        say(f"sampling at guidance scale {scale}")
        n = 10 * budget.per_digit
        run.script("scripts/classifier_sample.py", "--model_path", diffusion, "--classifier_path", classifier,
                   "--classifier_scale", scale, "--classes", "0-9", "--num_samples", n, "--batch_size", "100",
                   "--use_ddim", "True", "--timestep_respacing", budget.respacing,
                   "--log_dir", f"{samples}/scale{scale}", "--progress", "False")
        pairs.append(f"{scale}={samples}/scale{scale}/samples_{n}x16x16x3.npz")
    return pairs


def run_edm2(run: Launcher, out: str, budget: Budget) -> list[str]:
    """Train EDM2's network, reconstruct its EMA at EDM2_SIGMA_REL, sample at each CFG scale; the judge's pairs."""
    steps = budget.train_steps
    say(f"training EDM2's network ({steps} steps, power-function EMAs 0.05,0.10)")
    run.script("scripts/image_train.py", "--data_dir", f"{out}/digits", "--log_dir", f"{out}/diffusion",
               "--image_size", "16", "--arch", "edm2", "--model_channels", "32", "--channel_mult", "1,2",
               "--num_blocks", "1", "--attn_resolutions", "", "--class_cond", "True", "--num_classes", "10",
               "--class_dropout_prob", "0.1", "--lr", "1e-2", "--lr_rampup_images", "4000", "--lr_ref_images",
               "8000", "--p_mean", "-0.8", "--p_std", "1.6", "--batch_size", str(64 // run.ranks), "--ema_rate",
               "0.995", "--random_flip", "False", "--phema_stds", "0.05,0.10", "--phema_interval", steps * 4,
               "--max_steps", steps, "--save_interval", "500", "--log_interval", "250", "--resume_checkpoint",
               "auto")
    model = f"{out}/diffusion/phema_recon_{EDM2_SIGMA_REL:.3f}_{steps:06d}.pt"
    if not os.path.exists(model):
        run.script("scripts/reconstruct_ema.py", "--run_dir", f"{out}/diffusion", "--sigma_rel", EDM2_SIGMA_REL,
                   parallel=False)
    model = _checkpoint(model, f"{out}/diffusion", steps)
    samples = f"{out}/samples/{_stem(model)}_heun18"
    pairs = []
    for scale in budget.scales:
        say(f"sampling with classifier-free guidance at scale {scale}")
        n = 10 * budget.per_digit
        run.script("scripts/image_sample.py", "--model_path", model, "--cfg_scale", scale, "--classes", "0-9",
                   "--num_samples", n, "--batch_size", "100", "--sampler", "heun", "--steps", "18",
                   "--log_dir", f"{samples}/cfg{scale}", "--progress", "False")
        pairs.append(f"{scale}={samples}/cfg{scale}/samples_{n}x16x16x3.npz")
    return pairs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or default_out(args.recipe, args.fast)
    if os.path.exists(out) and not os.path.isdir(out):
        raise QuickstartError(f"--out {out}: exists and is not a folder")
    budget = budget_for(args)
    if not args.skip_setup:
        if subprocess.run(["bash", os.path.join(ROOT, "setup.sh")], cwd=ROOT).returncode != 0:
            raise QuickstartError("setup.sh failed (its output is above)")
    python = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(python):
        raise QuickstartError(f"{python} not found: run bash setup.sh first (or leave out --skip_setup)")
    run = Launcher.detect(python)
    say(f"output in {out}, launching with: {' '.join((*run.prefix, run.python))}")
    run.script("datasets/digits.py", "--out_dir", f"{out}/digits", "--image_size", "16", "--split", "train",
               parallel=False)
    pairs = (run_edm2 if args.recipe == "edm2" else run_adm)(run, out, budget)
    say("judging the samples against the real digits")
    run.script("datasets/digits_judge.py", "--out_dir", f"{out}/judge", "--column",
               "CFG scale" if args.recipe == "edm2" else "guidance scale", "--plot", f"{out}/judge/tradeoff.png",
               *pairs, parallel=False)
    say(f"grids in {out}/judge/grid_*.png, plot in {out}/judge/tradeoff.png, numbers in {out}/judge/results.json")


def cli(argv: list[str] | None = None) -> int:
    """main() with its errors as one line on stderr and exit code 2."""
    try:
        main(argv)
    except QuickstartError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; a rerun with the same flags resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
