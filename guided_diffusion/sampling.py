"""What every sampling script shares: its opening (check files, read args.json, set up processes and the log
folder, build and load the networks, the guidance from the flags) and the batch functions.

- Sample i uses the random stream seeded with seed + i (and its label, when drawn at random, too), so the
  same command gives the same images for any batch size and any number of processes.
- Work is cut into batches of consecutive indices dealt round-robin to the ranks; each finished batch is
  written at once (sample_writer), so a long run holds no samples in memory and a rerun resumes.
- Architecture flags come from the args.json beside a checkpoint trained here, unless given explicitly
  (checkpoint_flags); the sampler and its options are looked up in sampler_dispatch; guidance is guidance.py.
- A network on latents (EDM2's img512) samples latents, which its encoder decodes to pixels batch by batch
  (latents.py); --image_size is then the decoded size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
from typing import Callable

import numpy as np
import torch

from . import dist_util, edm_util, latents, logger, nvlabs
from .checkpoint import load_weights
from .control import parse_control
from .checkpoint_flags import (
    apply_checkpoint_args,
    checkpoint_args,
    configure_logging,
    explicit_flags,
    namespace_from_flags,
    require_file,
)
from .denoiser import Denoiser, PrecondDenoiser, classifier_timestep
from .encoders import Encoder
from .fileio import NpzArray
from .guidance import Guidance, Interval, check_guidance, classifier_cond_fn
from .objectives import EDMConditioning
from .rng import SampleRNG
from .sample_writer import Trajectory, to_uint8
from .sampler_dispatch import SamplerOptions, run_sampler, run_sigma_sampler, step_count, visited_levels
from .script_util import args_to_dict, create_gaussian_diffusion, null_label


def sampling_defaults() -> dict:
    """Flags of the original sampling scripts, the sampler's (SamplerOptions) and guidance's; the new flags'
    defaults keep the original behaviour."""
    return dict(
        num_samples=10000,
        batch_size=16,
        model_path="",
        seed=0,
        classes="",
        use_bf16=False,
        log_dir="",
        grid=True,
        progress=True,
        save_trajectory=0,  # write the denoised estimates of this many first images at every step
        preset="",  # an EDM2 generator preset (nvlabs.EDM2_PRESETS), its files in --model_dir
        model_dir="models",
        **SamplerOptions.flag_defaults(),
        # Guidance (1 = off): classifier-free (a model trained with --class_dropout_prob > 0), autoguidance by a
        # weaker model; each active for sigma in its interval "lo,hi" ("" = every level).
        cfg_scale=1.0,
        cfg_interval="",
        guide_model_path="",
        guide_flags="",
        guide_scale=1.0,
        guide_interval="",
        # Control conditioning (a model trained with --control_cond): the record asked for ("" = the whole image,
        # not flipped, source size = output size; e.g. "crop=0,0,1,1 flip=0 size=16") and its guidance scale.
        control="",
        control_cfg_scale=1.0,
    )


def latent_flag_defaults() -> dict:
    """The flag of the scripts that sample latent networks (EDM2 img512): the VAE that decodes their latents, a
    directory written by AutoencoderKL.save_pretrained or a hub name ("" = the one the network's pickle names)."""
    return dict(vae="")


def classifier_flag_defaults() -> dict:
    """The classifier-guidance flags of the scripts that take a classifier."""
    return dict(classifier_path="", classifier_scale=1.0, classifier_interval="")


_OPTION_FLAGS = tuple(SamplerOptions.flag_defaults())


def sampler_options(args) -> SamplerOptions:
    """SamplerOptions from parsed flags (ValueError naming the flag for bad values)."""
    return SamplerOptions(progress=args.progress and dist_util.get_rank() == 0,
                          **{k: getattr(args, k) for k in _OPTION_FLAGS})


# ----- the opening ----------------------------------------------------------------------------------------

def prepare(script: str, args, architecture: dict, argv: list[str] | None = None, size_flag: str = "image_size",
            checks: tuple[Callable[[], None], ...] = ()) -> argparse.Namespace | None:
    """The scripts' opening: the checkpoint exists, architecture flags from its args.json, the guide model's
    flags (checked against the model), the script's own checks, then processes and the log folder. Returns
    the guide's flags (None without --guide_model_path). argv: the command line (default sys.argv)."""
    explicit = explicit_flags(argv)
    if args.preset:  # flags given explicitly win over the preset's
        preset = nvlabs.resolve_preset(args.preset, args.model_dir)
        vars(args).update({k: v for k, v in preset.items() if k not in explicit})
    require_file(args.model_path, "model_path")
    if is_nvlabs_pickle(args.model_path):
        if size_flag != "image_size":
            raise ValueError(f"--model_path {args.model_path} is an EDM/EDM2 network, not an upsampler")
        implied = {**nvlabs_flags(args.model_path, "model_path"), "clip_denoised": False}  # EDM does not clip D
        vars(args).update({k: v for k, v in implied.items() if k not in explicit})
    else:
        saved = apply_checkpoint_args(args, args.model_path, architecture, explicit, "model_path")
        trained = latents.trained_encoder(saved, f"--model_path {args.model_path}")
        if trained is not None:  # trained here on latents: the network's channels and size, decoded later
            args.encoder, args.latent_channels, args.latent_size = saved["encoder"], trained[1], trained[2]
        if edm_util.uses_sigma_space(args) and "clip_denoised" not in explicit:
            args.clip_denoised = False  # trained in sigma space: D unclipped, as EDM samples
    space = _latent_space(args.model_path, "model_path")
    if space is not None and getattr(args, "classifier_path", ""):
        raise ValueError(f"--classifier_path {args.classifier_path}: the classifier sees pixels but the model "
                         f"{args.model_path} works in latent space ({space}), so its gradient cannot guide it; "
                         "guide it with image_sample.py --cfg_scale or --guide_model_path")
    if space is None and getattr(args, "vae", ""):
        raise ValueError(f"--vae {args.vae}: the model {args.model_path} works on pixels; --vae is for networks "
                         "on latents (EDM2's img512)")
    if args.classes and not args.class_cond and not getattr(args, "classifier_path", ""):
        raise ValueError(f"--classes {args.classes}: the model {args.model_path} is unconditional (class_cond False), "
                         "so it would ignore the labels; use a class-conditional model or guide this one with a "
                         "classifier (classifier_sample.py --classifier_path)")
    guide = guide_args(args, architecture, size_flag)
    for check in checks:
        check()
    guidance_settings(args)  # bad guidance and sampler flags fail before any process starts
    sampler_options(args)
    if space is not None:
        _use_decoded_size(args, explicit)
    dist_util.setup_dist()
    configure_logging(script, args)
    return guide


def guide_args(args, architecture: dict, size_flag: str = "image_size") -> argparse.Namespace | None:
    """The guide model's flags: its args.json or --guide_flags; it must make images of the model's size and
    know the model's labels (an unconditional guide ignores them)."""
    if not args.guide_model_path:
        if args.guide_flags:
            raise ValueError("--guide_flags is given without --guide_model_path")
        return None
    require_file(args.guide_model_path, "guide_model_path")
    if is_nvlabs_pickle(args.guide_model_path):
        if size_flag != "image_size":
            raise ValueError(f"--guide_model_path {args.guide_model_path} is an EDM/EDM2 network, not an upsampler")
        guide = argparse.Namespace(**nvlabs_flags(args.guide_model_path, "guide_model_path"), use_fp16=False)
    else:
        guide = namespace_from_flags(architecture, args.guide_flags, args.guide_model_path, "guide_model_path")
    where = f"--guide_model_path {args.guide_model_path}"
    model_space = _latent_space(getattr(args, "model_path", ""), "model_path")  # cascade_sample: ADM bases only
    guide_space = _latent_space(args.guide_model_path, "guide_model_path")
    if (model_space or guide_space) and model_space != guide_space:
        detail = f" (scale {guide_space.scale} and bias {guide_space.bias}, not {model_space.scale} and " \
                 f"{model_space.bias})" if str(model_space) == str(guide_space) else ""
        raise ValueError(f"{where} works on {guide_space or 'pixels'} but the model on {model_space or 'pixels'}"
                         f"{detail}: a guide must share the model's latent space")
    for flag in (size_flag, "small_size") if model_space is None else ():  # an upsampler's input size too
        if hasattr(args, flag) and getattr(guide, flag) != getattr(args, flag):
            what = "makes" if flag == size_flag else "upsamples"
            raise ValueError(f"{where} {what} {getattr(guide, flag)}x{getattr(guide, flag)} images but the model "
                             f"{what} {getattr(args, flag)}x{getattr(args, flag)}: a guide must be a weaker model of "
                             "the same task")
    if guide.class_cond and (not args.class_cond or guide.num_classes != args.num_classes):
        model_labels = f"{args.num_classes} classes" if args.class_cond else "no labels"
        raise ValueError(f"{where} is conditioned on {guide.num_classes} classes but the model on "
                         f"{model_labels}: a guide must know the model's label set")
    return guide


def match_classifier(args, classifier: dict, path: str) -> None:
    """A classifier must take the model's image size and a class-conditional model's label set; an unconditional
    model takes the classifier's labels. classifier: the classifier's flags (its args.json)."""
    if not args.class_cond and "num_classes" in classifier:
        args.num_classes = classifier["num_classes"]
    for key, what in (("image_size", "image size"), ("num_classes", "number of classes")):
        if key in classifier and classifier[key] != getattr(args, key):
            raise ValueError(f"the classifier {path} was trained with {key} {classifier[key]} but the model uses "
                             f"{getattr(args, key)}: use a classifier of the model's {what}")


def is_nvlabs_pickle(path: str) -> bool:
    """Whether a checkpoint is an NVlabs network (EDM2's .pkl snapshots, or one converted by
    convert_checkpoint.py) rather than an ADM state dict."""
    return path.endswith(".pkl") or nvlabs.is_converted(path)


@functools.lru_cache(maxsize=2)
def _nvlabs_checkpoint(path: str) -> tuple[torch.nn.Module, nvlabs.Record | None]:
    """The network of an NVlabs checkpoint and its encoder record, read once per process (its flags, its latent
    space and the network come from one read)."""
    return nvlabs.load_generator(path)


def _nvlabs_network(path: str) -> torch.nn.Module:
    return _nvlabs_checkpoint(path)[0]


def _latent_space(path: str, flag: str) -> latents.LatentSpace | None:
    """The latent space the network at `path` works in; None for networks on pixels (ADM checkpoints included).
    The VAE is the one the network's pickle names (a guide shares the model's --vae)."""
    if not path or not is_nvlabs_pickle(path):  # a network trained here on latents records them in args.json
        trained = latents.trained_encoder(checkpoint_args(path), f"--{flag} {path}") if path else None
        return None if trained is None else latents.latent_space(*trained)
    net, record = _nvlabs_checkpoint(path)
    encoder = latents.encoder_for(record, net.img_channels, f"--{flag} {path}")
    return None if encoder is None else latents.latent_space(encoder, net.img_channels, net.img_resolution)


def nvlabs_flags(path: str, flag: str) -> dict:
    """The sampling flags an NVlabs network implies: image size and labels, and for a network on latents (EDM2's
    img512) their channels and size (its image size becomes the decoded one once the VAE is loaded)."""
    net, record = _nvlabs_checkpoint(path)
    flags = dict(image_size=net.img_resolution, class_cond=net.label_dim > 0, num_classes=net.label_dim or 1)
    if latents.encoder_for(record, net.img_channels, f"--{flag} {path}") is not None:
        flags.update(latent_channels=net.img_channels, latent_size=net.img_resolution)
    return flags


def latent_encoder(args) -> Encoder:
    """The encoder of the latent network --model_path, its VAE loaded on the CPU (--vae, else the one its pickle
    names), once per process."""
    return _latent_encoder(args.model_path, getattr(args, "vae", ""))


@functools.lru_cache(maxsize=1)
def _latent_encoder(path: str, vae: str) -> Encoder:
    where = f"--model_path {path}"
    if not is_nvlabs_pickle(path):  # trained here: the encoder its args.json records
        return latents.load_vae(latents.trained_encoder(checkpoint_args(path), where)[0], vae, where)
    net, record = _nvlabs_checkpoint(path)
    return latents.load_vae(latents.encoder_for(record, net.img_channels, where), vae, where)


def _use_decoded_size(args, explicit: set) -> None:
    """Load a latent network's VAE (one-line errors before any process starts) and make --image_size the side of
    the decoded images, which the samples npz holds."""
    size = latent_encoder(args).pixel_size(args.latent_size)
    if "image_size" in explicit and args.image_size != size:
        raise ValueError(f"--image_size {args.image_size}: the model {args.model_path} makes {args.latent_size}x"
                         f"{args.latent_size} latents, which decode to {size}x{size} images; leave --image_size out")
    args.image_size = size


def build(create: Callable, flags, architecture: dict, path: str, flag: str, use_fp16: bool = False):
    """(network, diffusion) from the factory `create` and its flags, with the checkpoint's weights loaded; for an
    NVlabs pickle (PrecondDenoiser of its network, None): a denoiser at continuous sigma, whose classifier
    timesteps come from the ADM process of the flags (--noise_schedule, --diffusion_steps: the classifier's)."""
    adm_keys = [k for k in architecture if k not in edm_util.EDM_FLAGS]
    if is_nvlabs_pickle(path) or edm_util.uses_sigma_space(flags):
        if is_nvlabs_pickle(path):
            net = _nvlabs_network(path).to(dist_util.dev())
        else:  # trained here with --objective edm or --arch edm2 (on latents: their size, not the decoded one)
            if getattr(flags, "latent_size", 0):
                flags = argparse.Namespace(**{**vars(flags), "image_size": flags.latent_size})
            net = edm_util.create_sigma_space_network(flags, lambda: create(**args_to_dict(flags, adm_keys))[0])
            load_network(net, path, flag, use_fp16)
        adm = create_gaussian_diffusion(steps=flags.diffusion_steps, noise_schedule=flags.noise_schedule)
        return PrecondDenoiser(net, timestep=classifier_timestep(adm)), None
    model, diffusion = create(**args_to_dict(flags, adm_keys))
    load_network(model, path, flag, use_fp16)
    return model, diffusion


def guidance_settings(args) -> dict:
    """The guidance flags as Guidance arguments (without the networks), checked: one-line errors for bad
    intervals and for guidance that cannot work with this model or without its network."""
    dropout = getattr(args, "class_dropout_prob", 0.0)  # upsamplers have no label dropout
    settings = dict(cfg_scale=args.cfg_scale, null_label=null_label(args.num_classes, dropout) if args.class_cond
                    else None, cfg_interval=Interval.parse(args.cfg_interval, "cfg_interval"),
                    guide_scale=args.guide_scale, guide_interval=Interval.parse(args.guide_interval, "guide_interval"),
                    classifier_interval=Interval.parse(getattr(args, "classifier_interval", ""),
                                                       "classifier_interval"))
    if getattr(args, "control_cond", ""):
        parse_control(args.control, args.image_size)  # bad values fail now
        if args.control_cfg_scale != 1 and not args.control_dropout_prob:
            raise ValueError(f"--control_cfg_scale {args.control_cfg_scale} needs a model trained with "
                             "--control_dropout_prob > 0 (it never saw the null record)")
    elif args.control or args.control_cfg_scale != 1:
        raise ValueError("--control and --control_cfg_scale need a model trained with --control_cond")
    settings["control_cfg_scale"] = args.control_cfg_scale
    check_guidance(settings["cfg_scale"], settings["null_label"] is not None, settings["cfg_interval"],
                   bool(args.guide_model_path), args.guide_scale, settings["guide_interval"],
                   bool(getattr(args, "classifier_path", "")), settings["classifier_interval"])
    return settings


def guidance_from_args(args, guide: argparse.Namespace | None, create: Callable, architecture: dict,
                       classifier: torch.nn.Module | None = None,
                       classifier_conditioning: EDMConditioning | None = None) -> Guidance:
    """Guidance from the flags: CFG (--cfg_scale, --cfg_interval), autoguidance by the guide model
    (--guide_scale, --guide_interval) and classifier guidance (--classifier_scale, --classifier_interval; a
    classifier trained with --objective edm takes classifier_conditioning's inputs)."""
    guide_denoiser = None
    if guide is not None and args.guide_scale == 1:
        logger.warn(f"--guide_model_path {args.guide_model_path} with --guide_scale 1 is the model alone: the guide "
                    "is not loaded")
    elif guide is not None:
        logger.log(f"loading the guide model {args.guide_model_path}...")
        guide_model, guide_diffusion = build(create, argparse.Namespace(**{**vars(args), **vars(guide)}), architecture,
                                             args.guide_model_path, "guide_model_path", guide.use_fp16)
        guide_denoiser = guide_model if guide_diffusion is None else Denoiser(
            guide_diffusion, model_fn_for(guide_model, guide.class_cond, args.use_bf16))
    cond_fn = None
    if classifier is not None:
        cond_fn = classifier_cond_fn(classifier, args.classifier_scale, args.use_bf16)
    return Guidance(guide=guide_denoiser, cond_fn=cond_fn, classifier_conditioning=classifier_conditioning,
                    **guidance_settings(args))


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


# ----- labels and batches ---------------------------------------------------------------------------------

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
        if high < low:
            raise ValueError(f"--classes {spec!r}: a range must go upward, e.g. {high}-{low}, not {low}-{high}")
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


def _trajectory_for(indices: list[int], count: int, steps: int,
                    to_pixels: Callable[[torch.Tensor], np.ndarray] = to_uint8) -> Trajectory | None:
    """A Trajectory for the batch that starts at sample 0, when --save_trajectory asks for one."""
    if count <= 0 or indices[0] != 0:
        return None
    if count > len(indices):
        logger.warn(f"--save_trajectory {count}: the first batch holds {len(indices)} images, the strip shows those")
    return Trajectory(min(count, len(indices)), steps, to_pixels=to_pixels)


def _sample(diffusion, model_fn, shape, kwargs: dict, indices: list[int], args, options: SamplerOptions,
            guidance: Guidance, steps: int, to_pixels: Callable[[torch.Tensor], np.ndarray] = to_uint8) -> np.ndarray:
    """uint8 NHWC samples of one batch, with the trajectory strip when this batch holds sample 0; diffusion None
    means model_fn is a denoiser at continuous sigma (an EDM/EDM2 network); to_pixels converts the sampler's
    output (pixels in [-1, 1], or latents to decode)."""
    rng = SampleRNG([args.seed + i for i in indices])
    trajectory = _trajectory_for(indices, args.save_trajectory, steps, to_pixels)
    if diffusion is None:
        sample = run_sigma_sampler(model_fn, shape, kwargs, rng, options, guidance, callback=trajectory,
                                   device=dist_util.dev())
    else:
        sample = run_sampler(diffusion, model_fn, shape, kwargs, rng, options, guidance, callback=trajectory,
                             device=dist_util.dev())
    images = to_pixels(sample)
    if trajectory is not None:
        trajectory.save(os.path.join(logger.get_dir(), "trajectory.png"), images)
    return images


def image_batch_fn(model, diffusion, args, guidance: Guidance | None = None) -> Callable:
    """make_batch(indices) for a base (non-upsampling) model: labels (when class-conditional or guided by a
    classifier) and noise from each sample's seed, the guidance, uint8 images out (a latent network's latents
    decoded by its encoder)."""
    guidance = guidance or Guidance()
    encoder = latent_encoder(args) if getattr(args, "latent_channels", 0) else None
    to_pixels = to_uint8 if encoder is None else latents.pixel_converter(encoder, dist_util.dev())
    model_fn = model if diffusion is None else model_fn_for(model, args.class_cond, args.use_bf16)
    labelled = args.class_cond or guidance.cond_fn is not None  # a classifier needs labels for any model
    classes = parse_classes(args.classes, args.num_classes) if labelled else None
    options = sampler_options(args)
    guidance.check_intervals(visited_levels(diffusion or model_fn, options))
    steps = step_count(diffusion or model_fn, options)

    control = None
    if getattr(args, "control_cond", ""):
        control = torch.tensor(parse_control(args.control, args.image_size), device=dist_util.dev())

    def make_batch(indices):
        labels = None
        kwargs = {}
        if labelled:
            labels = labels_for(indices, args.seed, args.num_classes, classes)
            kwargs["y"] = labels.to(dist_util.dev())
        if control is not None:
            kwargs["control"] = control.expand(len(indices), -1)
        if encoder is None:
            shape = (len(indices), 3, args.image_size, args.image_size)
        else:
            shape = (len(indices), args.latent_channels, args.latent_size, args.latent_size)
        return _sample(diffusion, model_fn, shape, kwargs, indices, args, options, guidance, steps, to_pixels), labels

    return make_batch


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


def super_res_batch_fn(model, diffusion, args, base: BaseSamples, guidance: Guidance | None = None) -> Callable:
    """make_batch(indices) for an upsampler: low-res input (and labels) from base sample i % count, noise from
    seed + i, optional autoguidance by a weaker upsampler."""
    guidance = guidance or Guidance()
    model_fn = model if diffusion is None else model_fn_for(model, args.class_cond, args.use_bf16)
    options = sampler_options(args)
    guidance.check_intervals(visited_levels(diffusion or model_fn, options))
    steps = step_count(diffusion or model_fn, options)

    def make_batch(indices):
        kwargs = {k: v.to(dist_util.dev()) for k, v in base.batch(indices).items()}
        shape = (len(indices), 3, args.large_size, args.large_size)
        images = _sample(diffusion, model_fn, shape, kwargs, indices, args, options, guidance, steps)
        return images, kwargs["y"].cpu() if "y" in kwargs else None

    return make_batch
