"""Which training flags a run may change when it continues from its checkpoints, and the check made before
args.json is written.

args.json describes every checkpoint in its folder: sampling scripts read the network, the diffusion process
and the label set from it. So a run that writes into a folder that already holds checkpoints must continue
one of them (--resume_checkpoint auto, or a checkpoint of that folder) with the flags in CHECKPOINT_FLAGS
unchanged; a different flag there is refused with a one-line error naming it and both values, before anything
(args.json included) is written. Flags in RUN_FLAGS (learning rate, intervals, step budget, batch size, data,
augmentation, precision) change how training proceeds, not what a checkpoint is, and may change freely. A flag
in neither set (one added later) is treated as a checkpoint flag.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from guided_diffusion import logger
from guided_diffusion.loading.checkpoint_flags import checkpoint_args
from guided_diffusion.training.phema import read_index
from guided_diffusion.training.state import find_resume_checkpoint, parse_ema_rates, parse_phema_stds

# Flags that fix what a checkpoint is: the network, the diffusion process or objective the network was trained
# for, its labels and conditioning, and the averaged weights the run writes beside it (EMA and power-function
# EMA files). Changing one under existing checkpoints is refused.
CHECKPOINT_FLAGS = frozenset({
    # the ADM U-Net (and the upsampler's sizes)
    "image_size", "large_size", "small_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample",
    "num_head_channels", "attention_resolutions", "channel_mult", "use_scale_shift_norm", "resblock_updown",
    "use_new_attention_order", "learn_sigma",
    # the noisy classifier
    "classifier_width", "classifier_depth", "classifier_attention_resolutions", "classifier_channel_mult",
    "classifier_pool", "classifier_resblock_updown", "classifier_use_scale_shift_norm", "noised",
    # the diffusion process and the objective
    "diffusion_steps", "noise_schedule", "predict_xstart", "use_kl", "rescale_learned_sigmas", "rescale_timesteps",
    "objective", "sigma_data", "p_mean", "p_std",
    # EDM2's network
    "arch", "edm2_preset", "model_channels", "num_blocks", "attn_resolutions",
    # labels and conditioning (dropout > 0 adds the null label or record the sampler's guidance relies on)
    "class_cond", "num_classes", "class_dropout_prob", "class_attention", "control_cond", "control_gates",
    "control_gating", "control_dropout_prob",
    # the averaged weights saved with every checkpoint
    "ema_rate", "phema_stds",
    # what the network sees: pixels, or latents of this VAE (the encoder sampling decodes with)
    "encoder", "vae",
})

# Flags a continued run may change: they steer training, not what its checkpoints are.
RUN_FLAGS = frozenset({
    # optimization and its schedule
    "lr", "weight_decay", "adam_betas", "lr_anneal_steps", "anneal_lr", "lr_ref_images", "lr_rampup_images",
    "schedule_sampler", "timestep_respacing", "dropout",
    # how long and how often
    "max_steps", "iterations", "log_interval", "save_interval", "eval_interval", "phema_interval",
    # batches, data and augmentation
    "batch_size", "microbatch", "data_dir", "val_data_dir", "num_workers", "skip_bad_images", "seed",
    "random_flip", "random_crop", "random_resize", "min_crop_frac",
    # precision and memory
    "use_fp16", "use_bf16", "fp16_scale_growth", "classifier_use_fp16", "use_checkpoint",
    # where the run lives
    "log_dir", "resume_checkpoint",
})

_CHECKPOINT_NAME = re.compile(r"(model\d+|opt\d+|ema_[0-9.]+_\d+|phema_[0-9.]+_\d+)\.pt")


def _ema_rates(value: Any) -> list[float]:
    return parse_ema_rates(value)


def _phema_stds(value: Any) -> list[float]:
    return [round(s, 6) for s in parse_phema_stds(value)]


# Flags compared by meaning rather than spelling ("0.99" and "0.990" name the same EMA files).
_NORMALIZE: dict[str, Callable[[Any], Any]] = {"ema_rate": _ema_rates, "phema_stds": _phema_stds}


def checkpoint_files(folder: str) -> list[str]:
    """The training checkpoints in a folder (model, optimizer, EMA and power-function EMA snapshot files), sorted
    by step."""
    try:
        names = [n for n in os.listdir(folder) if _CHECKPOINT_NAME.fullmatch(n)]
    except OSError:
        return []
    return sorted(names, key=lambda n: (int(re.search(r"(\d+)\.pt$", n).group(1)), n))


def _same(flag: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    normalize = _NORMALIZE.get(flag)
    if normalize is None:
        return False
    try:
        return normalize(a) == normalize(b)
    except (ValueError, TypeError):
        return False


def changed_flags(saved: dict, args: dict) -> list[str]:
    """The flags outside RUN_FLAGS whose value differs from the saved one, as "--flag SAVED (now NEW)", in the
    order of args (flags the saved file lacks are skipped: they predate it)."""
    return [f"--{k} {_show(saved[k])} (now {_show(v)})" for k, v in args.items()
            if k not in RUN_FLAGS and k in saved and not _same(k, saved[k], v)]


def _show(value: Any) -> str:
    return '""' if value == "" else str(value)


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_resume(args: dict, log_dir: str) -> None:
    """Refuse (ValueError, one line) a training run that would overwrite checkpoints of another run or describe
    them by flags they were not trained with: called before args.json is written. The rules:

    - log_dir holds checkpoints: the run must continue one of them (--resume_checkpoint auto or a checkpoint in
      log_dir), with the CHECKPOINT_FLAGS of log_dir/args.json; without an args.json (a folder of the original
      code) the files still tell a changed --ema_rate (no EMA file of the newest checkpoint) and a dropped
      --phema_stds (snapshots in phema.json);
    - --resume_checkpoint names a checkpoint elsewhere: the CHECKPOINT_FLAGS of the args.json beside it must
      match too (a checkpoint without one, such as a released model, cannot be checked and is accepted)."""
    spec = args.get("resume_checkpoint", "")
    if spec and spec != "auto" and "://" not in spec and not os.path.exists(spec):
        raise FileNotFoundError(f"--resume_checkpoint not found: {spec}")
    local = spec == "auto" or (spec and "://" not in spec and _same_folder(os.path.dirname(os.path.abspath(spec)),
                                                                          log_dir))
    held = checkpoint_files(log_dir)
    if held and not local:
        how = "starts anew" if not spec else f"continues {spec}"
        newest = ([n for n in held if n.startswith("model")] or held)[-1]
        raise ValueError(f"--log_dir {log_dir} holds checkpoints of another run (up to {newest}) and this run "
                         f"{how}: resume it with --resume_checkpoint auto, or use another --log_dir")
    if held:
        saved = checkpoint_args(os.path.join(log_dir, held[-1]))
        if saved is not None and (changes := changed_flags(saved, args)):
            raise ValueError(f"--log_dir {log_dir} holds checkpoints trained with other flags: use "
                             f"{', '.join(changes)} to resume them, or use another --log_dir")
        if saved is None:
            logger.warn(f"no args.json in {log_dir}: the flags its checkpoints were trained with cannot be checked")
            _check_files(args, log_dir, spec)
    elif spec and not local:
        saved = checkpoint_args(spec) if "://" not in spec else None
        if saved is not None and (changes := changed_flags(saved, args)):
            raise ValueError(f"--resume_checkpoint {spec} was trained with other flags: use {', '.join(changes)} "
                             "to resume it")


def _check_files(args: dict, log_dir: str, spec: str) -> None:
    """What the checkpoint files of a folder without args.json tell: the EMA files of the newest checkpoint and
    the power-function EMA snapshots (phema.json)."""
    if spec == "auto" and "ema_rate" in args:
        find_resume_checkpoint(spec, log_dir, parse_ema_rates(args["ema_rate"]))
    stds = sorted({entry["std"] for entry in read_index(log_dir).values()})
    if "phema_stds" in args and not args["phema_stds"] and stds:
        raise ValueError(f"--phema_stds is not given, but {log_dir} holds power-function EMA snapshots of widths "
                         f"{','.join(f'{s:g}' for s in stds)}: pass --phema_stds with them to keep the series going, "
                         "or use another --log_dir")
