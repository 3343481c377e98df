"""Each guidance method as one term: its flags, its check, its interval and its extra network.

A term is checked once, when it is made from the flags (before any network is loaded, with only whether its
network is given); with_network() then adds the loaded network without checking again. guidance.Guidance
composes the terms by the formula in guidance.py's docstring: the mixing terms (classifier-free, autoguidance,
control) as (w - 1)(D - R) in the order of TERMS, the classifier's score shift last.

Adding a method: a Term subclass with its FLAGS, from_flags(), check() and reference(), appended to TERMS, and
its test; the sampling scripts then offer its flags and build it (sampling.pipeline.guidance_terms).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from guided_diffusion.networks.control import NULL, parse_control
from guided_diffusion.gaussian_diffusion import CondFn
from guided_diffusion.script_util import null_label

DenoiseFn = Callable[..., torch.Tensor]  # (x, sigma [N] float64, **model_kwargs) -> D


@dataclass(frozen=True)
class Interval:
    """The noise levels lo < sigma <= hi where a guidance term is active (default: every level)."""

    lo: float = 0.0
    hi: float = math.inf

    @classmethod
    def parse(cls, text: str, flag: str) -> Interval:
        """"lo,hi" (sigma values; hi may be inf) from --flag, or every level for ""."""
        if not text:
            return cls()
        parts = text.split(",")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"--{flag} {text!r}: expected two noise levels lo,hi such as 0.3,5") from None
        if math.isnan(lo) or math.isnan(hi) or lo < 0:
            raise ValueError(f"--{flag} {text!r}: lo and hi must be numbers with lo >= 0")
        if lo >= hi:
            raise ValueError(f"--{flag} {text!r}: lo must be below hi")
        return cls(lo, hi)

    @property
    def always(self) -> bool:
        return self.lo <= 0 and self.hi == math.inf

    def contains(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample mask: lo < sigma <= hi."""
        return (sigma > self.lo) & (sigma <= self.hi)

    def check_reaches(self, levels: torch.Tensor, flag: str) -> None:
        """One-line error when none of the sampler's noise levels (> 0) lies in the interval."""
        levels = levels[levels > 0].double()
        if not bool(self.contains(levels).any()):
            raise ValueError(f"--{flag} {self.lo:g},{self.hi:g} contains none of the sampler's noise levels "
                             f"({float(levels.min()):.4g} to {float(levels.max()):.4g}): widen it")


@dataclass
class Reference:
    """A mixing term (w - 1)(D - R). R is either the main network on other inputs, relabel(model_kwargs) (CFG:
    the null label), evaluated in one batch with D where the term is active for every sample, or another
    network's denoiser (autoguidance)."""

    name: str
    scale: float
    interval: Interval
    denoise: DenoiseFn | None = None
    relabel: Callable[[dict], dict] | None = None


@dataclass(frozen=True)
class Term:
    """One guidance method: scale w (1 = off) and interval I. Subclasses declare their flags once (FLAGS: name
    -> default), the interval's flag, and what the interval needs when the term is off."""

    FLAGS: ClassVar[dict[str, Any]] = {}
    interval_flag: ClassVar[str] = ""
    needs: ClassVar[str] = ""

    scale: float = 1.0
    interval: Interval = Interval()

    @property
    def on(self) -> bool:
        return self.scale != 1

    @classmethod
    def from_flags(cls, args) -> Term:
        """The term the parsed flags ask for (its network, if any, not loaded yet); not checked. A script that
        does not offer the term's flags gets it off."""
        raise NotImplementedError

    @classmethod
    def flags(cls, args) -> dict[str, Any]:
        """This term's flags from the parsed ones; their defaults where a script does not offer them."""
        return {name: getattr(args, name, default) for name, default in cls.FLAGS.items()}

    def check(self) -> None:
        """One-line errors for flags of this term that cannot work (a subclass adds its own first)."""
        if self.interval_flag and not self.interval.always and not self.on:
            raise ValueError(f"--{self.interval_flag} is given without its guidance: it needs {self.needs}")

    def reference(self) -> Reference | None:
        """The mixing term (w - 1)(D - R) when this term is on and mixes; None otherwise."""
        return None

    def with_network(self, **network) -> Term:
        """This term with its loaded network (no second check)."""
        return dataclasses.replace(self, **network)


def null_labels(null_label: int) -> Callable[[dict], dict]:
    """CFG's relabelling: the model kwargs with every label replaced by the null label of label dropout."""

    def relabel(model_kwargs: dict) -> dict:
        y = model_kwargs.get("y")
        if y is None:
            raise ValueError("classifier-free guidance needs labels y")
        return {**model_kwargs, "y": torch.full_like(y, null_label)}

    return relabel


def null_controls(model_kwargs: dict) -> dict:
    """model_kwargs with every control record replaced by the null record (control guidance's reference)."""
    control = model_kwargs.get("control")
    if control is None:
        raise ValueError("control guidance needs control records")
    return {**model_kwargs, "control": torch.full_like(control, NULL)}


