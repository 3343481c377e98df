"""The discrete Gaussian diffusion process of DDPM / improved DDPM / ADM: noising, the learned reverse process,
DDPM and DDIM sampling, classifier-guidance hooks, training losses and the variational bound (bits/dim).

Equation numbers refer to Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (iDDPM), Song et al. 2021 (DDIM) and
Dhariwal & Nichol 2021 (ADM).
"""

from __future__ import annotations

import enum
import math
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat
from guided_diffusion.sampling.rng import SampleRNG, randn_like

CondFn = Callable[..., torch.Tensor]  # (x_t, timesteps, **model_kwargs) -> s grad_{x_t} log p(y | x_t, t)


def checked_gradient(cond_fn: CondFn, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict) -> torch.Tensor:
    """cond_fn(x_t, t, **model_kwargs), which must be a tensor shaped like x_t."""
    gradient = cond_fn(x_t, t, **model_kwargs)
    if not isinstance(gradient, torch.Tensor) or gradient.shape != x_t.shape:
        got = list(gradient.shape) if isinstance(gradient, torch.Tensor) else type(gradient).__name__
        raise ValueError(f"cond_fn must return a gradient shaped like x {list(x_t.shape)}, got {got}")
    return gradient

SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas of a named schedule: "linear" (DDPM, rescaled so any T matches T=1000) or "cosine" (iDDPM eq. 17)."""
    if num_diffusion_timesteps < 1:
        raise ValueError(f"diffusion_steps must be >= 1, got {num_diffusion_timesteps}")
    if schedule_name == "linear":
        if num_diffusion_timesteps <= 20:
            raise ValueError(
                f"noise_schedule linear needs diffusion_steps > 20 (got {num_diffusion_timesteps}): its last beta, "
                "20 / steps, must stay below 1; use the cosine schedule for fewer steps"
            )
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown noise_schedule {schedule_name!r}: choose one of {', '.join(SCHEDULES)}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretize a continuous alpha_bar(t), t in [0, 1], into betas (each capped at max_beta)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


class ModelMeanType(enum.Enum):
    """What the network predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """How the reverse-process variance is obtained."""

    LEARNED = enum.auto()  # the network outputs log-variances
    FIXED_SMALL = enum.auto()  # the posterior variance beta~_t
    FIXED_LARGE = enum.auto()  # beta_t
    LEARNED_RANGE = enum.auto()  # the network interpolates between the two in log space (iDDPM eq. 15)


