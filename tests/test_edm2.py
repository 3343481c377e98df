"""EDM2's network (guided_diffusion/networks/edm2.py) against NVlabs' own: the 13 released presets' state dicts (names,
shapes, parameter counts) and a small network's outputs, learned uncertainty, training loss and forced weight
normalization (tests/fixtures/reference/edm2, see its README)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm2
from guided_diffusion.processes.objectives import EDMLoss

from reference import REFERENCE, formula_weights

EDM2 = os.path.join(REFERENCE, "edm2")
PRESETS = sorted(f[:-5] for f in os.listdir(os.path.join(EDM2, "manifests")))


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("preset", PRESETS)
def test_released_presets_have_nvlabs_state_dicts(preset):
    manifest = _json(os.path.join(EDM2, "manifests", preset + ".json"))
    with torch.device("meta"):
        net = edm2.Precond(**manifest["init_kwargs"])
    state = {name: list(t.shape) for name, t in net.state_dict().items()}
    assert state == manifest["state_dict"]
    assert list(state) == list(manifest["state_dict"])  # the same order too
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


def test_thirteen_presets_from_124m_to_1_5g_parameters():
    sizes = {p: _json(os.path.join(EDM2, "manifests", p + ".json"))["num_params"] for p in PRESETS}
    assert len(sizes) == 13
    assert min(sizes.values()) > 124e6 and max(sizes.values()) < 1.53e9


def _golden_weights(net: edm2.Precond) -> edm2.Precond:
    """The reference's weights: the formula for every tensor, then out_gain 1 and emb_gain 0.5."""
    formula_weights(net)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("out_gain"):
                param.fill_(1.0)
            elif name.endswith("emb_gain"):
                param.fill_(0.5)
    return net


@pytest.fixture(scope="module")
def small():
    meta = _json(os.path.join(EDM2, "edm2_small_precond.json"))
    with np.load(os.path.join(EDM2, "edm2_small_precond.npz")) as data:
        golden = {k: torch.from_numpy(data[k]) for k in data.files}
    return _golden_weights(edm2.Precond(**meta["init_kwargs"])), golden, meta["init_kwargs"]["label_dim"]


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= rel * scale, (float((got - want).abs().max()), scale)


def test_denoiser_and_uncertainty_match_nvlabs(small):
    net, golden, label_dim = small
    net.eval()
    onehot = torch.nn.functional.one_hot(golden["labels"].long(), label_dim).float()
    with torch.no_grad():
        denoised, logvar = net(golden["x"], golden["sigma"], onehot, return_logvar=True)
    assert golden["sigma"].min() <= 0.002 and golden["sigma"].max() >= 80  # the whole noise range
    _close(denoised, golden["D"])
    _close(logvar, golden["logvar"])


def test_training_loss_and_forced_weight_normalization_match_nvlabs(small):
    net, golden, label_dim = small
    net = _golden_weights(net)  # fresh formula weights: the loss forward rewrites them
    net.train()
    objective = EDMLoss(0.5, float(golden["P_mean"]), float(golden["P_std"]), learned_uncertainty=True)
    sigma = (golden["rnd_normal"].flatten() * objective.noise.p_std + objective.noise.p_mean).exp()
    loss, _ = objective.elementwise(net, golden["images"], sigma, golden["unit_noise"], golden["labels"].long())
    _close(loss.detach(), golden["loss"])
    state = net.state_dict()
    after = {k.split("/", 1)[1]: v for k, v in golden.items() if k.startswith("weight_after_train_forward/")}
    assert len(after) >= 5
    for name, want in after.items():
        _close(state[name], want, rel=1e-6)
        norms = state[name].flatten(1).norm(dim=1) / np.sqrt(state[name][0].numel())
        # unit RMS rows, up to the eps of 1e-4 next to the formula weights' small RMS
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=5e-3, rtol=0)


# ----- sampling EDM2 networks with this project's samplers and guidance ------------------------------------------

TINY = dict(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], channels_per_head=16, logvar_channels=8, use_fp16=False)


