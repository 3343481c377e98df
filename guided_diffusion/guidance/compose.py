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

Each method is one term of guidance/terms.py (its flags, its check, its interval, its network); Guidance
composes them. Each term is a difference taken from the same D, so the terms commute: the order of composition
does not change the result (up to float rounding; TERMS fixes the order). Every mixing is affine, so it holds alike for eps, x_0 and D predictions.

DDPM and DDIM keep the original samplers (golden-exact): CFG and autoguidance reach them through
process_model_fn (D~ converted back to the model's eps or x_0 at the sigma of each timestep), classifier
guidance through interval_cond_fn (ADM's mean shift or score correction, zero outside the interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.gaussian_diffusion import CondFn, checked_gradient  # noqa: F401 (also imported from here)
from guided_diffusion.guidance.terms import (  # noqa: F401 (also imported from here)
    TERMS,
    Autoguidance,
    ClassifierFree,
    ClassifierGuidance,
    ControlGuidance,
    DenoiseFn,
    Interval,
    Reference,
    Term,
    checked,
    null_controls,
    null_labels,
)
from guided_diffusion.nn import broadcast, per_sample  # noqa: F401 (also imported from here)
from guided_diffusion.processes.objectives import EDMConditioning


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


class Guidance:
    """Which guidance to apply, independent of the main model: one term per method (guidance.terms.TERMS), each
    checked once; bind() applies them to the main model's denoiser. Scale 1 (and no classifier) is no guidance.

    Guidance(cfg_scale=..., ...) makes and checks the terms from these values; Guidance.of(terms) composes terms
    made and checked from the flags (sampling.pipeline.guidance_terms) with their networks added."""

    def __init__(self, cfg_scale: float = 1.0, null_label: int | None = None, cfg_interval: Interval = Interval(),
                 guide: DenoiseFn | None = None, guide_scale: float = 1.0, guide_interval: Interval = Interval(),
                 cond_fn: CondFn | None = None, classifier_interval: Interval = Interval(),
                 classifier_conditioning: EDMConditioning | None = None, control_cfg_scale: float = 1.0):
        self.terms = checked((
            ClassifierFree(cfg_scale, cfg_interval, null_label),
            Autoguidance(guide_scale, guide_interval, guide is not None, guide),
            ControlGuidance(control_cfg_scale),
            ClassifierGuidance(1.0, classifier_interval, cond_fn is not None, cond_fn, classifier_conditioning)))

    @classmethod
    def of(cls, terms: tuple[Term, ...]) -> Guidance:
        """Guidance from terms already checked, in the order of TERMS (other terms after them, as given)."""
        guidance = cls.__new__(cls)
        order = {kind: i for i, kind in enumerate(TERMS)}
        guidance.terms = tuple(sorted(terms, key=lambda term: order.get(type(term), len(TERMS))))
        return guidance

    def term(self, kind: type[Term]) -> Term:
        """The term of this kind (an off one when absent)."""
        return next((t for t in self.terms if isinstance(t, kind)), kind())

    @property
    def cond_fn(self) -> CondFn | None:
        return self.term(ClassifierGuidance).cond_fn

    @property
    def classifier_interval(self) -> Interval:
        return self.term(ClassifierGuidance).interval

    @property
    def active(self) -> list[tuple[str, Interval]]:
        """(interval flag, interval) of each guidance that is on and has an interval."""
        return [(t.interval_flag, t.interval) for t in self.terms if t.on and t.interval_flag]

    def check_intervals(self, levels: torch.Tensor) -> None:
        """One-line error for an interval that holds none of the noise levels the sampler visits."""
        for flag, interval in self.active:
            if not interval.always:
                interval.check_reaches(levels, flag)

    def references(self) -> list[Reference]:
        """The mixing terms that are on, in the order of TERMS."""
        return [ref for ref in (t.reference() for t in self.terms) if ref is not None]

    @property
    def mixes(self) -> bool:
        """Whether a mixing term (CFG, autoguidance, control guidance) is on."""
        return any(t.on for t in self.terms if not isinstance(t, ClassifierGuidance))

    def _classifier(self, main: Denoiser) -> ClassifierTerm | None:
        term = self.term(ClassifierGuidance)
        if term.cond_fn is None:
            return None
        if term.conditioning is not None:
            return ClassifierTerm(term.cond_fn, term.interval, term.conditioning.noise_label,
                                  term.conditioning.input_scale)
        return ClassifierTerm(term.cond_fn, term.interval, main.timestep)

    def bind(self, main: Denoiser, clip_denoised: bool = False) -> GuidedDenoiser:
        """The guided denoiser D~ over the main model's (unclipped) denoiser."""
        return GuidedDenoiser(main, self.references(), self._classifier(main), clip_denoised)

    def process_model_fn(self, main: Denoiser) -> Callable:
        """The network function DDPM/DDIM call: the main model's, or D~'s mixing terms in its parameterization."""
        return process_model_fn(self.bind(main)) if self.mixes else main.model_fn

    def process_cond_fn(self, main: Denoiser) -> CondFn | None:
        """The classifier's cond_fn for DDPM/DDIM, zero outside its interval."""
        term = self.term(ClassifierGuidance)
        if term.cond_fn is None:
            return None
        if term.conditioning is not None:
            raise ValueError("a classifier trained with --objective edm guides the sigma-space samplers (--sampler "
                             "heun, euler, edm_stochastic, dpmpp_2m), not ddpm/ddim")
        return interval_cond_fn(term.cond_fn, term.interval, main.sigma_of_timestep)
