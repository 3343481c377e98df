"""Guidance methods as terms: each checked once on its way from the flags to the sampler, and a new method is one
Term subclass that composes by the same formula."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.guidance import terms as guidance_terms
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.guidance.compose import Guidance
from guided_diffusion.guidance.terms import TERMS, ClassifierFree, Interval, Reference, Term

from launch import run_main


def _toy_model_fn(x, t, y=None):
    """eps = x / 10 + y, and 3 "variance" channels."""
    offset = y.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.cat([x / 10 + offset, x * 0 + offset + 100], dim=1)


def _denoiser() -> Denoiser:
    betas = gd.get_named_beta_schedule("cosine", 20)
    diffusion = gd.GaussianDiffusion(betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.LEARNED_RANGE, loss_type=gd.LossType.MSE)
    return Denoiser(diffusion, _toy_model_fn)


def test_every_term_declares_its_flags_once_and_the_scripts_offer_them():
    flags = [name for term in TERMS for name in term.FLAGS]
    assert len(flags) == len(set(flags))
    defaults = {**sampling.sampling_defaults(), **sampling.classifier_flag_defaults()}
    for term in TERMS:
        assert {k: defaults[k] for k in term.FLAGS} == term.FLAGS
        if term.interval_flag:
            assert term.interval_flag in term.FLAGS


def test_each_guidance_term_is_checked_once_from_the_flags_to_the_sampler(trained, tmp_path, monkeypatch):
    calls = {term.__name__: 0 for term in TERMS}
    for term in TERMS:
        original = term.check

        def counted(self, original=original, name=term.__name__):
            if type(self).__name__ == name:
                calls[name] += 1
            return original(self)

        monkeypatch.setattr(term, "check", counted)
    code, stderr = run_main("image_sample.py", [
        "--model_path", trained["cfg"], "--guide_model_path", trained["cfg_early"], "--guide_scale", 2,
        "--cfg_scale", 2, "--cfg_interval", "0.005,100", "--sampler", "heun", "--steps", 2, "--num_samples", 2,
        "--batch_size", 2, "--progress", False, "--log_dir", tmp_path])
    assert code == 0, stderr
    assert calls == {term.__name__: 1 for term in TERMS}


def test_terms_fail_with_their_own_message_before_any_network_is_loaded():
    with pytest.raises(ValueError, match=r"^--cfg_scale 2 needs a class-conditional model trained with label "):
        guidance_terms.checked((ClassifierFree(2, Interval(), None),))
    with pytest.raises(ValueError, match=r"^--guide_interval is given without its guidance"):
        guidance_terms.checked((guidance_terms.Autoguidance(1.0, Interval(0.5, 2.0), True),))
    with pytest.raises(ValueError, match=r"^autoguidance needs the guide's denoiser"):
        guidance_terms.Autoguidance(2.0, Interval(), True).reference()


@dataclass(frozen=True)
class HalfInput(Term):
    """A method added in a test: R = D at half the input (any reference term composes the same way)."""

    FLAGS: ClassVar[dict] = dict(half_scale=1.0)
    denoise: object = None

    def reference(self):
        return Reference("half", self.scale, self.interval, denoise=self.denoise) if self.on else None


def test_a_new_method_is_one_term_and_composes_by_the_same_formula():
    main = _denoiser()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 4
    y = torch.tensor([1, 2])
    half = HalfInput(3.0, Interval(1.0, 5.0), denoise=lambda x, sigma, **kw: main(x / 2, sigma, **kw))
    cfg = ClassifierFree(2.5, Interval(), 7)
    guided = Guidance.of(guidance_terms.checked((half, cfg))).bind(main)
    for sigma in (3.0, 8.0):  # inside and outside the new term's interval
        d, d_null, d_half = main(x, sigma, y=y), main(x, sigma, y=torch.full_like(y, 7)), main(x / 2, sigma, y=y)
        expected = d + 1.5 * (d - d_null) + (2.0 * (d - d_half) if sigma <= 5 else 0)
        torch.testing.assert_close(guided(x, sigma, y=y), expected, rtol=1e-12, atol=1e-12)
    assert [t.reference().name for t in Guidance.of((half, cfg)).terms] == ["cfg", "half"]  # TERMS first


def test_guidance_built_from_values_equals_guidance_built_from_flag_terms():
    main = _denoiser()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 3])
    from_values = Guidance(cfg_scale=3.0, null_label=7, cfg_interval=Interval(0.5, 4.0)).bind(main)
    from_terms = Guidance.of((ClassifierFree(3.0, Interval(0.5, 4.0), 7),)).bind(main)
    for sigma in (0.3, 2.0, 9.0):
        assert torch.equal(from_values(x, sigma, y=y), from_terms(x, sigma, y=y))


@pytest.mark.parametrize("script, flag, value", [
    ("super_res_sample.py", "--cfg_scale", 2), ("super_res_sample.py", "--preset", "edm2-img64-s-fid"),
    ("super_res_sample.py", "--control", "flip=1"), ("cascade_sample.py", "--preset", "edm2-img64-s-fid")])
def test_a_script_does_not_offer_a_flag_it_cannot_use(script, flag, value, tmp_path):
    code, stderr = run_main(script, [flag, value, "--log_dir", tmp_path])
    assert code == 2 and f"unrecognized arguments: {flag} {value}" in stderr and "\n" not in stderr


def test_scripts_offer_the_flag_groups_they_use():
    upsampler = sampling.upsampler_sampling_defaults()
    base = sampling.sampling_defaults()
    assert set(upsampler) < set(base) and "cfg_scale" in base and "cfg_scale" not in upsampler
    assert "guide_scale" in upsampler and "preset" not in base
    assert set(sampling.preset_flag_defaults()) == {"preset", "model_dir"}