def _tiny(label_dim: int, seed: int) -> edm2.Precond:
    torch.manual_seed(seed)
    net = edm2.Precond(label_dim=label_dim, **TINY)
    with torch.no_grad():
        net.unet.out_gain.fill_(1.0)
        for name, p in net.named_parameters():
            if name.endswith("emb_gain"):
                p.fill_(0.5)
    return net.eval()


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "edm_stochastic"])
def test_every_sigma_sampler_and_guidance_runs_an_edm2_network(sampler):
    from guided_diffusion.processes.denoiser import PrecondDenoiser, classifier_timestep
    from guided_diffusion.guidance.compose import Guidance, Interval, classifier_cond_fn
    from guided_diffusion.sampling.rng import SampleRNG
    from guided_diffusion.sampling.dispatch import SamplerOptions, run_sigma_sampler
    from tiny import TinyClassifier, make_diffusion

    options = SamplerOptions(sampler=sampler, steps=5, s_churn=5.0 if sampler == "edm_stochastic" else 0.0)
    y = torch.tensor([0, 3, 1])
    main = PrecondDenoiser(_tiny(4, 0), timestep=classifier_timestep(make_diffusion(100)))
    guide = PrecondDenoiser(_tiny(0, 1))  # an unconditional guide, as EDM2's CFG pairs

    def sample(guidance=None, seeds=(0, 1, 2), labels=y):
        with torch.no_grad():
            return run_sigma_sampler(main, (len(seeds), 3, 8, 8), {"y": labels}, SampleRNG(list(seeds)), options,
                                     guidance, device=torch.device("cpu"))

    plain = sample()
    assert plain.shape == (3, 3, 8, 8) and torch.isfinite(plain).all()
    torch.testing.assert_close(sample(seeds=(1,), labels=y[1:2]), plain[1:2], rtol=1e-5, atol=1e-5)  # own seed
    torch.manual_seed(0)
    classifier = TinyClassifier()
    for guidance in (Guidance(guide=guide, guide_scale=2.0), Guidance(guide=guide, guide_scale=2.0,
                                                                      guide_interval=Interval(0.3, 5.0)),
                     Guidance(cond_fn=classifier_cond_fn(classifier, 5.0))):
        assert (sample(guidance) - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="use --sampler euler, heun, edm_stochastic, dpmpp_2m"):
        run_sigma_sampler(main, (1, 3, 8, 8), {}, SampleRNG([0]), SamplerOptions(sampler="ddim"))


def test_an_adm_classifier_raises_its_class_on_an_edm2_network():
    """The classifier sees x / sqrt(sigma^2 + 1) and the ADM timestep nearest to sigma; guiding by it raises
    the probability it gives the requested class to the final samples."""
    from guided_diffusion.processes.denoiser import PrecondDenoiser, classifier_timestep
    from guided_diffusion.guidance.compose import Guidance, classifier_cond_fn
    from guided_diffusion.sampling.rng import SampleRNG
    from guided_diffusion.sampling.dispatch import SamplerOptions, run_sigma_sampler
    from tiny import make_diffusion

    class MeanColour(torch.nn.Module):  # logits from the mean colour: a classifier guidance can move
        def forward(self, x, t):
            return 10 * x.mean(dim=(2, 3)) @ torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1]])

    classifier = MeanColour()
    main = PrecondDenoiser(_tiny(4, 0), timestep=classifier_timestep(make_diffusion(1000, "linear")))
    y = torch.arange(16) % 4
    probability = {}
    for scale in (0.0, 8.0):
        guidance = Guidance(cond_fn=classifier_cond_fn(classifier, scale)) if scale else None
        with torch.no_grad():
            x = run_sigma_sampler(main, (16, 3, 8, 8), {"y": y}, SampleRNG(range(16)),
                                  SamplerOptions(sampler="euler", steps=8), guidance, device=torch.device("cpu"))
            probs = classifier(x, torch.zeros(16, dtype=torch.long)).softmax(dim=1)
        probability[scale] = float(probs[range(16), y].mean())
    assert probability[8.0] > probability[0.0] + 0.1, probability


def test_the_unet_runs_in_float16_as_precond_does_on_cuda():
    """Precond runs the U-Net in float16 on CUDA (use_fp16); the same float16 path on the CPU stays within
    float16 rounding of float32 and keeps the weights' float32 normalization."""
    net = _tiny(4, 0)
    x, c_noise, labels = torch.randn(2, 3, 8, 8), torch.tensor([0.1, -0.5]), torch.eye(4)[[0, 2]]
    with torch.no_grad():
        full, half = net.unet(x, c_noise, labels), net.unet(x.half(), c_noise.half(), labels.half())
    assert half.dtype == torch.float16
    assert float((full - half.float()).abs().max()) <= 2e-3 * float(full.abs().max())