class LossType(enum.Enum):
    """The training objective."""

    MSE = enum.auto()  # the simple loss (plus the VB term for learned variances)
    RESCALED_MSE = enum.auto()  # the same with the VB term scaled as with the full bound
    KL = enum.auto()  # the variational bound
    RESCALED_KL = enum.auto()  # the bound, scaled by the number of steps

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """Values arr[t] for a batch of indices, as float32 broadcastable to broadcast_shape."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.reshape(*res.shape, *([1] * (len(broadcast_shape) - res.ndim))).expand(broadcast_shape)


class GaussianDiffusion:
    """A discrete diffusion process with T steps given by betas, and the reverse process of a network.

    The network is called as model(x_t, t, **model_kwargs). `timestep_map` translates step indices into the
    timesteps the network was trained on (identity here; respaced processes override it), and with
    rescale_timesteps those are scaled to the range 0..1000 as in the original.
    """

    def __init__(
        self,
        *,
        betas,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas < 1).all()):
            raise ValueError("betas must be a 1-d array of values in (0, 1)")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        if not hasattr(self, "timestep_map"):
            self.timestep_map = list(range(self.num_timesteps))
            self.original_num_steps = self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0: its log is clipped to the value at t = 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if self.num_timesteps > 1 else self.posterior_variance.clip(min=1e-20)
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----- the network's view of time ---------------------------------------------------------------------

    def _model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps handed to the network (and to cond_fn) for step indices t."""
        t = torch.as_tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t]
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.original_num_steps)
        return t

    # ----- the forward process ----------------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (DDPM eq. 4)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {list(noise.shape)} differs from x_start shape {list(x_start.shape)}")
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----- the reverse process ----------------------------------------------------------------------------

    def _fixed_variance(self, t: torch.Tensor, shape):
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            # beta_t, with the first entry replaced by the posterior variance for a better decoder likelihood.
            variance = np.append(self.posterior_variance[1], self.betas[1:])
            return _extract_into_tensor(variance, t, shape), _extract_into_tensor(np.log(variance), t, shape)
        return (
            _extract_into_tensor(self.posterior_variance, t, shape),
            _extract_into_tensor(self.posterior_log_variance_clipped, t, shape),
        )

    def p_mean_variance(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable | None = None,
        model_kwargs: dict | None = None,
    ) -> dict:
        """Apply the network to get p(x_{t-1} | x_t): "mean", "variance", "log_variance" and "pred_xstart".

        clip_denoised clips the predicted x_0 to [-1, 1]; denoised_fn, if given, is applied to it first.
        """
        model_kwargs = model_kwargs or {}
        channels = x.shape[1]
        model_output = model(x, self._model_timesteps(t), **model_kwargs)

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"a model with learned variances must output {2 * channels} channels, got {model_output.shape[1]}"
                    " (is learn_sigma set for a model trained without it?)"
                )
            model_output, var_values = torch.split(model_output, channels, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = var_values
            else:
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
                frac = (var_values + 1) / 2  # the network's output in [-1, 1] mapped to [0, 1]
                model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            model_variance, model_log_variance = self._fixed_variance(t, x.shape)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, model_output))
            model_mean = model_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart}

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    # ----- classifier guidance (ADM section 4) ------------------------------------------------------------

    def _guidance(self, cond_fn: CondFn, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None) -> torch.Tensor:
        return checked_gradient(cond_fn, x, self._model_timesteps(t), model_kwargs or {})

    def condition_mean(self, cond_fn: CondFn, p_mean_var: dict, x: torch.Tensor, t: torch.Tensor,
                       model_kwargs: dict | None = None) -> torch.Tensor:
        """The mean shifted by variance * grad log p(y | x_t) (ADM algorithm 1)."""
        gradient = self._guidance(cond_fn, x, t, model_kwargs)
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn: CondFn, p_mean_var: dict, x: torch.Tensor, t: torch.Tensor,
                        model_kwargs: dict | None = None) -> dict:
        """p_mean_var with eps replaced by eps - sqrt(1 - alpha_bar) * grad log p(y | x_t) (ADM algorithm 2)."""
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * self._guidance(cond_fn, x, t, model_kwargs)
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ----- DDPM sampling ----------------------------------------------------------------------------------

    def p_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                 denoised_fn: Callable | None = None, cond_fn: CondFn | None = None,
                 model_kwargs: dict | None = None, rng: SampleRNG | None = None) -> dict:
        """One ancestral step x_t -> x_{t-1}: {"sample", "pred_xstart"}."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = randn_like(x, rng)
        nonzero_mask = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))  # no noise at the last step
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise: torch.Tensor | None = None, clip_denoised: bool = True,
                      denoised_fn: Callable | None = None, cond_fn: CondFn | None = None,
                      model_kwargs: dict | None = None, device=None, progress: bool = False,
                      rng: SampleRNG | None = None) -> torch.Tensor:
        """Ancestral sampling from x_T = noise (or fresh noise) down to x_0."""
        final = None
        for final in self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                    model_kwargs, device, progress, rng):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise: torch.Tensor | None = None, clip_denoised: bool = True,
                                  denoised_fn: Callable | None = None, cond_fn: CondFn | None = None,
                                  model_kwargs: dict | None = None, device=None, progress: bool = False,
                                  rng: SampleRNG | None = None) -> Iterator[dict]:
        """Yield p_sample's output at every step, from t = T-1 down to 0."""
        img = self._initial_noise(model, shape, noise, device, rng)
        for t in self._reverse_steps(img, progress):
            with torch.no_grad():
                out = self.p_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, rng)
            yield out
            img = out["sample"]

    @staticmethod
    def _initial_noise(model, shape, noise, device, rng: SampleRNG | None) -> torch.Tensor:
        """x_T: the given noise, or noise drawn on `device` (default: the model's device)."""
        if device is None:
            params = getattr(model, "parameters", None)
            device = next(params()).device if params is not None else "cpu"
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {list(noise.shape)} differs from the requested shape {list(shape)}")
            return noise.to(device)
        if rng is not None:
            return rng.randn(shape, device=device)
        return torch.randn(*shape, device=device)

    def _reverse_steps(self, img: torch.Tensor, progress: bool) -> Iterator[torch.Tensor]:
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            indices = tqdm(indices, desc="sampling", leave=False)
        for i in indices:
            yield torch.full((img.shape[0],), i, device=img.device, dtype=torch.long)

    # ----- DDIM sampling ----------------------------------------------------------------------------------

    def ddim_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                    denoised_fn: Callable | None = None, cond_fn: CondFn | None = None,
                    model_kwargs: dict | None = None, eta: float = 0.0, rng: SampleRNG | None = None) -> dict:
        """One DDIM step x_t -> x_{t-1} (DDIM eq. 12); eta = 1 gives DDPM's variance, 0 a deterministic step."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        # Recompute eps from the (possibly clipped) x_0 so the step is consistent with it.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        noise = randn_like(x, rng)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero_mask = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        return {"sample": mean_pred + nonzero_mask * sigma * noise, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                            denoised_fn: Callable | None = None, model_kwargs: dict | None = None,
                            eta: float = 0.0) -> dict:
        """One deterministic DDIM step x_t -> x_{t+1} (encoding an image into noise)."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample is deterministic: eta must be 0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise: torch.Tensor | None = None, clip_denoised: bool = True,
                         denoised_fn: Callable | None = None, cond_fn: CondFn | None = None,
                         model_kwargs: dict | None = None, device=None, progress: bool = False,
                         eta: float = 0.0, rng: SampleRNG | None = None) -> torch.Tensor:
        """DDIM sampling from x_T = noise (or fresh noise) down to x_0."""
        final = None
        for final in self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                       model_kwargs, device, progress, eta, rng):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise: torch.Tensor | None = None,
                                     clip_denoised: bool = True, denoised_fn: Callable | None = None,
                                     cond_fn: CondFn | None = None, model_kwargs: dict | None = None, device=None,
                                     progress: bool = False, eta: float = 0.0,
                                     rng: SampleRNG | None = None) -> Iterator[dict]:
        """Yield ddim_sample's output at every step, from t = T-1 down to 0."""
        img = self._initial_noise(model, shape, noise, device, rng)
        for t in self._reverse_steps(img, progress):
            with torch.no_grad():
                out = self.ddim_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta, rng)
            yield out
            img = out["sample"]

    # ----- training and likelihood ------------------------------------------------------------------------

    def _vb_terms_bpd(self, model, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      clip_denoised: bool = True, model_kwargs: dict | None = None) -> dict:
        """One term of the variational bound in bits/dim: the KL at t > 0, the decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None) -> dict:
        """Per-sample loss terms at timesteps t: "loss", plus "mse" and "vb" where they apply."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = model(x_t, self._model_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            channels = x_t.shape[1]
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"a model with learned variances must output {2 * channels} channels, "
                                 f"got {model_output.shape[1]}")
            model_output, var_values = torch.split(model_output, channels, dim=1)
            # Learn the variance through the bound alone: the mean enters it detached (iDDPM section 3.1).
            frozen = torch.cat([model_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *_, r=frozen: r, x_start, x_t, t, clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # Divide by 1000 for equivalence with the original iDDPM settings.
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = noise
        if model_output.shape != target.shape:
            raise ValueError(f"model output {list(model_output.shape)} does not match the target {list(target.shape)}")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim: the prior term of the bound (no network involved)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start: torch.Tensor, clip_denoised: bool = True,
                      model_kwargs: dict | None = None, progress: bool = False) -> dict:
        """The whole variational bound in bits/dim, with its per-step terms and x_0 / eps errors."""
        vb, xstart_mse, mse = [], [], []
        steps = range(self.num_timesteps - 1, -1, -1)
        for step in tqdm(steps, desc="bpd", leave=False) if progress else steps:
            t = torch.full((x_start.shape[0],), step, device=x_start.device, dtype=torch.long)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised,
                                         model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        # Columns in the order computed, as the original: column 0 is step T-1, the last column step 0.
        vb, xstart_mse, mse = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
        prior_bpd = self._prior_bpd(x_start)
        return {"total_bpd": vb.sum(dim=1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb,
                "xstart_mse": xstart_mse, "mse": mse}
