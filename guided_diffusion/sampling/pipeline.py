"""What every sampling script shares: its opening (check files, read args.json, set up processes and the log
folder, build and load the networks, the guidance from the flags) and the batch functions.

- Sample i's noise uses the random stream seeded with seed + i (its label, when drawn at random, the stream of
  (seed, i)), so the same command gives the same images for any batch size and any number of processes.
- Work is cut into batches of consecutive indices dealt round-robin to the ranks; each finished batch is
  written at once (sampling.writer), so a long run holds no samples in memory and a rerun resumes.
- The flags resolve once (prepare, settings.py): defaults < what the checkpoints imply (args.json beside a
  checkpoint trained here, an NVlabs network's size and labels) < an EDM2 preset < the command line, into frozen
  settings; the network comes from loading/loader.py, the sampler and its options from sampling/dispatch.py, guidance from
  guidance/terms.py and guidance/compose.py.
- A network on latents (EDM2's img512) samples latents, which its encoder decodes to pixels batch by batch
  (latents.py); --image_size is then the decoded size.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from guided_diffusion import dist_util

from guided_diffusion.networks import sigma_space

from guided_diffusion.sampling import latents

from guided_diffusion import logger

from guided_diffusion.loading import presets
from guided_diffusion.sampling.base_samples import BaseSamples
from guided_diffusion.loading.checkpoint_flags import (
    checkpoint_layer,
    configure_logging,
    explicit_flags,
    namespace_from_flags,
    require_file,
)
from guided_diffusion.networks.control import parse_control
from guided_diffusion.guidance.compose import Guidance, classifier_cond_fn
from guided_diffusion.guidance.terms import TERMS, Autoguidance, ClassifierFree, ClassifierGuidance, ControlGuidance, Term, checked
from guided_diffusion.processes.objectives import EDMConditioning
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.writer import Trajectory, to_uint8
from guided_diffusion.loading.loader import (  # noqa: F401 (_latent_encoder, autocast, load_module_weights, model_fn_for: also from here)
    LoadedModel,
    _latent_encoder,
    _latent_space,
    autocast,
    is_nvlabs_pickle,
    latent_encoder,
    load_model,
    load_module_weights,
    model_fn_for,
    nvlabs_flags,
)
from guided_diffusion.sampling.dispatch import SamplerOptions
from guided_diffusion.cli.settings import freeze, resolve


def upsampler_sampling_defaults() -> dict:
    """The flags every sampling script takes: the original scripts', the sampler's (SamplerOptions) and
    autoguidance's (a weaker model of the same task); the new flags' defaults keep the original behaviour."""
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
        **SamplerOptions.flag_defaults(),
        # Guidance (1 = off), active for sigma in its interval "lo,hi" ("" = every level).
        **Autoguidance.FLAGS,
    )


def sampling_defaults() -> dict:
    """The flags of the scripts that sample base models (not upsamplers): every sampling script's, classifier-free
    guidance's (a model trained with --class_dropout_prob > 0) and control conditioning's."""
    return dict(
        **upsampler_sampling_defaults(),
        **ClassifierFree.FLAGS,
        # Control conditioning (a model trained with --control_cond): the record asked for ("" = the whole image,
        # not flipped, source size = output size; e.g. "crop=0,0,1,1 flip=0 size=16") and its guidance scale.
        control="",
        **ControlGuidance.FLAGS,
    )


def preset_flag_defaults() -> dict:
    """The flags of the scripts that take EDM2's generator presets: the preset (presets.EDM2_PRESETS) and the folder
    of its files."""
    return dict(preset="", model_dir="models")


def latent_flag_defaults() -> dict:
    """The flag of the scripts that sample latent networks (EDM2 img512): the VAE that decodes their latents, a
    directory written by AutoencoderKL.save_pretrained or a hub name ("" = the one the network's pickle names)."""
    return dict(vae="")


def classifier_flag_defaults() -> dict:
    """The classifier-guidance flags of the scripts that take a classifier."""
    return dict(ClassifierGuidance.FLAGS)


_OPTION_FLAGS = tuple(SamplerOptions.flag_defaults())


def sampler_options(args) -> SamplerOptions:
    """SamplerOptions from parsed flags (ValueError naming the flag for bad values)."""
    return SamplerOptions(progress=args.progress and dist_util.get_rank() == 0,
                          **{k: getattr(args, k) for k in _OPTION_FLAGS})


# ----- the opening ----------------------------------------------------------------------------------------

class Prepared(NamedTuple):
    """What the scripts' opening found: the run's flags resolved once and frozen (settings.freeze), the guide's
    flags (None without --guide_model_path) and the guidance terms made and checked from the flags, their
    networks not yet loaded."""

    settings: Any
    guide: argparse.Namespace | None
    terms: tuple[Term, ...]


def prepare(script: str, args, architecture: dict, argv: list[str] | None = None, size_flag: str = "image_size",
            implied_by: tuple[Callable[[Any], dict], ...] = (),
            checks: tuple[Callable[[Any], None], ...] = ()) -> Prepared:
    """The scripts' opening: the flags resolved once, checked, then processes and the log folder. argv: the
    command line (default sys.argv).

    Flags resolve in one order, each source winning over those before it (settings.py): the parser's defaults,
    what the checkpoints imply (the model's args.json or an NVlabs network's size and labels, then each of
    implied_by(settings so far), e.g. a classifier's args.json; a latent network's decoded size), an EDM2 preset,
    the command line. `args` (the parsed namespace) is left as it is; the run reads Prepared.settings. The
    guide's flags are checked against the model, then the script's checks(settings) run, then the guidance
    terms and the sampler options are checked: all before any process starts."""
    explicit = explicit_flags(argv)
    given = dict(vars(args))
    preset = presets.resolve_preset(given["preset"], given["model_dir"]) if given.get("preset") else {}
    model_path = resolve(given, explicit, preset)["model_path"]
    require_file(model_path, "model_path")
    implied = _implied_by_model(model_path, given, explicit, architecture, size_flag)
    for implied_by_other in implied_by:
        implied.update(implied_by_other(freeze(resolve(given, explicit, implied, preset))))
    settings = freeze(resolve(given, explicit, implied, preset))
    _check_model_flags(settings)
    guide = guide_args(settings, architecture, size_flag)
    for check in checks:
        check(settings)
    terms = guidance_terms(settings)  # bad guidance and sampler flags fail before any process starts
    sampler_options(settings)
    if getattr(settings, "latent_channels", 0):
        implied["image_size"] = _decoded_size(settings, explicit)
        settings = freeze(resolve(given, explicit, implied, preset))
    dist_util.setup_dist()
    configure_logging(script, settings)
    return Prepared(settings, guide, terms)


def _implied_by_model(path: str, given: dict, explicit: set[str], architecture: dict, size_flag: str) -> dict:
    """The flags the model checkpoint implies: an NVlabs network's image size and labels (D unclipped, as EDM
    samples), or the args.json of one trained here (for a network on latents, their channels and size; trained
    in sigma space: D unclipped)."""
    if is_nvlabs_pickle(path):
        if size_flag != "image_size":
            raise ValueError(f"--model_path {path} is an EDM/EDM2 network, not an upsampler")
        return {**nvlabs_flags(path, "model_path"), "clip_denoised": False}
    layer, saved = checkpoint_layer(path, architecture, given, explicit, "model_path")
    trained = latents.trained_encoder(saved, f"--model_path {path}")
    if trained is not None:  # trained here on latents: the network's channels and size, decoded later
        layer.update(encoder=saved["encoder"], latent_channels=trained[1], latent_size=trained[2])
    if sigma_space.uses_sigma_space(freeze(resolve(given, explicit, layer))):
        layer["clip_denoised"] = False
    return layer


def _check_model_flags(args) -> None:
    """One-line errors for flags the model cannot use: a classifier or labels it cannot take, a VAE for pixels."""
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


def match_classifier(args, classifier: dict, path: str) -> dict:
    """A classifier must take the model's image size and a class-conditional model's label set; an unconditional
    model takes the classifier's labels. classifier: the classifier's flags (its args.json). Returns the flags it
    implies ({"num_classes": ...} for an unconditional model, else none)."""
    implied = {"num_classes": classifier["num_classes"]} if not args.class_cond and "num_classes" in classifier else {}
    for key, what in (("image_size", "image size"), ("num_classes", "number of classes")):
        mine = implied.get(key, getattr(args, key))
        if key in classifier and classifier[key] != mine:
            raise ValueError(f"the classifier {path} was trained with {key} {classifier[key]} but the model uses "
                             f"{mine}: use a classifier of the model's {what}")
    return implied


def _decoded_size(args, explicit: set) -> int:
    """Load a latent network's VAE (one-line errors before any process starts): the side of the decoded images,
    which the samples npz holds (the run's --image_size)."""
    size = latent_encoder(args).pixel_size(args.latent_size)
    if "image_size" in explicit and args.image_size != size:
        raise ValueError(f"--image_size {args.image_size}: the model {args.model_path} makes {args.latent_size}x"
                         f"{args.latent_size} latents, which decode to {size}x{size} images; leave --image_size out")
    return size


def guidance_terms(args) -> tuple[Term, ...]:
    """The guidance flags as terms (without their networks), each checked once: one-line errors for bad intervals
    and for guidance that cannot work with this model or without its network."""
    return checked(tuple(term.from_flags(args) for term in TERMS))


def guidance_from_args(args, prepared: Prepared, create: Callable, architecture: dict,
                       classifier: torch.nn.Module | None = None,
                       classifier_conditioning: EDMConditioning | None = None) -> Guidance:
    """The prepared guidance terms with their networks: the guide model (autoguidance) loaded, the classifier's
    gradient (--classifier_scale; a classifier trained with --objective edm takes classifier_conditioning's
    inputs)."""
    guide, guide_denoiser = prepared.guide, None
    if guide is not None and args.guide_scale == 1:
        logger.warn(f"--guide_model_path {args.guide_model_path} with --guide_scale 1 is the model alone: the guide "
                    "is not loaded")
    elif guide is not None:
        logger.log(f"loading the guide model {args.guide_model_path}...")
        guide_denoiser = load_model(create, argparse.Namespace(**{**vars(args), **vars(guide)}), architecture,
                                    args.guide_model_path, "guide_model_path", guide.use_fp16).denoiser
    cond_fn = None
    if classifier is not None:
        cond_fn = classifier_cond_fn(classifier, args.classifier_scale, args.use_bf16)
    networks = {Autoguidance: dict(guide=guide_denoiser),
                ClassifierGuidance: dict(cond_fn=cond_fn, conditioning=classifier_conditioning)}
    return Guidance.of(tuple(t.with_network(**networks[type(t)]) if type(t) in networks else t
                             for t in prepared.terms))


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


def _sample(loaded: LoadedModel, shape, kwargs: dict, indices: list[int], args, options: SamplerOptions,
            guidance: Guidance, steps: int, to_pixels: Callable[[torch.Tensor], np.ndarray] = to_uint8) -> np.ndarray:
    """uint8 NHWC samples of one batch, with the trajectory strip when this batch holds sample 0; to_pixels
    converts the sampler's output (pixels in [-1, 1], or latents to decode)."""
    rng = SampleRNG([args.seed + i for i in indices])
    trajectory = _trajectory_for(indices, args.save_trajectory, steps, to_pixels)
    sample = loaded.sample(shape, kwargs, rng, options, guidance, callback=trajectory, device=dist_util.dev())
    images = to_pixels(sample)
    if trajectory is not None:
        trajectory.save(os.path.join(logger.get_dir(), "trajectory.png"), images)
    return images


def image_batch_fn(loaded: LoadedModel, args, guidance: Guidance | None = None) -> Callable:
    """make_batch(indices) for a base (non-upsampling) model: labels (when class-conditional or guided by a
    classifier) and noise from each sample's seed, the guidance, uint8 images out (a latent network's latents
    decoded by its encoder)."""
    guidance = guidance or Guidance()
    encoder = latent_encoder(args) if getattr(args, "latent_channels", 0) else None
    to_pixels = to_uint8 if encoder is None else latents.pixel_converter(encoder, dist_util.dev())
    labelled = args.class_cond or guidance.cond_fn is not None  # a classifier needs labels for any model
    classes = parse_classes(args.classes, args.num_classes) if labelled else None
    options = sampler_options(args)
    guidance.check_intervals(loaded.visited_levels(options))
    steps = loaded.step_count(options)

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
        return _sample(loaded, shape, kwargs, indices, args, options, guidance, steps, to_pixels), labels

    return make_batch


# ----- super-resolution -----------------------------------------------------------------------------------

def super_res_batch_fn(loaded: LoadedModel, args, base: BaseSamples, guidance: Guidance | None = None) -> Callable:
    """make_batch(indices) for an upsampler: low-res input (and labels) from base sample i % count, noise from
    seed + i, optional autoguidance by a weaker upsampler."""
    guidance = guidance or Guidance()
    options = sampler_options(args)
    guidance.check_intervals(loaded.visited_levels(options))
    steps = loaded.step_count(options)

    def make_batch(indices):
        kwargs = {k: v.to(dist_util.dev()) for k, v in base.batch(indices).items()}
        shape = (len(indices), 3, args.large_size, args.large_size)
        images = _sample(loaded, shape, kwargs, indices, args, options, guidance, steps)
        return images, kwargs["y"].cpu() if "y" in kwargs else None

    return make_batch
