"""The classic factory API: default flag dicts, model/diffusion/classifier factories and argparse helpers.

Names, defaults and meanings are those of the original guided-diffusion, so its README command lines and user
code work unchanged.
"""

from __future__ import annotations

import argparse
import inspect
import math

from . import gaussian_diffusion as gd
from guided_diffusion.networks.control import parse_gates, parse_groups
from guided_diffusion.cli.int_flags import INT_RANGES, describe, int_flag
from .respace import SpacedDiffusion, space_timesteps
from guided_diffusion.training.state import parse_ema_rates
from .unet import (  # noqa: F401 (default_channel_mult: also imported from here)
    SR_CHANNEL_MULT,
    UNET_CHANNEL_MULT,
    EncoderUNetModel,
    SuperResModel,
    UNetModel,
    default_channel_mult,
)

NUM_CLASSES = 1000

# Channel multipliers the released models use at each image size.
_UNET_CHANNEL_MULT, _SR_CHANNEL_MULT = UNET_CHANNEL_MULT, SR_CHANNEL_MULT
_CLASSIFIER_HEAD_CHANNELS = 64


def diffusion_defaults() -> dict:
    """Defaults of the diffusion-process flags."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults() -> dict:
    """Defaults of the noisy-classifier flags (classifier_channel_mult "" = the per-size table)."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
        classifier_channel_mult="",
        num_classes=NUM_CLASSES,
    )


def model_and_diffusion_defaults() -> dict:
    """Defaults of the U-Net and diffusion flags."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        num_classes=NUM_CLASSES,
        class_dropout_prob=0.0,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        # Separate semantic and control conditioning (control.py; off by default).
        class_attention=False,
        control_cond="",
        control_gates="",
        control_gating=True,
        control_dropout_prob=0.0,
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict:
    """Defaults of the classifier and diffusion flags (for classifier training)."""
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def parse_channel_mult(spec: str, image_size: int, table: dict, flag: str = "channel_mult") -> tuple:
    """Channel multipliers from a flag value ("1,2,2"), or from the per-size table when the value is empty."""
    if not spec:
        if image_size not in table:
            sizes = ", ".join(str(s) for s in sorted(table))
            raise ValueError(
                f"no default --{flag} for image size {image_size} (defaults exist for {sizes}): "
                f"pass one, e.g. --{flag} 1,2,2"
            )
        return table[image_size]
    try:
        mult = tuple(int(m) for m in spec.split(","))
    except ValueError:
        raise ValueError(f"--{flag} {spec!r}: expected comma-separated integers like 1,2,2") from None
    if any(m < 1 for m in mult):
        raise ValueError(f"--{flag} {spec!r}: multipliers must be >= 1")
    return mult


def parse_attention_resolutions(spec: str, image_size: int, flag: str = "attention_resolutions") -> tuple:
    """Downsample rates (image_size // resolution) at which to use attention, from "32,16,8"."""
    if not spec:
        return ()
    try:
        resolutions = [int(r) for r in spec.split(",")]
    except ValueError:
        raise ValueError(f"--{flag} {spec!r}: expected comma-separated resolutions like 32,16,8") from None
    bad = [r for r in resolutions if r < 1 or image_size % r]
    if bad:
        raise ValueError(f"--{flag} {spec!r}: resolutions {bad} do not divide the image size {image_size}")
    return tuple(image_size // r for r in resolutions)


def create_model_and_diffusion(
    image_size, class_cond, learn_sigma, num_channels, num_res_blocks, channel_mult, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing,
    use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
    resblock_updown, use_fp16, use_new_attention_order, num_classes=NUM_CLASSES, class_dropout_prob=0.0,
    class_attention=False, control_cond="", control_gates="", control_gating=True, control_dropout_prob=0.0,
):
    """A UNetModel and its (possibly respaced) GaussianDiffusion from the flags of model_and_diffusion_defaults.

    class_dropout_prob > 0 (training with label dropout, for classifier-free guidance) gives the label embedding
    one more row, the null label num_classes (see null_label); control_dropout_prob > 0 (the null control record,
    for control guidance) needs control_cond."""
    _check_class_dropout(class_cond, class_dropout_prob)
    if control_dropout_prob > 0 and not control_cond:
        raise ValueError(f"--control_dropout_prob {control_dropout_prob} needs --control_cond")
    if class_dropout_prob > 0:
        num_classes += 1
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, use_new_attention_order=use_new_attention_order, num_classes=num_classes,
        class_attention=class_attention, control_cond=control_cond, control_gates=control_gates,
        control_gating=control_gating,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )
    return model, diffusion


def create_model(
    image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False, class_cond=False,
    use_checkpoint=False, attention_resolutions="16", num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
    use_scale_shift_norm=False, dropout=0, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
    num_classes=NUM_CLASSES, class_attention=False, control_cond="", control_gates="", control_gating=True,
) -> UNetModel:
    """The ADM U-Net for RGB images (6 output channels when learn_sigma), optionally with class attention and
    control conditioning (control.py)."""
    _check_num_classes(class_cond, num_classes)
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size, _UNET_CHANNEL_MULT),
        num_classes=num_classes if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
        class_attention=class_attention,
        control_cond=parse_groups(control_cond),
        control_gates=parse_gates(control_gates),
        control_gating=control_gating,
    )


