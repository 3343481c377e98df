"""Sampling networks that work in a latent space (EDM2's img512 networks: 4-channel latents of Stability AI's VAE).

Such a network's pickle records its encoder beside the network (the `encoder` entry). It is rebuilt here from the
recorded arguments only (encoders.encoder_from_record: no recorded code runs) and decodes the sampled latents to
uint8 pixels, batch by batch, so that a latent run writes the same kind of npz as every other run. The record
names the VAE (`vae_name`, a Hugging Face hub name) but never holds its weights: they come from that name (read
from the cache, downloaded once) or from --vae (a directory written by AutoencoderKL.save_pretrained, or another
hub name).

A guide (autoguidance) must work in the same space as the model: the same latent channels and size and the same
encoder constants and VAE. A classifier sees pixels, so it cannot guide a latent model.
"""

from __future__ import annotations

import argparse
from typing import Callable, NamedTuple

import numpy as np
import torch

from guided_diffusion.networks.encoders import Encoder, StabilityVAEEncoder, StandardRGBEncoder, encoder_from_record
from guided_diffusion.training.latent_training import network_channels
from guided_diffusion.loading.nvlabs_pickle import Record, brief

PIXEL_CHANNELS = 3
STABILITY_CHANNELS = 4  # EDM2's img512 networks, with the VAE's default constants when no record says otherwise


class LatentSpace(NamedTuple):
    """What a guide must share with the model it guides: latent channels and size, the VAE and its constants."""

    channels: int
    size: int
    vae_name: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.channels}-channel {self.size}x{self.size} latents of the VAE {self.vae_name}"


def encoder_for(record: Record | None, channels: int, where: str) -> Encoder | None:
    """The encoder that decodes a network's samples: the one its pickle records (None for a network on pixels in
    [-1, 1], which are converted as every other model's). A network without a record (a converted one) on 4
    channels is one of EDM2's img512 networks: Stability's VAE with EDM2's constants. `where` names the network in
    errors (e.g. "--model_path net.pkl")."""
    if record is None:
        if channels == PIXEL_CHANNELS:
            return None
        if channels == STABILITY_CHANNELS:
            return StabilityVAEEncoder()
        raise ValueError(f"{where} works on {channels}-channel images and records no encoder: expected "
                         f"{PIXEL_CHANNELS} channels (pixels) or {STABILITY_CHANNELS} (latents of Stability's VAE)")
    try:
        encoder = encoder_from_record(record.class_name, record.state)
    except (ValueError, TypeError) as e:
        message = _first_line(e)
        if not message.startswith("encoder record"):
            message = f"encoder record {record.class_name}: {message}"
        raise ValueError(f"{where}: its {message}") from None
    if isinstance(encoder, StandardRGBEncoder):
        if channels != PIXEL_CHANNELS:
            raise ValueError(f"{where} records a StandardRGBEncoder (pixels) but works on {channels} channels")
        return None
    if encoder.scale.ndim == 1 and encoder.scale.size != channels:
        raise ValueError(f"{where} works on {channels}-channel latents but its encoder record scales "
                         f"{encoder.scale.size} channels ({brief(encoder.scale.tolist())})")
    return encoder


def trained_encoder(saved: dict | None, where: str) -> tuple[Encoder, int, int] | None:
    """For a checkpoint trained here on latents (its args.json, `saved`, records --encoder stability_vae): the
    encoder its "encoder_kwargs" record (VAE not loaded), the latent channels and the latent size the network
    works on; None for a network on pixels. A record that does not fit the network is a one-line ValueError
    naming `where` (e.g. "--model_path run/ema.pt")."""
    if not saved or not saved.get("encoder"):
        return None
    channels, size = network_channels(argparse.Namespace(encoder=saved["encoder"])), saved.get("image_size")
    record = saved.get("encoder_kwargs")
    if not isinstance(record, dict) or not isinstance(record.get("class_name"), str) or not isinstance(size, int):
        raise ValueError(f"{where}: its args.json records --encoder {saved['encoder']} but no usable "
                         "\"encoder_kwargs\" (an object with a class_name) and \"image_size\"")
    encoder = encoder_for(Record(record["class_name"], record), channels, where)
    return None if encoder is None else (encoder, channels, size)


def latent_space(encoder: Encoder, channels: int, size: int) -> LatentSpace:
    """The latent space of a network of `channels` x `size` x `size` samples decoded by `encoder`."""
    def numbers(value) -> tuple[float, ...]:
        return tuple(float(v) for v in np.asarray(value, np.float32).ravel())

    return LatentSpace(channels, size, getattr(encoder, "vae_name", type(encoder).__name__),
                       numbers(getattr(encoder, "scale", 1)), numbers(getattr(encoder, "bias", 0)))


def load_vae(encoder: Encoder, vae: str, where: str) -> Encoder:
    """Load the encoder's VAE on the CPU: the one `vae` names (--vae) when given, else the recorded one. Every
    failure (no such directory, not downloadable, diffusers missing) is one line naming --vae or the network."""
    if vae:
        encoder.vae_name = vae
    name = getattr(encoder, "vae_name", "")
    try:
        encoder.init("cpu")
    except (FileNotFoundError, ValueError, ImportError) as e:
        message, prefix = _first_line(e), f"vae_name {name}: "
        reason = message[len(prefix):] if message.startswith(prefix) else message
        source = f"--vae {name}" if vae else f"the VAE {name} that {where} decodes with (another one: --vae)"
        raise type(e)(f"{source}: {reason}") from None
    return encoder


def pixel_converter(encoder: Encoder, device: torch.device | str) -> Callable[[torch.Tensor], np.ndarray]:
    """latents -> uint8 NHWC numpy images through the encoder on `device` (decoded `encoder.batch_size` images at
    a time by the encoder itself)."""
    encoder.init(device)

    def to_pixels(latents: torch.Tensor) -> np.ndarray:
        return encoder.decode(latents.float()).permute(0, 2, 3, 1).contiguous().cpu().numpy()

    return to_pixels


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
