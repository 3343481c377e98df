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

import os

import numpy as np
import torch

from guided_diffusion.networks.encoders import DEFAULT_VAE, Encoder, StabilityVAEEncoder, StandardRGBEncoder, encoder_from_record
from guided_diffusion.training.latent_datasets import ArchiveDataset, is_archive_dataset, read_archive_index

ENCODERS = ("", "stability_vae")  # "": the network sees pixels in [-1, 1]


def latent_defaults() -> dict:
    """--encoder "" (pixels) or stability_vae (latents from datasets/encode_latents.py); --vae: the VAE the
    latents were encoded with ("" = the one dataset.json names, else stabilityai/sd-vae-ft-mse), kept for
    decoding."""
    return dict(encoder="", vae="")


def local_vae_path(vae: str) -> str:
    """A --vae that names a local folder, as its absolute path (so args.json finds it from any working directory);
    a hub name as it is."""
    return os.path.abspath(os.path.expanduser(vae)) if vae and os.path.isdir(os.path.expanduser(vae)) else vae


def spelled_out_vae(given: dict) -> dict:
    """The command line's --vae spelled out ({} when it needs no change): a local folder by its absolute path."""
    vae = given.get("vae", "")
    full = local_vae_path(vae)
    return {"vae": full} if full != vae else {}


def latent_flag_layer(flags, explicit: set[str] = frozenset()) -> dict:
    """The flags latent data implies, as a layer for settings.resolve (`flags` is not changed): --vae when it is ""
    (the VAE the dataset names, as encode_latents.py records it, else EDM2's) and encoder_kwargs, the encoder's
    class and arguments for args.json; nothing for pixels. Checks --encoder against the data and the network first:
    a mismatch (latents without --encoder, images with it, an ADM network) is a one-line ValueError. Resolved before
    args.json is written."""
    encoder = getattr(flags, "encoder", "")
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder {encoder!r}: choose stability_vae (latents), or leave it out (pixels)")
    index = read_archive_index(flags.data_dir) if is_archive_dataset(flags.data_dir) else None
    kind = index.kind if index is not None else "pixel"
    if encoder and kind != "latent":
        raise ValueError(f"--encoder {encoder} trains on latents, but {flags.data_dir} holds images: encode them "
                         "first (python datasets/encode_latents.py SOURCE DEST), or leave --encoder out")
    if not encoder and kind == "latent":
        raise ValueError(f"{flags.data_dir} holds latents (.npy): add --encoder stability_vae")
    if not encoder:
        if "vae" in explicit and flags.vae:
            raise ValueError("--vae applies to latent training: add --encoder stability_vae")
        return {}
    if getattr(flags, "arch", "adm") != "edm2":
        raise ValueError(f"--encoder {encoder} trains EDM2's network on latents: add --arch edm2")
    shape = ArchiveDataset(index, flags.image_size).first_shape()  # a wrong --image_size fails here, naming a file
    if shape[0] != 2 * network_channels(flags):
        raise ValueError(f"{flags.data_dir}: latents of {shape[0]} channels ({index.files[0]}), but --encoder "
                         f"{encoder} expects {2 * network_channels(flags)} (posterior mean and standard deviation)")
    vae = local_vae_path(flags.vae or index.vae or DEFAULT_VAE)
    layer = {} if vae == flags.vae else {"vae": vae}
    return {**layer, "encoder_kwargs": encoder_record(StabilityVAEEncoder(vae_name=vae))}


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