def _check_num_classes(class_cond: bool, num_classes: int) -> None:
    if class_cond and num_classes < 1:
        raise ValueError(f"--num_classes must be >= 1 for a class-conditional model, got {num_classes}")


def _check_class_dropout(class_cond: bool, class_dropout_prob: float) -> None:
    if not 0 <= class_dropout_prob < 1:
        raise ValueError(f"--class_dropout_prob must be in [0, 1), got {class_dropout_prob}")
    if class_dropout_prob > 0 and not class_cond:
        raise ValueError(f"--class_dropout_prob {class_dropout_prob} needs a class-conditional model: add "
                         "--class_cond True")


def null_label(num_classes: int, class_dropout_prob: float) -> int | None:
    """The label that stands for "no class" in a model trained with label dropout (the extra embedding row),
    or None for a model trained without it."""
    return num_classes if class_dropout_prob > 0 else None


def create_classifier_and_diffusion(
    image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
    classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool, learn_sigma, diffusion_steps,
    noise_schedule, timestep_respacing, use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas,
    classifier_channel_mult="", num_classes=NUM_CLASSES,
):
    """A noisy classifier and the diffusion that noises its inputs, from classifier_and_diffusion_defaults."""
    classifier = create_classifier(
        image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
        classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool,
        classifier_channel_mult=classifier_channel_mult, num_classes=num_classes,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )
    return classifier, diffusion


def create_classifier(
    image_size, classifier_use_fp16, classifier_width, classifier_depth, classifier_attention_resolutions,
    classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool, classifier_channel_mult="",
    num_classes=NUM_CLASSES,
) -> EncoderUNetModel:
    """The noisy-image classifier (EncoderUNetModel) with num_classes logits."""
    channel_mult = parse_channel_mult(classifier_channel_mult, image_size, _UNET_CHANNEL_MULT,
                                      flag="classifier_channel_mult")
    attention_ds = parse_attention_resolutions(classifier_attention_resolutions, image_size,
                                               flag="classifier_attention_resolutions")
    _check_classifier_width(classifier_width, channel_mult, attention_ds)
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=attention_ds,
        channel_mult=channel_mult,
        use_fp16=classifier_use_fp16,
        num_head_channels=_CLASSIFIER_HEAD_CHANNELS,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


def _check_classifier_width(width: int, channel_mult, attention_ds) -> None:
    """The classifier's attention uses 64-channel heads: every attended width must be a multiple of 64."""
    widths = {int(m * width) for level, m in enumerate(channel_mult) if 2**level in attention_ds}
    widths.add(int(channel_mult[-1] * width))  # the middle block (and an attention pool) always attend
    bad = sorted(w for w in widths if w % _CLASSIFIER_HEAD_CHANNELS)
    if bad:
        raise ValueError(
            f"--classifier_width {width}: attention layers would have {bad} channels, which 64-channel heads "
            f"cannot split; use a multiple of 64 (or a --classifier_channel_mult making these multiples of 64)"
        )


def sr_model_and_diffusion_defaults() -> dict:
    """Defaults of the super-resolution model flags (large_size / small_size instead of image_size)."""
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    names = inspect.signature(sr_create_model_and_diffusion).parameters
    return {k: v for k, v in res.items() if k in names}


def sr_create_model_and_diffusion(
    large_size, small_size, class_cond, learn_sigma, num_channels, num_res_blocks, num_heads, num_head_channels,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule, timestep_respacing,
    use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
    resblock_updown, use_fp16, num_classes=NUM_CLASSES,
):
    """A SuperResModel (small_size -> large_size) and its diffusion, from sr_model_and_diffusion_defaults."""
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma, class_cond=class_cond,
        use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, num_classes=num_classes,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )
    return model, diffusion


