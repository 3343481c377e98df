"""What every sampling script shares.

- Sample i uses the random stream seeded with seed + i (and its label, when drawn at random, too), so the
  same command gives the same images for any batch size and any number of processes.
- Work is cut into batches of consecutive indices dealt round-robin to the ranks; each finished batch is
  written at once to a part file, so a long run holds no samples in memory and a rerun resumes where it stopped.
- At the end rank 0 streams the parts into samples_{N}x{H}x{W}x3.npz (arr_0 uint8 NHWC, arr_1 labels when
  class-conditional, as the original) and a PNG grid of the first 64 images.
- Architecture flags come from the args.json beside a checkpoint trained here, unless given explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import cli, dist_util, logger, samplers
from .checkpoint import load_weights
from .denoiser import Denoiser, classifier_guided
from .fileio import NpzArray, atomic_write, write_npz_stream
from .rng import SampleRNG
from .script_util import add_dict_to_argparser, null_label

# Flags that describe a trained network (read back from args.json); the rest are choices made when sampling.
_NOT_ARCHITECTURE = {"timestep_respacing", "use_fp16", "classifier_use_fp16", "use_checkpoint", "dropout"}


# ----- flags ----------------------------------------------------------------------------------------------

def explicit_flags(argv: list[str] | None = None) -> set[str]:
    """Names of the flags given on the command line (--name value or --name=value)."""
    argv = sys.argv[1:] if argv is None else argv
    return {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}


def checkpoint_args(path: str) -> dict | None:
    """The flags saved in args.json beside a checkpoint, or None."""
    json_path = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
    if not os.path.exists(json_path):
        return None
    with open(json_path) as f:
        return json.load(f)


def apply_checkpoint_args(args, path: str, keys, explicit: set[str], flag: str) -> dict | None:
    """Fill the architecture flags in `keys` from the args.json beside `path` unless given explicitly; an
    explicit flag that disagrees with the file wins and is reported. Returns the file's flags (or None)."""
    saved = checkpoint_args(path)
    if saved is None:
        return None
    for key in keys:
        if key in _NOT_ARCHITECTURE or key not in saved:
            continue
        if key in explicit:
            if saved[key] != getattr(args, key):
                logger.warn(f"--{key} {getattr(args, key)} given; args.json beside --{flag} {path} says "
                            f"{saved[key]}: using {getattr(args, key)}")
        else:
            setattr(args, key, saved[key])
    return saved


def namespace_from_flags(defaults: dict, flags: str, checkpoint: str, flag: str) -> argparse.Namespace:
    """Flags for one network of a pipeline: defaults, then its args.json, then the flag string (which wins)."""
    parser = cli.RaisingParser(prog=f"the flags {flags!r} for {checkpoint}", add_help=False)
    add_dict_to_argparser(parser, defaults)
    tokens = shlex.split(flags)
    args = parser.parse_args(tokens)
    apply_checkpoint_args(args, checkpoint, defaults, explicit_flags(tokens), flag)
    return args


def require_file(path: str, flag: str) -> None:
    if not path:
        raise ValueError(f"--{flag} is required")
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"--{flag} not found: {path}")


def default_log_dir(script: str, args, ignore=("batch_size", "log_dir", "grid", "progress")) -> str:
    """runs/<script>-<checkpoint name>-<hash of the flags that change the samples>: a rerun of the same command
    lands in the same folder and resumes there."""
    relevant = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]
    names = [os.path.splitext(os.path.basename(v))[0] for k, v in sorted(relevant.items())
             if k.endswith("model_path") and v]
    return os.path.join("runs", "-".join([script, *names[:1], digest]))


def configure_logging(script: str, args) -> str:
    """Log into --log_dir, else $OPENAI_LOGDIR, else runs/<script>-<checkpoint>-<hash>; returns the folder."""
    return logger.configure(dir=args.log_dir or None, default=default_log_dir(script, args))


def parse_classes(spec: str, num_classes: int) -> list[int] | None:
    """Labels from --classes ("3,7" or "3-7"), or None for random labels."""
    if not spec:
        return None
    labels = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"--classes {spec!r}: expected labels like 3,7 or ranges like 0-9")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        labels += list(range(low, high + 1))
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad or not labels:
        raise ValueError(f"--classes {spec!r}: labels must lie in 0..{num_classes - 1}")
    return labels


def labels_for(indices: list[int], seed: int, num_classes: int, classes: list[int] | None) -> torch.Tensor:
    """Sample i's label: classes[i % len(classes)], or random from its own seed."""
    if classes:
        return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)
    return torch.tensor([int(np.random.default_rng([seed, i, 1]).integers(num_classes)) for i in indices],
                        dtype=torch.long)


