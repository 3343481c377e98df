"""One road from a checkpoint to a network ready to sample.

load_model takes what a user gives (a .pt state dict with or without its args.json, a converted .safetensors,
an NVlabs pickle, a file a --preset resolved to) and returns a LoadedModel: the denoiser D(x; sigma, **model_kwargs)
(labels y, control records) that the samplers and guidance see, and, for an ADM network, the process whose
timesteps it takes (the original DDPM/DDIM loops run over it). ADM, EDM and EDM2 differ here, not in the callers.
An NVlabs pickle is read once per process (its flags, latent space and network come from one read).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch

from guided_diffusion import dist_util

from guided_diffusion.networks import sigma_space

from guided_diffusion.sampling import latents

from guided_diffusion.loading import nvlabs
from guided_diffusion.loading.checkpoint import load_weights
from guided_diffusion.loading.checkpoint_flags import checkpoint_args, require_file
from guided_diffusion.processes.denoiser import Denoiser, PrecondDenoiser, classifier_timestep
from guided_diffusion.networks.encoders import Encoder
from guided_diffusion.gaussian_diffusion import GaussianDiffusion
from guided_diffusion.guidance.compose import Guidance
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sampler, run_sigma_sampler, step_count, visited_levels
from guided_diffusion.script_util import args_to_dict, create_gaussian_diffusion


@dataclass
class LoadedModel:
    """A network ready to sample, whatever its family.

    model_fn: what the samplers call: for an ADM network model(x_t, t, **model_kwargs) in float32 (labels dropped
    for an unconditional one), otherwise the PrecondDenoiser D(x; sigma) of a network that is a denoiser itself
    (EDM, EDM2, ADM trained with --objective edm). diffusion: the ADM process whose timesteps the network takes
    (the original ddpm/ddim loops step through it); None for a denoiser at continuous sigma. network: the torch
    module (its weights loaded, eval mode)."""

    network: torch.nn.Module
    model_fn: Callable
    diffusion: GaussianDiffusion | None = None

    @property
    def timesteps(self) -> bool:
        """Whether this is an ADM process with its own timesteps."""
        return self.diffusion is not None

    @functools.cached_property
    def denoiser(self) -> Denoiser | PrecondDenoiser:
        """D(x; sigma, **model_kwargs) (made when first asked: an ADM network predicting x_{t-1} has none, and
        samples with ddpm/ddim only)."""
        return Denoiser(self.diffusion, self.model_fn) if self.timesteps else self.model_fn

    @property
    def sigma_range(self) -> tuple[float, float]:
        """The noise levels the network supports."""
        return float(self.denoiser.sigma_min), float(self.denoiser.sigma_max)

    def visited_levels(self, options: SamplerOptions) -> torch.Tensor:
        """The noise levels a run with these options evaluates the network at (before churn)."""
        return visited_levels(self.diffusion or self.model_fn, options)

    def step_count(self, options: SamplerOptions) -> int:
        """How many steps (callbacks) a run with these options takes."""
        return step_count(self.diffusion or self.model_fn, options)

    def sample(self, shape, model_kwargs: dict, rng: SampleRNG, options: SamplerOptions, guidance: Guidance,
               callback=None, device: torch.device | None = None) -> torch.Tensor:
        """Samples of `shape` (pixels in [-1, 1], or latents) from per-sample random streams, guided."""
        if self.timesteps:
            return run_sampler(self.diffusion, self.model_fn, shape, model_kwargs, rng, options, guidance,
                               callback=callback, device=device)
        return run_sigma_sampler(self.model_fn, shape, model_kwargs, rng, options, guidance, callback=callback,
                                 device=device)


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


def load_model(create: Callable, flags, architecture: dict, path: str, flag: str,
               use_fp16: bool = False) -> LoadedModel:
    """The network at `path` (given as --flag) built by the factory `create` from its flags, with its weights;
    an NVlabs pickle carries its own network. A denoiser at continuous sigma takes its classifier timesteps from
    the ADM process of the flags (--noise_schedule, --diffusion_steps: the classifier's)."""
    adm_keys = [k for k in architecture if k not in sigma_space.EDM_FLAGS]
    pickle = is_nvlabs_pickle(path)
    if pickle or sigma_space.uses_sigma_space(flags):
        if pickle:
            net = _nvlabs_network(path).to(dist_util.dev())
        else:  # trained here with --objective edm or --arch edm2 (on latents: their size, not the decoded one)
            if getattr(flags, "latent_size", 0):
                flags = argparse.Namespace(**{**vars(flags), "image_size": flags.latent_size})
            net = sigma_space.create_sigma_space_network(flags, lambda: create(**args_to_dict(flags, adm_keys))[0])
            load_module_weights(net, path, flag, use_fp16)
        adm = create_gaussian_diffusion(steps=flags.diffusion_steps, noise_schedule=flags.noise_schedule)
        return LoadedModel(net, PrecondDenoiser(net, timestep=classifier_timestep(adm)))
    model, diffusion = create(**args_to_dict(flags, adm_keys))
    load_module_weights(model, path, flag, use_fp16)
    model_fn = model_fn_for(model, flags.class_cond, getattr(flags, "use_bf16", False))
    return LoadedModel(model, model_fn, diffusion)


def load_module_weights(model: torch.nn.Module, path: str, flag: str, use_fp16: bool = False) -> torch.nn.Module:
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
