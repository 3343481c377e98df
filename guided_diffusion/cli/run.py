"""What every script shares: error reporting, seeding, the training flags of the original scripts, and the opening
of the training scripts (their flags resolved once into frozen settings, then the log folder with args.json)."""

from __future__ import annotations

import os
import random
import sys
import traceback
from typing import Any, Callable

import numpy as np
import torch

from guided_diffusion import dist_util

from guided_diffusion import logger
from guided_diffusion.loading.checkpoint_flags import explicit_flags
from guided_diffusion.dist_util import clear_interrupted_writes
from guided_diffusion.cli.fileio import DiskFullError
from guided_diffusion.cli.parsers import OneLineParser, RaisingParser, make_parser  # noqa: F401 (the scripts import them from here)
from guided_diffusion.training.resume_flags import check_resume
from guided_diffusion.cli.settings import freeze, resolve
from guided_diffusion.training.state import write_args_json

# A layer of flags: (the settings so far, the flags given on the command line) -> the flags it implies.
Layer = Callable[[Any, set], dict]

# Errors a user can cause: reported in one line with exit code 2 instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError, DiskFullError)


def run(main: Callable[[], None], script: str | None = None) -> None:
    """Run a script's main(); user errors become one line on stderr (named after `script`, default the running
    file) and exit code 2."""
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("GUIDED_DIFFUSION_TRACEBACK"):
            traceback.print_exc()
        script = script or os.path.basename(sys.argv[0])
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"{script}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        dist_util.cleanup()


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (each rank gets seed + rank, so ranks draw different noise)."""
    seed = seed + dist_util.get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_defaults() -> dict:
    """Flags of the original image_train.py / super_res_train.py, plus the new ones (defaults keep the original
    behaviour, except that logs go to ./runs/<script>-<timestamp> rather than a temporary folder)."""
    return dict(
        data_dir="",
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        batch_size=1,
        microbatch=-1,
        ema_rate="0.9999",
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        use_fp16=False,
        fp16_scale_growth=1e-3,
        # New flags.
        use_bf16=False,
        max_steps=0,
        log_dir="",
        seed=0,
        random_flip=True,
        random_crop=False,
        skip_bad_images=False,
        num_workers=1,
        # Augmentations recorded for control conditioning (control.py): rescale each source by a factor in
        # "lo,hi" before cropping; random crops cover at least min_crop_frac^2 of the short side's square.
        random_resize="",
        min_crop_frac=0.8,
        # Power-function EMAs (EDM2) of these relative widths, for reconstruct_ema.py: snapshots every
        # phema_interval training images (0: at every save).
        phema_stds="",
        phema_interval=0,
        # Adam's betas ("" = 0.9,0.999; 0.9,0.99 for --arch edm2) and EDM2's learning-rate schedule in images:
        # lr / sqrt(max(images / lr_ref_images, 1)) after a linear ramp-up over lr_rampup_images (0 = off).
        adam_betas="",
        lr_ref_images=0.0,
        lr_rampup_images=0.0,
    )


def require_data_dir(data_dir: str, flag: str = "data_dir") -> None:
    if not data_dir:
        raise ValueError(f"--{flag} is required: a folder of training images")


def training_settings(args, argv: list[str] | None, preset: Layer, *implied: Layer,
                      spell_out: Callable[[dict], dict] | None = None) -> Any:
    """A training run's flags resolved once into frozen settings (settings.py), which the run reads from then on;
    `args`, the parsed namespace, is left as it is. argv: the command line (default sys.argv).

    Each layer checks the settings so far (one-line ValueErrors) and returns the flags it implies. `preset` (the
    objective and EDM2's preset: sigma_space.edm_flag_layer) runs first, so its errors come first, then each of
    `implied` (what the data implies: the class count and names, the latents' VAE) in turn. They merge in one
    order, each later source winning: the parser's defaults, the data-implied layers, the preset, the command line.
    A flag given as "" asks for the value it stands for (--objective "": the architecture's own; --vae "": the
    dataset's), which the layers fill in; spell_out(command line) gives values written in full before any layer
    runs (a local --vae folder as its absolute path)."""
    given = dict(vars(args))
    if spell_out is not None:
        given.update(spell_out(given))
    explicit = {flag for flag in explicit_flags(argv) if given.get(flag) != ""}
    preset_layer = preset(freeze(given), explicit)
    layers: list[dict] = []
    for layer in implied:
        layers.append(layer(freeze(resolve(given, explicit, *layers, preset_layer)), explicit))
    return freeze(resolve(given, explicit, *layers, preset_layer))


def start(settings, script: str) -> str:
    """Set up the process group, the log folder (printed first) with args.json (every flag of the resolved
    settings), and the seeds; returns the log folder. A run that would overwrite another run's checkpoints, or
    resume them with flags that change what they are, stops first (resume_flags.check_resume), leaving the folder
    and its args.json as they were."""
    dist_util.setup_dist()
    log_dir = logger.configure(dir=settings.log_dir or None, script=script)
    check_resume(vars(settings), log_dir)
    clear_interrupted_writes(log_dir)
    write_args_json(vars(settings), log_dir)
    seed_all(settings.seed)
    return log_dir