# ----- networks -------------------------------------------------------------------------------------------

def load_network(model: torch.nn.Module, path: str, flag: str, use_fp16: bool = False) -> torch.nn.Module:
    """Load weights (read once, shared across ranks), move to this rank's device, eval mode, optional fp16."""
    require_file(path, flag)
    load_weights(model, dist_util.load_state_dict(path), source=path)
    model.to(dist_util.dev())
    if use_fp16:
        model.convert_to_fp16()
    return model.eval()


def autocast(use_bf16: bool):
    """bfloat16 autocast on this rank's device when asked, else a no-op context."""
    return torch.autocast(dist_util.dev().type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def model_fn_for(model, class_cond: bool, use_bf16: bool = False) -> Callable:
    """model(x, t, y) that ignores labels for unconditional models and returns float32."""

    def model_fn(x, t, y=None, **kwargs):
        with autocast(use_bf16):
            return model(x, t, y=y if class_cond else None, **kwargs).float()

    return model_fn


def classifier_free_model_fn(model_fn: Callable, scale: float, null_label: int) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2021) of a model trained with label dropout: the prediction
    out_u + scale (out_c - out_u) from the labels y (out_c) and the null label (out_u), both in one batch.
    The output is affine in the prediction, so every sampler sees D_u + scale (D_c - D_u) (eps, x_0 and the
    denoiser alike); learned-variance channels are the conditional ones. scale 1 is the conditional model,
    0 the unconditional one (a single pass)."""

    def guided(x, t, y=None, **kwargs):
        if y is None:
            raise ValueError("classifier-free guidance needs labels y")
        if scale == 0:
            return model_fn(x, t, y=torch.full_like(y, null_label), **kwargs)
        both = model_fn(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]),
                        **{k: torch.cat([v, v]) for k, v in kwargs.items()})
        cond, uncond = both.chunk(2)
        channels = x.shape[1]
        mixed = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([mixed, cond[:, channels:]], dim=1)

    return guided


def guided_model_fn(model, args) -> Callable:
    """model_fn_for the script's model, with classifier-free guidance when --cfg_scale is not 1."""
    model_fn = model_fn_for(model, args.class_cond, args.use_bf16)
    if args.cfg_scale == 1:
        return model_fn
    null = null_label(args.num_classes, args.class_dropout_prob) if args.class_cond else None
    if null is None:
        raise ValueError(f"--cfg_scale {args.cfg_scale} needs a class-conditional model trained with label dropout "
                         f"(image_train.py --class_cond True --class_dropout_prob 0.1); this one has --class_cond "
                         f"{args.class_cond} --class_dropout_prob {args.class_dropout_prob}")
    return classifier_free_model_fn(model_fn, args.cfg_scale, null)