def sr_create_model(
    large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond, use_checkpoint,
    attention_resolutions, num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout,
    resblock_updown, use_fp16, num_classes=NUM_CLASSES,
) -> SuperResModel:
    """The super-resolution U-Net for large_size images conditioned on small_size ones."""
    if small_size < 1 or small_size > large_size:
        raise ValueError(f"--small_size {small_size} must be between 1 and --large_size {large_size}")
    if large_size not in _SR_CHANNEL_MULT:
        sizes = ", ".join(str(s) for s in sorted(_SR_CHANNEL_MULT))
        raise ValueError(f"unsupported --large_size {large_size} for the upsampler: choose one of {sizes}")
    _check_num_classes(class_cond, num_classes)
    return SuperResModel(
        image_size=large_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=parse_attention_resolutions(attention_resolutions, large_size),
        dropout=dropout,
        channel_mult=_SR_CHANNEL_MULT[large_size],
        num_classes=num_classes if class_cond else None,
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
    )


def create_gaussian_diffusion(
    *, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False,
    predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False, timestep_respacing="",
) -> SpacedDiffusion:
    """The diffusion process of the flags; respaced when timestep_respacing is set (e.g. "250" or "ddim25")."""
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


# The allowed range of float flags beyond "finite": (lowest, lowest included, highest, highest included).
_FLOAT_RANGES = {
    "dropout": (0.0, True, 1.0, False),
    "class_dropout_prob": (0.0, True, 1.0, False),
    "eta": (0.0, True, math.inf, False),
    "sigma_min": (0.0, False, math.inf, False),
    "sigma_max": (0.0, False, math.inf, False),
    "rho": (0.0, False, math.inf, False),
    "s_churn": (0.0, True, math.inf, False),
    "s_tmin": (0.0, True, math.inf, False),
    "s_tmax": (0.0, True, math.inf, True),  # inf (the default) means no upper bound on churn
    "s_noise": (0.0, False, math.inf, False),
    "lr": (0.0, False, math.inf, False),
    "weight_decay": (0.0, True, math.inf, False),
    "fp16_scale_growth": (0.0, True, math.inf, False),
    "lr_ref_images": (0.0, True, math.inf, False),
    "lr_rampup_images": (0.0, True, math.inf, False),
    "sigma_data": (0.0, False, math.inf, False),
    "p_std": (0.0, False, math.inf, False),
    "min_crop_frac": (0.0, False, 1.0, True),
    "control_dropout_prob": (0.0, True, 1.0, False),
}


def range_error(name: str, value: float) -> str | None:
    """Why `value` lies outside --name's range (declared once: _FLOAT_RANGES, int_flags.INT_RANGES), or None; for
    values that reach the code without the command line (SamplerOptions)."""
    if isinstance(value, float) and math.isnan(value):
        return f"--{name} must be a number, got nan"
    if name in INT_RANGES:
        allowed = INT_RANGES[name]
        inside = value == allowed.special or (value >= allowed.low and (allowed.high is None or value <= allowed.high))
        return None if inside else f"--{name} must be {describe(allowed)}, got {value}"
    low, low_in, high, high_in = _FLOAT_RANGES.get(name, (-math.inf, False, math.inf, True))
    if not (value >= low if low_in else value > low):
        return f"--{name} must be {'>=' if low_in else '>'} {low:g}, got {value}"
    if not (value <= high if high_in else value < high):
        return f"--{name} must be {'<=' if high_in else '<'} {high:g}, got {value}"
    return None


def float_flag(name: str):
    """An argparse type for --name: a float that is finite (unless its range admits inf) and inside its range."""
    low, low_in, high, high_in = _FLOAT_RANGES.get(name, (-math.inf, False, math.inf, False))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value >= low if low_in else value > low) and (value <= high if high_in else value < high)
        if not inside:
            lower = f"{'[' if low_in else '('}{low:g}"
            upper = f"{high:g}{']' if high_in else ')'}"
            wanted = "a finite number" if (low, high) == (-math.inf, math.inf) else f"a number in {lower}, {upper}"
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = "float"  # argparse names the type in its messages
    return parse


def _ema_rate_flag(text: str) -> str:
    """--ema_rate: comma-separated rates in [0, 1), kept as the string the original passes on."""

    try:
        parse_ema_rates(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
    return text


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: dict) -> None:
    """Add a --key flag for every entry, typed like its default (booleans parsed by str2bool, floats checked
    to be finite and inside their range, integers inside theirs: int_flags.INT_RANGES)."""
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        elif isinstance(v, float):
            v_type = float_flag(k)
        elif isinstance(v, int):
            v_type = int_flag(k)
        elif k == "ema_rate":
            v_type = _ema_rate_flag
        parser.add_argument(f"--{k}", default=v, type=v_type)


def args_to_dict(args: argparse.Namespace, keys) -> dict:
    """The values of `keys` in parsed arguments."""
    return {k: getattr(args, k) for k in keys}


def str2bool(v) -> bool:
    """Parse a boolean flag value (yes/no, true/false, t/f, y/n, 1/0)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false), got {v!r}")