@dataclass(frozen=True)
class ClassifierFree(Term):
    """Classifier-free guidance (Ho & Salimans 2021): R = D with the null label, D_u + w (D_c - D_u)."""

    FLAGS: ClassVar[dict[str, Any]] = dict(cfg_scale=1.0, cfg_interval="")
    interval_flag: ClassVar[str] = "cfg_interval"
    needs: ClassVar[str] = "--cfg_scale other than 1"

    null_label: int | None = None  # the label that means "no label" to a model trained with label dropout

    @classmethod
    def from_flags(cls, args) -> ClassifierFree:
        dropout = getattr(args, "class_dropout_prob", 0.0)  # upsamplers have no label dropout
        null = null_label(args.num_classes, dropout) if args.class_cond else None
        flags = cls.flags(args)
        return cls(flags["cfg_scale"], Interval.parse(flags["cfg_interval"], "cfg_interval"), null)

    def check(self) -> None:
        if self.on and self.null_label is None:
            raise ValueError(f"--cfg_scale {self.scale} needs a class-conditional model trained with label dropout "
                             "(image_train.py --class_cond True --class_dropout_prob 0.1); this one has no null "
                             "label")
        super().check()

    def reference(self) -> Reference | None:
        return Reference("cfg", self.scale, self.interval, relabel=null_labels(self.null_label)) if self.on else None


@dataclass(frozen=True)
class Autoguidance(Term):
    """Autoguidance (Karras et al. 2024, eq. 2): R = a weaker model of the same task, D_guide + w (D - D_guide)."""

    FLAGS: ClassVar[dict[str, Any]] = dict(guide_model_path="", guide_flags="", guide_scale=1.0, guide_interval="")
    interval_flag: ClassVar[str] = "guide_interval"
    needs: ClassVar[str] = "--guide_model_path and --guide_scale other than 1"

    has_guide: bool = False  # --guide_model_path given
    guide: DenoiseFn | None = None  # the guide's denoiser, once loaded

    @classmethod
    def from_flags(cls, args) -> Autoguidance:
        flags = cls.flags(args)
        return cls(flags["guide_scale"], Interval.parse(flags["guide_interval"], "guide_interval"),
                   bool(flags["guide_model_path"]))

    @property
    def on(self) -> bool:
        return self.has_guide and self.scale != 1

    def check(self) -> None:
        if self.scale != 1 and not self.has_guide:
            raise ValueError(f"--guide_scale {self.scale} needs a guide model: --guide_model_path")
        super().check()

    def reference(self) -> Reference | None:
        if not self.on:
            return None
        if self.guide is None:
            raise ValueError("autoguidance needs the guide's denoiser: load it with with_network(guide=...)")
        return Reference("autoguidance", self.scale, self.interval, denoise=self.guide)


@dataclass(frozen=True)
class ControlGuidance(Term):
    """Control guidance (control.py, Berrada et al. 2024): R = D with the null control record, at every level."""

    FLAGS: ClassVar[dict[str, Any]] = dict(control_cfg_scale=1.0)

    @classmethod
    def from_flags(cls, args) -> ControlGuidance:
        scale, record = cls.flags(args)["control_cfg_scale"], getattr(args, "control", "")
        if getattr(args, "control_cond", ""):
            parse_control(record, args.image_size)  # bad values fail now
            if scale != 1 and not args.control_dropout_prob:
                raise ValueError(f"--control_cfg_scale {scale} needs a model trained with --control_dropout_prob > 0 "
                                 "(it never saw the null record)")
        elif record or scale != 1:
            raise ValueError("--control and --control_cfg_scale need a model trained with --control_cond")
        return cls(scale)

    def reference(self) -> Reference | None:
        return Reference("control_cfg", self.scale, Interval(), relabel=null_controls) if self.on else None


@dataclass(frozen=True)
class ClassifierGuidance(Term):
    """Classifier guidance (Dhariwal & Nichol 2021): the score shifted by a noisy classifier's gradient, added
    last and unclipped; its scale lives in cond_fn (guidance.classifier_cond_fn)."""

    FLAGS: ClassVar[dict[str, Any]] = dict(classifier_path="", classifier_scale=1.0, classifier_interval="")
    interval_flag: ClassVar[str] = "classifier_interval"
    needs: ClassVar[str] = "--classifier_path"

    has_classifier: bool = False  # --classifier_path given
    cond_fn: CondFn | None = None  # s grad log p(y | x_t, t), once loaded
    conditioning: Any = None  # a classifier trained with --objective edm: objectives.EDMConditioning

    @classmethod
    def from_flags(cls, args) -> ClassifierGuidance:  # scripts without a classifier have none of its flags
        flags = cls.flags(args)
        return cls(1.0, Interval.parse(flags["classifier_interval"], "classifier_interval"),
                   bool(flags["classifier_path"]))

    @property
    def on(self) -> bool:
        return self.has_classifier or self.cond_fn is not None


# The methods in the order of composition (the mixing terms' order fixes the float rounding of D~).
TERMS: tuple[type[Term], ...] = (ClassifierFree, Autoguidance, ControlGuidance, ClassifierGuidance)


def checked(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    """The terms, each checked once (one-line ValueError for flags that cannot work)."""
    for term in terms:
        term.check()
    return tuple(terms)