def classifier_cond_fn(classifier, scale: float, use_bf16: bool = False) -> Callable:
    """The guidance gradient scale * grad_x log p(y | x_t, t) of a noisy classifier."""

    def cond_fn(x, t, y=None, **_):
        if y is None:
            raise ValueError("classifier guidance needs labels y")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            with autocast(use_bf16):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[range(len(logits)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


def to_uint8(sample: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats to uint8 NHWC, converted as the original scripts do."""
    return ((sample + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ----- the diffusion samplers -----------------------------------------------------------------------------

SAMPLERS = ("ddpm", "ddim", "euler", "heun", "edm_stochastic", "dpmpp_2m")
SIGMA_SCHEDULES = ("karras", "model")


@dataclass
class SamplerOptions:
    """How to run the reverse process.

    ddpm and ddim step through the (possibly respaced) process as the original. euler, heun, edm_stochastic
    and dpmpp_2m run over the model's denoiser D(x; sigma) (guided_diffusion.samplers) at the noise levels of
    sigma_schedule: "karras" (EDM eq. 5 with steps, sigma_min, sigma_max and rho, the range clamped to the
    model's levels and each step rounded to a trained level) or "model" (every level of the process, as chosen
    by --timestep_respacing). edm_stochastic adds EDM's churn (s_churn, s_tmin, s_tmax, s_noise).
    """

    use_ddim: bool = False
    clip_denoised: bool = True
    eta: float = 0.0
    progress: bool = False
    sampler: str = ""  # "" = ddim if use_ddim else ddpm
    steps: int = 18
    sigma_schedule: str = "karras"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self):
        if self.sampler not in ("", *SAMPLERS):
            raise ValueError(f"--sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if self.use_ddim and self.sampler not in ("", "ddim"):
            raise ValueError(f"--use_ddim True conflicts with --sampler {self.sampler}: drop --use_ddim")
        if self.sigma_schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"--sigma_schedule {self.sigma_schedule!r}: choose one of {', '.join(SIGMA_SCHEDULES)}")
        for flag in ("sigma_min", "sigma_max", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            if math.isnan(getattr(self, flag)):
                raise ValueError(f"--{flag} must be a number, got nan")
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.sigma_min > 0, f"--sigma_min must be > 0, got {self.sigma_min}"),
            (self.sigma_min < self.sigma_max,
             f"--sigma_min {self.sigma_min} must be below --sigma_max {self.sigma_max}"),
            (self.rho > 0, f"--rho must be > 0, got {self.rho}"),
            (self.s_churn >= 0, f"--s_churn must be >= 0, got {self.s_churn}"),
            (self.s_tmin <= self.s_tmax, f"--s_tmin {self.s_tmin} must not exceed --s_tmax {self.s_tmax}"),
            (self.s_noise > 0, f"--s_noise must be > 0, got {self.s_noise}"),
            (self.sampler != "edm_stochastic" or self.s_churn > 0,
             "--sampler edm_stochastic needs --s_churn > 0 (with 0 it is --sampler heun)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def name(self) -> str:
        """The sampler that runs."""
        return self.sampler or ("ddim" if self.use_ddim else "ddpm")


def noise_levels(denoiser: Denoiser, options: SamplerOptions) -> torch.Tensor:
    """The decreasing noise levels sigma_0 > ... > sigma_{N-1} > 0 = sigma_N of an EDM-style sampler."""
    if options.sigma_schedule == "model":
        return samplers.append_zero(denoiser.sigmas.flip(0))
    low, high = max(options.sigma_min, denoiser.sigma_min), min(options.sigma_max, denoiser.sigma_max)
    if low >= high:
        raise ValueError(f"--sigma_min {options.sigma_min} and --sigma_max {options.sigma_max} leave no range "
                         f"inside the model's noise levels [{denoiser.sigma_min:.4g}, {denoiser.sigma_max:.4g}]")
    return samplers.append_zero(denoiser.round_sigma(samplers.karras_sigmas(options.steps, low, high, options.rho)))


def run_sampler(diffusion, model_fn, shape, model_kwargs: dict, cond_fn, rng: SampleRNG,
                options: SamplerOptions) -> torch.Tensor:
    """Samples [N, C, H, W] in [-1, 1] from per-sample random streams."""
    if options.name in ("ddpm", "ddim"):
        common = dict(clip_denoised=options.clip_denoised, model_kwargs=model_kwargs, cond_fn=cond_fn,
                      device=dist_util.dev(), progress=options.progress, rng=rng)
        if options.name == "ddim":
            return diffusion.ddim_sample_loop(model_fn, shape, eta=options.eta, **common)
        return diffusion.p_sample_loop(model_fn, shape, **common)

    denoiser = Denoiser(diffusion, model_fn, clip_denoised=options.clip_denoised)
    guided = denoiser if cond_fn is None else classifier_guided(denoiser, cond_fn)
    sigmas = noise_levels(denoiser, options)
    # x_T ~ N(0, I) in the network's input space, as ADM: x = z / c_in(sigma_0) (EDM's sigma_0 z is nearly so).
    x = rng.randn(shape, device=dist_util.dev(), dtype=torch.float64) * math.sqrt(float(sigmas[0]) ** 2 + 1)

    def denoise(x, sigma):
        return guided(x, sigma, **model_kwargs)

    if options.name == "euler":
        x = samplers.sample_euler(denoise, x, sigmas, progress=options.progress)
    elif options.name == "dpmpp_2m":
        x = samplers.sample_dpmpp_2m(denoise, x, sigmas, progress=options.progress)
    elif options.name == "heun":
        x = samplers.sample_heun(denoise, x, sigmas, progress=options.progress)
    else:
        x = samplers.sample_heun(denoise, x, sigmas, rng=rng, s_churn=options.s_churn, s_tmin=options.s_tmin,
                                 s_tmax=options.s_tmax, s_noise=options.s_noise,
                                 round_sigma=denoiser.round_sigma, progress=options.progress)
    return x.float()


def sampling_defaults() -> dict:
    """Flags of the original sampling scripts, plus the new ones (whose defaults keep the original behaviour)."""
    return dict(
        clip_denoised=True,
        num_samples=10000,
        batch_size=16,
        use_ddim=False,
        model_path="",
        # New flags.
        seed=0,
        classes="",
        eta=0.0,
        use_bf16=False,
        log_dir="",
        grid=True,
        progress=True,
        # The sampler (SamplerOptions): "" keeps the original's choice by --use_ddim.
        sampler="",
        steps=18,
        sigma_schedule="karras",
        sigma_min=0.002,
        sigma_max=80.0,
        rho=7.0,
        s_churn=0.0,
        s_tmin=0.0,
        s_tmax=math.inf,
        s_noise=1.0,
        # Classifier-free guidance of a model trained with --class_dropout_prob > 0 (1 = off).
        cfg_scale=1.0,
    )


_OPTION_FLAGS = ("use_ddim", "clip_denoised", "eta", "sampler", "steps", "sigma_schedule", "sigma_min",
                 "sigma_max", "rho", "s_churn", "s_tmin", "s_tmax", "s_noise")


def sampler_options(args) -> SamplerOptions:
    """SamplerOptions from parsed flags (ValueError naming the flag for bad values)."""
    return SamplerOptions(progress=args.progress and dist_util.get_rank() == 0,
                          **{k: getattr(args, k) for k in _OPTION_FLAGS})


def image_batch_fn(model, diffusion, args, cond_fn=None) -> Callable:
    """make_batch(indices) for a base (non-upsampling) model: labels (when class-conditional) and noise from
    each sample's seed, optional guidance, uint8 images out."""
    model_fn = guided_model_fn(model, args)
    labelled = args.class_cond or cond_fn is not None  # guidance of an unconditional model needs labels too
    classes = parse_classes(args.classes, args.num_classes) if labelled else None
    options = sampler_options(args)

    def make_batch(indices):
        labels = None
        kwargs = {}
        if labelled:
            labels = labels_for(indices, args.seed, args.num_classes, classes)
            kwargs["y"] = labels.to(dist_util.dev())
        rng = SampleRNG([args.seed + i for i in indices])
        shape = (len(indices), 3, args.image_size, args.image_size)
        return to_uint8(run_sampler(diffusion, model_fn, shape, kwargs, cond_fn, rng, options)), labels

    return make_batch


# ----- writing samples ------------------------------------------------------------------------------------

def output_name(num_samples: int, height: int, width: int) -> str:
    return f"samples_{num_samples}x{height}x{width}x3"


class SampleWriter:
    """Part files per finished batch, resumable, assembled in index order at the end."""

    def __init__(self, folder: str, num_samples: int, height: int, width: int, with_labels: bool):
        if num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {num_samples}")
        self.folder = folder
        self.num_samples = num_samples
        self.with_labels = with_labels
        self.name = output_name(num_samples, height, width)
        self.path = os.path.join(folder, self.name + ".npz")
        self.parts = os.path.join(folder, self.name + ".parts")

    def _done_ranges(self) -> list[tuple[int, int, str]]:
        if not os.path.isdir(self.parts):
            return []
        out = []
        for name in os.listdir(self.parts):
            match = re.fullmatch(r"part_(\d+)_(\d+)\.npz", name)
            if match:
                out.append((int(match.group(1)), int(match.group(2)), os.path.join(self.parts, name)))
        return sorted(out)

    def my_batches(self, batch_size: int) -> tuple[list[list[int]], int]:
        """This rank's batches of missing indices (runs of consecutive indices, cut at batch_size), and how many
        samples are already done."""
        if os.path.exists(self.path):
            return [], self.num_samples
        done = np.zeros(self.num_samples, dtype=bool)
        for start, stop, _ in self._done_ranges():
            done[start:stop] = True
        done = dist_util.broadcast_object(done)
        batches, run = [], []
        for i in np.flatnonzero(~done).tolist():
            if run and (i != run[-1] + 1 or len(run) == batch_size):
                batches.append(run)
                run = []
            run.append(i)
        if run:
            batches.append(run)
        rank, world = dist_util.get_rank(), dist_util.get_world_size()
        return batches[rank::world], int(done.sum())

    def write(self, indices: list[int], images: np.ndarray, labels: torch.Tensor | None) -> None:
        """Save one finished batch (consecutive indices) atomically."""
        arrays = {"arr_0": images}
        if self.with_labels:
            arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
        write_npz_stream(os.path.join(self.parts, f"part_{indices[0]:08d}_{indices[-1] + 1:08d}.npz"), arrays)

    def finish(self, grid: bool = True) -> str:
        """Assemble the parts into the final npz (rank 0, streaming) and the grid; every rank waits."""
        dist_util.barrier()
        if dist_util.get_rank() == 0 and not os.path.exists(self.path):
            ranges = self._done_ranges()
            covered = sum(stop - start for start, stop, _ in ranges)
            if covered != self.num_samples:
                raise RuntimeError(f"{self.parts} covers {covered} of {self.num_samples} samples")
            first = NpzArray(ranges[0][2])
            arrays = {"arr_0": ((self.num_samples, *first.shape[1:]), np.uint8,
                                (NpzArray(p).read() for _, _, p in ranges))}
            if self.with_labels:
                arrays["arr_1"] = np.concatenate([NpzArray(p, "arr_1").read() for _, _, p in ranges])
            write_npz_stream(self.path, arrays)
            if grid:
                save_grid(NpzArray(self.path).read(0, 64), os.path.join(self.folder, self.name + ".png"))
            shutil.rmtree(self.parts)
        dist_util.barrier()
        return self.path


def save_grid(images: np.ndarray, path: str, columns: int = 8) -> None:
    """A PNG grid of uint8 NHWC images, `columns` per row, 2-pixel gaps."""
    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = image
    atomic_write(path, lambda f: Image.fromarray(canvas).save(f, format="PNG"))


def generate(writer: SampleWriter, batch_size: int, make_batch: Callable, grid: bool = True) -> str:
    """Run make_batch(indices) -> (uint8 NHWC images, labels or None) over this rank's missing batches with
    a progress bar, write each batch, and assemble the output; returns the npz path."""
    batches, done = writer.my_batches(batch_size)
    if done == writer.num_samples:
        logger.log(f"all {done} samples already in {writer.path}")
    elif done:
        logger.log(f"resuming: {done} of {writer.num_samples} samples already made")
    world = dist_util.get_world_size()
    with tqdm(total=writer.num_samples, initial=done, desc="samples", disable=dist_util.get_rank() != 0) as bar:
        for indices in batches:
            images, labels = make_batch(indices)
            writer.write(indices, images, labels)
            bar.update(min(len(indices) * world, writer.num_samples - bar.n))
    path = writer.finish(grid=grid)
    logger.log(f"created {writer.num_samples} samples: {path}")
    return path


# ----- base samples for super-resolution ----------------------------------------------------------------

class BaseSamples:
    """Low-resolution images (and labels) from an npz, read by index; index i uses base image i % count."""

    def __init__(self, path: str, small_size: int, need_labels: bool):
        require_file(path, "base_samples")
        self.path = path
        self.images = NpzArray(path, "arr_0")
        shape = self.images.shape
        if len(shape) != 4 or shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"--base_samples {path}: arr_0 must be uint8 NHWC RGB images, got {shape} "
                             f"{self.images.dtype}")
        if shape[1:3] != (small_size, small_size):
            raise ValueError(f"--base_samples {path} holds {shape[1]}x{shape[2]} images but the upsampler takes "
                             f"--small_size {small_size}: pass base samples of that size")
        self.labels = None
        if need_labels:
            try:
                self.labels = NpzArray(path, "arr_1").read()
            except ValueError:
                raise ValueError(f"--base_samples {path} has no labels (arr_1) but the upsampler is "
                                 "class-conditional: sample the base with a class-conditional model, or use "
                                 "--class_cond False with an unconditional upsampler") from None

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: list[int]) -> dict:
        """{"low_res": [N, 3, s, s] in [-1, 1] (and "y")} for the given sample indices."""
        rows = [i % len(self) for i in indices]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            images = self.images.read(rows[0], rows[0] + len(rows))
        else:
            images = np.stack([self.images.read(r, r + 1)[0] for r in rows])
        out = {"low_res": torch.from_numpy(images.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)}
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[rows].astype(np.int64))
        return out


def super_res_batch_fn(model, diffusion, args, base: BaseSamples) -> Callable:
    """make_batch(indices) for an upsampler: low-res input (and labels) from base sample i % count, noise from
    seed + i."""
    if args.cfg_scale != 1:
        raise ValueError(f"--cfg_scale {args.cfg_scale}: classifier-free guidance applies to base models trained "
                         "with --class_dropout_prob, not to upsamplers")
    model_fn = model_fn_for(model, args.class_cond, args.use_bf16)
    options = sampler_options(args)

    def make_batch(indices):
        kwargs = {k: v.to(dist_util.dev()) for k, v in base.batch(indices).items()}
        rng = SampleRNG([args.seed + i for i in indices])
        shape = (len(indices), 3, args.large_size, args.large_size)
        sample = run_sampler(diffusion, model_fn, shape, kwargs, None, rng, options)
        return to_uint8(sample), kwargs["y"].cpu() if "y" in kwargs else None

    return make_batch
