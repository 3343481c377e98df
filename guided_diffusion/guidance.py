"""Every guidance method as a transformation of a denoiser D(x; sigma) in sigma space, and their composition.

With D the main (conditional) model's denoiser, the guided denoiser is

    D~ = clip(D + sum_k [sigma in I_k] (w_k - 1) (D - R_k)) + [sigma in I_c] sigma^2 grad_x s log p(y | x, sigma)

- classifier-free guidance (Ho & Salimans 2021): R = D with the null label, w = --cfg_scale, giving
  D_u + w (D_c - D_u);
- autoguidance (Karras et al. 2024, eq. 2): R = a weaker model of the same task (smaller, or trained shorter),
  given the same labels, w = --guide_scale, giving D_guide + w (D - D_guide);
- classifier guidance (Dhariwal & Nichol 2021): the score shifted by a noisy classifier's gradient (EDM eq. 3
  with D = x + sigma^2 score), added last and unclipped as ADM's DDIM does;
- control guidance (control.py, Berrada et al. 2024): R = D with the null control record, w = --control_cfg_scale;
  with CFG this guides class and controls each against its own null, with its own scale;
- a guidance interval I = (lo, hi] for each (Kynkaenniemi et al. 2024): outside it the term is zero and its
  network (the null-label pass, the guide, the classifier) is not evaluated for those samples.

Each term is a difference taken from the same D, so the terms commute: the order of composition does not
change the result. Every mixing is affine, so it holds alike for eps, x_0 and D predictions.

DDPM and DDIM keep the original samplers (golden-exact): CFG and autoguidance reach them through
process_model_fn (D~ converted back to the model's eps or x_0 at the sigma of each timestep), classifier
guidance through interval_cond_fn (ADM's mean shift or score correction, zero outside the interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .control import NULL

if TYPE_CHECKING:
    from .denoiser import Denoiser
    from .objectives import EDMConditioning

DenoiseFn = Callable[..., torch.Tensor]  # (x, sigma [N] float64, **model_kwargs) -> D
CondFn = Callable[..., torch.Tensor]  # (x_t, timesteps, **model_kwargs) -> s grad_{x_t} log p(y | x_t, t)


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


def vp_input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """c_in of an ADM process: x_t = x / sqrt(sigma^2 + 1)."""
    return (sigma**2 + 1).rsqrt()


@dataclass
class ClassifierTerm:
    """Classifier guidance in sigma space: cond_fn at the classifier's input c_in(sigma) x and timestep."""

    cond_fn: CondFn
    interval: Interval
    timestep: Callable[[torch.Tensor], torch.Tensor]  # sigma [N] -> the classifier's timesteps
    input_scale: Callable[[torch.Tensor], torch.Tensor] = vp_input_scale  # sigma [N] -> c_in


def per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma (a number, 0-d or [N] tensor) as a float64 [N] tensor on x's device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return sigma.expand(x.shape[0]).contiguous() if sigma.ndim == 0 else sigma


def broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _rows(kwargs: dict, index: torch.Tensor) -> dict:
    return {k: v[index] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _stack(kwargs: list[dict]) -> dict:
    """Model kwargs of several passes concatenated along the batch (non-tensor values from the first)."""
    return {k: torch.cat([kw[k] for kw in kwargs]) if isinstance(v, torch.Tensor) else v
            for k, v in kwargs[0].items()}


def on_active(mask: torch.Tensor, fn: Callable, x: torch.Tensor, sigma: torch.Tensor, kwargs: dict):
    """fn(x, sigma, **kwargs) on the samples where mask is set only; None when there are none."""
    if bool(mask.all()):
        return fn(x, sigma, **kwargs)
    if not bool(mask.any()):
        return None
    index = mask.nonzero().squeeze(1)
    return fn(x[index], sigma[index], **_rows(kwargs, index))


def checked_gradient(cond_fn: CondFn, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
    """cond_fn(x_t, t, **model_kwargs), which must be a tensor shaped like x_t."""
    gradient = cond_fn(x_t, t, **model_kwargs)
    if not isinstance(gradient, torch.Tensor) or gradient.shape != x_t.shape:
        got = list(gradient.shape) if isinstance(gradient, torch.Tensor) else type(gradient).__name__
        raise ValueError(f"cond_fn must return a gradient shaped like x {list(x_t.shape)}, got {got}")
    return gradient


class GuidedDenoiser:
    """D~(x; sigma) of the module docstring over the main model's Denoiser (see Denoiser.with_extra)."""

    def __init__(self, main: Denoiser, references: list[Reference] = (), classifier: ClassifierTerm | None = None,
                 clip_denoised: bool = False):
        self.main = main
        self.references = list(references)
        self.classifier = classifier
        self.clip_denoised = clip_denoised

    def mixed(self, x: torch.Tensor, sigma, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(D + the mixing terms, unclipped; the main model's extra output channels)."""
        sigma = per_sample(sigma, x)
        masks = [ref.interval.contains(sigma) for ref in self.references]
        joint = [ref.relabel is not None and bool(mask.all()) for ref, mask in zip(self.references, masks)]
        if len(self.references) == 1 and joint[0] and self.references[0].scale == 0:  # D_null alone: one pass
            return self.main.with_extra(x, sigma, **self.references[0].relabel(model_kwargs))
        # The main network's passes (D, and the relabelled ones active everywhere) in one batch.
        passes = [model_kwargs] + [ref.relabel(model_kwargs) for ref, j in zip(self.references, joint) if j]
        n = len(passes)
        denoised, extra = self.main.with_extra(x.repeat(n, *[1] * (x.ndim - 1)), sigma.repeat(n), **_stack(passes))
        outputs = iter(denoised.chunk(n)[1:])
        denoised, extra = denoised.chunk(n)[0], extra.chunk(n)[0]
        mixed = denoised
        for ref, mask, j in zip(self.references, masks, joint):
            if j:
                other = next(outputs)
            else:
                fn = ref.denoise or (lambda x, s, ref=ref, **kw: self.main(x, s, **ref.relabel(kw)))
                other = on_active(mask, fn, x, sigma, model_kwargs)
            if other is not None:
                mixed = mixed.clone()
                mixed[mask] += (ref.scale - 1) * (denoised[mask] - other)
        return mixed, extra

    def __call__(self, x: torch.Tensor, sigma, **model_kwargs) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        denoised, _ = self.mixed(x, sigma, **model_kwargs)
        if self.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if self.classifier is not None:
            mask = self.classifier.interval.contains(sigma)
            shift = on_active(mask, self._classifier_shift, x, sigma, model_kwargs)
            if shift is not None:
                denoised = denoised.clone()
                denoised[mask] += shift
        return denoised

    def _classifier_shift(self, x: torch.Tensor, sigma: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """sigma^2 grad_x s log p = sigma^2 c_in cond_fn(c_in x, t(sigma)); for an ADM classifier, with sigma^2 c_in
        = (1 - alpha_bar) / sqrt(alpha_bar), this is ADM's condition_score exactly."""
        c_in = broadcast(self.classifier.input_scale(sigma), x)
        gradient = checked_gradient(self.classifier.cond_fn, (c_in * x).float(), self.classifier.timestep(sigma),
                                    model_kwargs)
        return broadcast(sigma**2, x) * c_in * gradient.to(x.dtype)


def process_model_fn(guided: GuidedDenoiser) -> Callable:
    """model_fn(x_t, timesteps, **kwargs) for DDPM/DDIM whose output is the guided D~ (mixing terms only;
    clipping and classifier guidance stay in the samplers) in the main model's parameterization, computed in
    float64 at the sigma of each timestep; learned-variance channels are the main model's."""
    main = guided.main

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        sigma = main.sigma_of_timestep(t)
        x = x_t.double() * broadcast((sigma**2 + 1).sqrt(), x_t)
        denoised, extra = guided.mixed(x, sigma, **model_kwargs)
        output = denoised if main.predicts_x0 else (x - denoised) / broadcast(sigma, x)
        return torch.cat([output.to(x_t.dtype), extra.to(x_t.dtype)], dim=1)

    return model_fn


def interval_cond_fn(cond_fn: CondFn, interval: Interval, sigma_of_timestep: Callable) -> CondFn:
    """cond_fn for DDPM/DDIM that is zero outside the interval, where the classifier is not evaluated."""
    if interval.always:
        return cond_fn

    def gated(x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        mask = interval.contains(sigma_of_timestep(t))
        gradient = torch.zeros_like(x_t)
        active = on_active(mask, lambda x, s, **kw: checked_gradient(cond_fn, x, s, kw), x_t, t, model_kwargs)
        if active is not None:
            gradient[mask] = active.to(gradient.dtype)
        return gradient

    return gated


def classifier_cond_fn(classifier: torch.nn.Module, scale: float, use_bf16: bool = False) -> CondFn:
    """The guidance gradient s grad_{x_t} log p(y | x_t, t) of a noisy classifier (ADM section 4)."""

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **_) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs labels y")
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            selected = log_probs[range(len(logits)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale

    return cond_fn


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


def check_guidance(cfg_scale: float, has_null_label: bool, cfg_interval: Interval, has_guide: bool,
                   guide_scale: float, guide_interval: Interval, has_classifier: bool,
                   classifier_interval: Interval) -> None:
    """One-line errors for guidance flags that cannot work together (before any network is loaded)."""
    if cfg_scale != 1 and not has_null_label:
        raise ValueError(f"--cfg_scale {cfg_scale} needs a class-conditional model trained with label dropout "
                         "(image_train.py --class_cond True --class_dropout_prob 0.1); this one has no null label")
    if guide_scale != 1 and not has_guide:
        raise ValueError(f"--guide_scale {guide_scale} needs a guide model: --guide_model_path")
    unused = [("cfg_interval", cfg_interval, cfg_scale != 1, "--cfg_scale other than 1"),
              ("guide_interval", guide_interval, has_guide and guide_scale != 1,
               "--guide_model_path and --guide_scale other than 1"),
              ("classifier_interval", classifier_interval, has_classifier, "--classifier_path")]
    for flag, interval, used, needs in unused:
        if not interval.always and not used:
            raise ValueError(f"--{flag} is given without its guidance: it needs {needs}")


@dataclass
class Guidance:
    """Which guidance to apply (from the sampling flags), independent of the main model; bind() applies it to
    the main model's denoiser. Scale 1 (and no classifier) is no guidance."""

    cfg_scale: float = 1.0
    null_label: int | None = None  # the label that means "no label" to a model trained with label dropout
    cfg_interval: Interval = Interval()
    guide: DenoiseFn | None = None  # autoguidance: the weaker model's denoiser
    guide_scale: float = 1.0
    guide_interval: Interval = Interval()
    cond_fn: CondFn | None = None  # classifier guidance: s grad log p(y | x_t, t)
    classifier_interval: Interval = Interval()
    # A classifier trained with --objective edm: its inputs c_in(sigma) x and noise labels (objectives.py).
    classifier_conditioning: EDMConditioning | None = None
    # Control guidance (control.py): R = D with the null control record, at every level.
    control_cfg_scale: float = 1.0

    def __post_init__(self):
        check_guidance(self.cfg_scale, self.null_label is not None, self.cfg_interval, self.guide is not None,
                       self.guide_scale, self.guide_interval, self.cond_fn is not None, self.classifier_interval)

    @property
    def active(self) -> list[tuple[str, Interval]]:
        """(flag, interval) of each guidance that is on."""
        terms = [("cfg_interval", self.cfg_interval, self.cfg_scale != 1),
                 ("guide_interval", self.guide_interval, self.guide is not None and self.guide_scale != 1),
                 ("classifier_interval", self.classifier_interval, self.cond_fn is not None)]
        return [(flag, interval) for flag, interval, on in terms if on]

    def check_intervals(self, levels: torch.Tensor) -> None:
        """One-line error for an interval that holds none of the noise levels the sampler visits."""
        for flag, interval in self.active:
            if not interval.always:
                interval.check_reaches(levels, flag)

    def references(self) -> list[Reference]:
        """The mixing terms that are on."""
        out = []
        if self.cfg_scale != 1:
            out.append(Reference("cfg", self.cfg_scale, self.cfg_interval, relabel=null_labels(self.null_label)))
        if self.guide is not None and self.guide_scale != 1:
            out.append(Reference("autoguidance", self.guide_scale, self.guide_interval, denoise=self.guide))
        if self.control_cfg_scale != 1:
            out.append(Reference("control_cfg", self.control_cfg_scale, Interval(), relabel=null_controls))
        return out

    @property
    def mixes(self) -> bool:
        """Whether a mixing term (CFG or autoguidance) is on."""
        return (self.cfg_scale != 1 or (self.guide is not None and self.guide_scale != 1)
                or self.control_cfg_scale != 1)

    def bind(self, main: Denoiser, clip_denoised: bool = False) -> GuidedDenoiser:
        """The guided denoiser D~ over the main model's (unclipped) denoiser."""
        classifier = None
        conditioning = self.classifier_conditioning
        if self.cond_fn is not None and conditioning is not None:
            classifier = ClassifierTerm(self.cond_fn, self.classifier_interval, conditioning.noise_label,
                                        conditioning.input_scale)
        elif self.cond_fn is not None:
            classifier = ClassifierTerm(self.cond_fn, self.classifier_interval, main.timestep)
        return GuidedDenoiser(main, self.references(), classifier, clip_denoised)

    def process_model_fn(self, main: Denoiser) -> Callable:
        """The network function DDPM/DDIM call: the main model's, or D~'s mixing terms in its parameterization."""
        return process_model_fn(self.bind(main)) if self.mixes else main.model_fn

    def process_cond_fn(self, main: Denoiser) -> CondFn | None:
        """The classifier's cond_fn for DDPM/DDIM, zero outside its interval."""
        if self.cond_fn is None:
            return None
        if self.classifier_conditioning is not None:
            raise ValueError("a classifier trained with --objective edm guides the sigma-space samplers (--sampler "
                             "heun, euler, edm_stochastic, dpmpp_2m), not ddpm/ddim")
        return interval_cond_fn(self.cond_fn, self.classifier_interval, main.sigma_of_timestep)
