"""Flags and factories of the networks trained in sigma space: an ADM U-Net inside EDM's preconditioning
(--objective edm) and EDM2's magnitude-preserving network (--arch edm2), for training and for sampling (the
flags are saved in args.json, so the sampling scripts rebuild the same network)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from guided_diffusion.networks import edm2
from guided_diffusion.networks.edm import preconditioning
from guided_diffusion.training.latent_training import network_channels
from guided_diffusion.processes.objectives import EDMConditioning, EDMLoss
from guided_diffusion.script_util import model_and_diffusion_defaults, parse_attention_resolutions, sr_model_and_diffusion_defaults
from guided_diffusion.cli.settings import with_flags

# EDM2's training presets (train_edm2.py): width and dropout per size.
EDM2_SIZES = {"xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.1), "l": (320, 0.1), "xl": (384, 0.1)}
# The full presets of train_edm2.py's config_presets, named img64-<size> and img512-<size> (latents of 512x512
# images): width, dropout, learning rate, the images before its decay (EDM2's "decay" in batches of 2048) and the
# noise-level distribution; EDM2 ramps the learning rate up over 10M images and trains in batches of 2048.
EDM2_FULL_PRESETS = {
    **{f"img512-{size}": dict(model_channels=channels, dropout=dropout, lr=lr, lr_ref_images=70000 * 2048,
                              lr_rampup_images=10e6, p_mean=-0.4, p_std=1.0)
       for size, channels, dropout, lr in (("xxs", 64, 0.0, 0.0170), ("xs", 128, 0.0, 0.0120),
                                           ("s", 192, 0.0, 0.0100), ("m", 256, 0.1, 0.0090),
                                           ("l", 320, 0.1, 0.0080), ("xl", 384, 0.1, 0.0070),
                                           ("xxl", 448, 0.1, 0.0065))},
    **{f"img64-{size}": dict(model_channels=channels, dropout=dropout, lr=lr, lr_ref_images=35000 * 2048,
                             lr_rampup_images=10e6, p_mean=-0.8, p_std=1.6)
       for size, channels, dropout, lr in (("xs", 128, 0.0, 0.0120), ("s", 192, 0.0, 0.0100),
                                           ("m", 256, 0.1, 0.0090), ("l", 320, 0.1, 0.0080),
                                           ("xl", 384, 0.1, 0.0070))},
}
ARCHS = ("adm", "edm2")
OBJECTIVES = ("adm", "edm", "edm2")


def objective_defaults() -> dict:
    """The training objective's flags: --objective "" is the architecture's own (adm for ADM networks; edm2, EDM's
    loss with EDM2's learned uncertainty, for --arch edm2); edm is EDM's loss (EDM Table 1: ln sigma ~
    N(p_mean, p_std^2), weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2)."""
    return dict(objective="", sigma_data=0.5, p_mean=-1.2, p_std=1.2)


def edm_defaults() -> dict:
    """The objective's flags and the EDM2 network's (--arch edm2); --channel_mult ("" = 1,2,3,4) and --dropout
    are the ADM flags. Defaults: the ADM network and objective, as before."""
    return dict(arch="adm", **objective_defaults(), edm2_preset="", model_channels=192, num_blocks=3,
                attn_resolutions="16,8")


EDM_FLAGS = tuple(edm_defaults())


def architecture_defaults() -> dict:
    """The flags (with their defaults) that describe a base network, as args.json records it: ADM's U-Net and
    diffusion flags and the sigma-space ones (the objective, EDM2's network). The scripts that build or read back a
    base network take these."""
    return {**model_and_diffusion_defaults(), **edm_defaults()}


def upsampler_architecture_defaults() -> dict:
    """The flags (with their defaults) that describe an upsampler, as args.json records it: ADM's upsampler and
    diffusion flags and the objective's (an upsampler trains with --objective adm or edm, never as EDM2's network)."""
    return {**sr_model_and_diffusion_defaults(), **objective_defaults()}


def edm_flag_layer(flags, explicit: set[str] = frozenset(), allowed: tuple[str, ...] = OBJECTIVES) -> dict:
    """The flags the sigma-space settings imply, as a layer for settings.resolve (`flags` is not changed): the
    objective when --objective is "" (the architecture's own: edm2 for --arch edm2, else adm) and the values of
    --edm2_preset for the flags not in `explicit` (those given on the command line win). Checks the flags first
    (one-line ValueErrors); the training scripts resolve this before args.json is written, so it records the network
    exactly. allowed: the script's objectives."""
    arch = getattr(flags, "arch", "adm")
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    layer = {} if flags.objective else {"objective": "edm2" if arch == "edm2" else "adm"}
    objective = layer.get("objective", flags.objective)
    if objective not in allowed:
        raise ValueError(f"--objective {objective!r}: choose one of {', '.join(allowed)}")
    if arch == "adm" and objective == "edm2":
        raise ValueError("--objective edm2 needs the learned uncertainty of an EDM2 network: add --arch edm2, or "
                         "use --objective edm")
    if arch == "edm2" and objective == "adm":
        raise ValueError("--arch edm2 trains in sigma space: use --objective edm2 (default) or edm")
    if objective != "adm" and getattr(flags, "learn_sigma", False):
        raise ValueError(f"--objective {objective} predicts the clean image; --learn_sigma True does not apply")
    if arch == "edm2":
        preset_name = flags.edm2_preset
        if preset_name:
            if preset_name not in EDM2_SIZES and preset_name not in EDM2_FULL_PRESETS:
                raise ValueError(f"--edm2_preset {preset_name!r}: choose one of {', '.join(EDM2_SIZES)} "
                                 f"(width and dropout), or {', '.join(EDM2_FULL_PRESETS)} (EDM2's full presets)")
            channels, dropout = EDM2_SIZES.get(preset_name, (None, None))
            preset = EDM2_FULL_PRESETS.get(preset_name, dict(model_channels=channels, dropout=dropout))
            # flags given on the command line win
            layer.update({k: v for k, v in preset.items() if k not in explicit and hasattr(flags, k)})
    checked = with_flags(flags, **layer)  # the checks below see the values the run will use
    _check_sigma_space_flags(checked, arch)
    return layer


def _check_sigma_space_flags(args, arch: str) -> None:
    """One-line errors for EDM2 networks in float16 or of impossible sizes, bad loss parameters, and separate
    conditioning without sigma space."""
    if arch == "edm2":
        if args.use_fp16:
            raise ValueError("--use_fp16 with --arch edm2: EDM2 networks keep float32 weights (their forced weight "
                             "normalization); use --use_bf16")
        edm2_unet_kwargs(args)  # bad widths or resolutions fail now
    if args.objective != "adm":
        EDMLoss(args.sigma_data, args.p_mean, args.p_std)  # checks the values
    separate = getattr(args, "control_cond", "") or getattr(args, "class_attention", False)
    if separate and args.objective == "adm":
        raise ValueError("--control_cond and --class_attention need a network trained in sigma space (--objective "
                         "edm or --arch edm2): the control gates are functions of sigma")


def uses_sigma_space(flags) -> bool:
    """Whether the flags describe a network trained in sigma space (a denoiser D(x; sigma))."""
    return getattr(flags, "arch", "adm") == "edm2" or getattr(flags, "objective", "adm") in ("edm", "edm2")


def _int_list(spec: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{flag} {spec!r}: expected comma-separated integers") from None


def edm2_unet_kwargs(flags) -> dict:
    """The EDM2 U-Net's arguments from the flags."""
    channel_mult = _int_list(flags.channel_mult, "channel_mult") if flags.channel_mult else (1, 2, 3, 4)
    if flags.model_channels < 1 or not channel_mult or min(channel_mult) < 1:
        raise ValueError(f"--model_channels {flags.model_channels} --channel_mult {flags.channel_mult!r}: need "
                         "positive widths")
    if flags.image_size % 2 ** (len(channel_mult) - 1):
        raise ValueError(f"--image_size {flags.image_size} does not halve {len(channel_mult) - 1} times "
                         f"(--channel_mult {flags.channel_mult or '1,2,3,4'})")
    attn = _int_list(flags.attn_resolutions, "attn_resolutions")
    parse_attention_resolutions(flags.attn_resolutions, flags.image_size, "attn_resolutions")
    kwargs = dict(model_channels=flags.model_channels, channel_mult=list(channel_mult), num_blocks=flags.num_blocks,
                  attn_resolutions=list(attn), dropout=flags.dropout)
    separate = dict(class_attention=getattr(flags, "class_attention", False),
                    control_cond=getattr(flags, "control_cond", ""), control_gates=getattr(flags, "control_gates", ""),
                    control_gating=getattr(flags, "control_gating", True))
    if separate["class_attention"] or separate["control_cond"]:  # else EDM2's own constructor arguments
        kwargs.update(separate)
    return kwargs


class ADMPrecond(torch.nn.Module):
    """An ADM U-Net (or upsampler) in EDM's preconditioning: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise, y)
    with c_noise = ln(sigma) / 4 fed to its timestep embedding (EDM Table 1, eq. 7). Labels are the integer
    labels of the ADM network (its null label included); control records reach it with their sigma."""

    integer_labels = True
    sigma_min, sigma_max = 0.0, math.inf

    def __init__(self, model: torch.nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data
        self.class_cond = model.num_classes is not None
        self.label_dim = 0

    def convert_to_fp16(self) -> None:
        self.model.convert_to_fp16()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                **model_kwargs) -> torch.Tensor:
        x, _, c_skip, c_out, c_in, c_noise = preconditioning(x, sigma, None, 0, self.sigma_data)
        if c_noise.numel() == 1:
            c_noise = c_noise.expand(len(x))
        if model_kwargs.get("control") is not None:  # the control gates are functions of sigma
            model_kwargs["control_sigma"] = c_noise.mul(4).exp()
        out = self.model(c_in * x, c_noise, y=class_labels, **model_kwargs)
        return c_skip * x + c_out * out.float()


def create_sigma_space_network(flags, create_adm: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
    """The network the flags describe: edm2.Precond, or ADMPrecond around create_adm() (the script's ADM factory;
    not needed for EDM2)."""
    if getattr(flags, "arch", "adm") == "edm2":
        label_dim = flags.num_classes if flags.class_cond else 0
        return edm2.Precond(img_resolution=flags.image_size, img_channels=network_channels(flags),
                            label_dim=label_dim, use_fp16=False, sigma_data=flags.sigma_data,
                            **edm2_unet_kwargs(flags))
    return ADMPrecond(create_adm(), flags.sigma_data)


def create_training_network(flags, create_adm: Callable[[], tuple]) -> tuple[torch.nn.Module, object]:
    """(network, diffusion) to train: create_adm()'s ADM pair, or the sigma-space network with diffusion None."""
    if not uses_sigma_space(flags):
        return create_adm()
    return create_sigma_space_network(flags, lambda: create_adm()[0]), None


def objective_from_flags(flags) -> EDMLoss:
    return EDMLoss(flags.sigma_data, flags.p_mean, flags.p_std, learned_uncertainty=flags.objective == "edm2")


def classifier_conditioning(saved: dict | None) -> EDMConditioning | None:
    """EDM's input scaling and noise labels for a classifier trained with --objective edm (its args.json), else
    None (an ADM classifier: the process's x_t and timesteps)."""
    if saved and saved.get("objective") == "edm":
        return EDMConditioning(saved.get("sigma_data", 0.5))
    return None
