"""Training on latents, as NVlabs' EDM2 does for ImageNet 512x512: the dataset stores raw latents (the VAE's
posterior mean and standard deviation, written by datasets/encode_latents.py), and every batch is turned into the
network's input by `StabilityVAEEncoder.encode_latents`, a fresh sample of the posterior each time.

The posterior noise of a batch comes from its own generator, seeded from (seed, rank, the batch's position in the
data stream), so it does not depend on anything else the run draws and a run resumed at batch N (the position is
restored from the checkpoint) draws exactly what an uninterrupted run would. Training never loads the VAE: only its
name is kept, with the encoder's class and arguments, in args.json ("encoder_kwargs"), so that sampling can rebuild
the encoder (`encoder_from_args`) and decode.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from .encoders import DEFAULT_VAE, Encoder, StabilityVAEEncoder, StandardRGBEncoder, encoder_from_record
from .latent_datasets import ArchiveDataset, is_archive_dataset, read_archive_index

ENCODERS = ("", "stability_vae")  # "": the network sees pixels in [-1, 1]


def latent_defaults() -> dict:
    """--encoder "" (pixels) or stability_vae (latents from datasets/encode_latents.py); --vae: the VAE the
    latents were encoded with ("" = the one dataset.json names, else stabilityai/sd-vae-ft-mse), kept for
    decoding."""
    return dict(encoder="", vae="")


def resolve_latent_flags(args: argparse.Namespace, explicit: set[str] = frozenset()) -> None:
    """Check --encoder against the data and the network, fill in --vae, and set args.encoder_kwargs (the
    encoder's class and arguments, written to args.json); done before args.json is written. A mismatch (latents
    without --encoder, images with it, an ADM network) is a one-line ValueError."""
    encoder = getattr(args, "encoder", "")
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder {encoder!r}: choose stability_vae (latents), or leave it out (pixels)")
    index = read_archive_index(args.data_dir) if is_archive_dataset(args.data_dir) else None
    kind = index.kind if index is not None else "pixel"
    if encoder and kind != "latent":
        raise ValueError(f"--encoder {encoder} trains on latents, but {args.data_dir} holds images: encode them "
                         "first (python datasets/encode_latents.py SOURCE DEST), or leave --encoder out")
    if not encoder and kind == "latent":
        raise ValueError(f"{args.data_dir} holds latents (.npy): add --encoder stability_vae")
    if not encoder:
        if "vae" in explicit and args.vae:
            raise ValueError("--vae applies to latent training: add --encoder stability_vae")
        return
    if getattr(args, "arch", "adm") != "edm2":
        raise ValueError(f"--encoder {encoder} trains EDM2's network on latents: add --arch edm2")
    shape = ArchiveDataset(index, args.image_size).first_shape()  # a wrong --image_size fails here, naming a file
    if shape[0] != 2 * network_channels(args):
        raise ValueError(f"{args.data_dir}: latents of {shape[0]} channels ({index.files[0]}), but --encoder "
                         f"{encoder} expects {2 * network_channels(args)} (posterior mean and standard deviation)")
    if not args.vae:  # the VAE the dataset names (encode_latents.py records it), else EDM2's
        args.vae = index.vae or DEFAULT_VAE
    if os.path.isdir(os.path.expanduser(args.vae)):  # a local VAE: recorded by its absolute path
        args.vae = os.path.abspath(os.path.expanduser(args.vae))
    args.encoder_kwargs = encoder_record(StabilityVAEEncoder(vae_name=args.vae))


def encoder_record(encoder: Encoder) -> dict:
    """The class and constructor arguments of an encoder, as plain JSON data (never weights)."""
    if isinstance(encoder, StabilityVAEEncoder):
        return {"class_name": "StabilityVAEEncoder", "vae_name": encoder.vae_name,
                "scale": [float(v) for v in np.atleast_1d(encoder.scale)],
                "bias": [float(v) for v in np.atleast_1d(encoder.bias)], "batch_size": encoder.batch_size}
    return {"class_name": "StandardRGBEncoder"}


def encoder_from_args(saved: dict) -> Encoder:
    """The encoder a training run's args.json records ("encoder_kwargs"); StandardRGBEncoder (pixels) when it
    records none. The scale and bias are restored exactly (float32)."""

    record = saved.get("encoder_kwargs")
    if not record:
        return StandardRGBEncoder()
    if not isinstance(record, dict) or not isinstance(record.get("class_name"), str):
        raise ValueError(f"args.json: \"encoder_kwargs\" must be an object with a class_name, got {record!r}")
    return encoder_from_record(record["class_name"], record)


def network_channels(flags) -> int:
    """The channels of the network's input and output: the VAE's 4 latent channels with --encoder
    stability_vae, else 3 (RGB)."""
    return 4 if getattr(flags, "encoder", "") == "stability_vae" else 3


class EncodedBatches:
    """Wraps a batch stream of raw latents (image_datasets.ImageBatches) so that it yields final latents:
    `encoder.encode_latents` on `device`, with noise from a generator seeded by (seed, rank, batch position)."""

    def __init__(self, batches, encoder: Encoder, device: torch.device | str, seed: int, rank: int = 0):
        self.batches, self.encoder, self.device = batches, encoder, torch.device(device)
        self.seed, self.rank = int(seed), int(rank)
        self.classes = getattr(batches, "classes", None)

    @property
    def position(self) -> int:
        return self.batches.position

    def __iter__(self):
        return self

    def generator(self, position: int) -> torch.Generator:
        """The posterior noise of the batch at `position` of the stream."""
        state = np.random.SeedSequence([self.seed, self.rank, position]).generate_state(2, np.uint64)
        return torch.Generator(device=self.device).manual_seed(int(state[0] >> np.uint64(1)))

    def __next__(self):
        position = self.batches.position
        raw, cond = next(self.batches)
        final = self.encoder.encode_latents(raw.to(self.device), generator=self.generator(position))
        return final, cond


def wrap_data(args, batches, device: torch.device | str, rank: int = 0):
    """The data stream the network trains on: `batches` as they are for pixels, encoded per batch for latents."""
    if getattr(args, "encoder", "") != "stability_vae":
        return batches
    return EncodedBatches(batches, encoder_from_args(vars(args)), device, args.seed, rank)
