"""Converters between uint8 pixels and the representation a diffusion model works on (EDM2's two encoders).

Images are NCHW tensors; raw pixels are 3-channel uint8. Encoding goes in two steps: raw pixels -> "raw latents"
(what a latent dataset stores) -> "final latents" (what the network sees); decoding goes from final latents straight
back to uint8 pixels. The split lets the scaling of the final latents change without re-encoding a dataset.

- `StandardRGBEncoder`: raw latents are the pixels themselves, final latents the pixels scaled to [-1, 1].
- `StabilityVAEEncoder`: raw latents are the mean and standard deviation of the posterior of Stability AI's
  `AutoencoderKL` (8 channels for its 4 latent channels), computed on pixels scaled to [0, 1]; final latents are
  a sample of that posterior, scaled per channel from an assumed (raw_mean, raw_std) to (final_mean, final_std).

Names, arguments, attributes (`vae_name`, `scale`, `bias`, `batch_size`) and arithmetic follow NVlabs' EDM2
(`training/encoders.py`), so that latents, samples and the encoder records of EDM2's snapshots carry over one to
one (`encoder_from_record`). The VAE comes from diffusers, an optional extra (`pip install -e ".[latent]"`),
imported only when a VAE is loaded; hub weights are downloaded once into this project's cache.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
INSTALL_HINT = 'pip install -e ".[latent]"'


class VAEUnavailableError(FileNotFoundError):
    """The VAE's weights are neither in the cache nor downloadable (e.g. offline on first use)."""


def default_cache_dir() -> Path:
    """``$GUIDED_DIFFUSION_CACHE``, else ``$XDG_CACHE_HOME/guided_diffusion``, else ``~/.cache/guided_diffusion``
    (the evaluator's rule, restated here so that the package does not depend on the evaluations folder)."""
    if os.environ.get("GUIDED_DIFFUSION_CACHE"):
        return Path(os.environ["GUIDED_DIFFUSION_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "guided_diffusion"


def _check_pixels(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected uint8 pixels of shape (N, 3, H, W), got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: expected at least one image, got an empty batch")


def _check_latents(x: torch.Tensor, channels: int | None, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
        raise ValueError(f"{what}: expected a tensor of shape {want}, got {got}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: expected at least one image, got an empty batch")


class Encoder:
    """Base class: pixels -> raw latents -> final latents, and final latents -> pixels."""

    def init(self, device: torch.device | str) -> None:
        """Do any lazy set-up (loading weights) now, on `device`."""

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw uint8 pixels -> final latents (`encode_latents(encode_pixels(x))`)."""
        return self.encode_latents(self.encode_pixels(x), generator=generator)

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Raw uint8 pixels -> raw latents."""
        raise NotImplementedError

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw latents -> final latents (random encoders draw from `generator`, else from torch's global one)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents -> raw uint8 pixels."""
        raise NotImplementedError

    def pixel_size(self, latent_size: int) -> int:
        """The side of the images that final latents of side `latent_size` decode to."""
        return latent_size


class StandardRGBEncoder(Encoder):
    """Pixels as they are: final latents are uint8 values v mapped to v / 127.5 - 1, i.e. into [-1, 1]."""

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        _check_pixels(x, "StandardRGBEncoder.encode_pixels")
        return x

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.to(torch.float32) / 127.5 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> uint8, rounding to the nearest level (halves up) and clipping to [0, 255]."""
        _check_latents(x, None, "StandardRGBEncoder.decode")
        return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


class StabilityVAEEncoder(Encoder):
    """Stability AI's VAE (diffusers' AutoencoderKL) between pixels and whitened latents.

    `vae_name` is a Hugging Face hub name or a directory written by `AutoencoderKL.save_pretrained`. The
    constants map raw latents with per-channel mean `raw_mean` and std `raw_std` to final latents with mean
    `final_mean` and std `final_std` (the defaults are EDM2's, measured on ImageNet 512x512). The VAE runs
    `batch_size` images at a time; it is loaded at first use (or by `init`) and never pickled.
    """

    def __init__(
        self,
        vae_name: str = DEFAULT_VAE,
        raw_mean: Sequence[float] | float = (5.81, 3.25, 0.12, -2.15),
        raw_std: Sequence[float] | float = (4.17, 4.62, 3.71, 3.28),
        final_mean: float = 0,
        final_std: float = 0.5,
        batch_size: int = 8,
    ):
        if not isinstance(vae_name, (str, os.PathLike)) or not str(vae_name):
            raise ValueError(f"vae_name: expected a hub name or a directory, got {vae_name!r}")
        raw_mean_a, raw_std_a = np.asarray(raw_mean, np.float32), np.asarray(raw_std, np.float32)
        for name, value in (("raw_mean", raw_mean_a), ("raw_std", raw_std_a)):
            if value.ndim > 1 or not np.all(np.isfinite(value)):
                raise ValueError(f"{name}: expected finite numbers, one per latent channel, got {value.tolist()}")
        if np.any(raw_std_a == 0) or not np.isfinite(final_std) or final_std == 0:
            raise ValueError(f"raw_std and final_std: expected non-zero values, got {raw_std_a.tolist()} and "
                             f"{final_std}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.vae_name = str(vae_name)
        # In float32 and in this order (as EDM2), so that final latents agree bit for bit.
        self.scale = np.float32(final_std) / np.float32(raw_std)
        self.bias = np.float32(final_mean) - np.float32(raw_mean) * self.scale
        self.batch_size = int(batch_size)
        self._vae = None

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _vae=None)  # the weights stay out of pickles: only the name

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(dict(state, _vae=None))

    def init(self, device: torch.device | str) -> None:
        if self._vae is None:
            self._vae = load_stability_vae(self.vae_name, device=device)
        else:
            self._vae.to(device)

    def pixel_size(self, latent_size: int) -> int:
        """The VAE's decoder doubles the side once per level after the first (8 times for Stability's four), so
        this loads the VAE (on the CPU unless `init` already did) to read its levels."""
        if self._vae is None:
            self.init("cpu")
        return latent_size * 2 ** (len(self._vae.config.block_out_channels) - 1)

    def _const(self, value: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)

    def _latent_channels(self) -> int | None:
        return self.scale.size if self.scale.ndim == 1 else None

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> (posterior mean, posterior std) concatenated along channels, float32, `batch_size`
        images at a time."""
        _check_pixels(x, "StabilityVAEEncoder.encode_pixels")
        self.init(x.device)
        out = []
        with torch.no_grad():
            for batch in x.split(self.batch_size):
                posterior = self._vae.encode(batch.to(torch.float32) / 255)["latent_dist"]
                out.append(torch.cat([posterior.mean, posterior.std], dim=1))
        return torch.cat(out)

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw latents -> one sample of the posterior, scaled by `scale` then shifted by `bias`. Without a
        `generator` the noise is torch.randn_like's (torch's global generator), as in EDM2."""
        channels = self._latent_channels()
        _check_latents(x, None if channels is None else 2 * channels, "StabilityVAEEncoder.encode_latents")
        mean, std = x.to(torch.float32).chunk(2, dim=1)
        if generator is None:
            noise = torch.randn_like(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        x = mean + noise * std
        x = x * self._const(self.scale, x)
        x = x + self._const(self.bias, x)
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents -> uint8 pixels: unscaled, decoded `batch_size` images at a time (only one batch of
        full-size float images exists at once), clamped to [0, 1] and multiplied by 255, truncating as EDM2 does."""
        _check_latents(x, self._latent_channels(), "StabilityVAEEncoder.decode")
        self.init(x.device)
        out = None
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                z = x[start:start + self.batch_size].to(torch.float32)
                z = z - self._const(self.bias, z)
                z = z / self._const(self.scale, z)
                pixels = self._vae.decode(z)["sample"].clamp(0, 1).mul(255).to(torch.uint8)
                if out is None:
                    out = torch.empty((x.shape[0], *pixels.shape[1:]), dtype=torch.uint8, device=pixels.device)
                out[start:start + pixels.shape[0]] = pixels
                del pixels
        return out


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def load_stability_vae(vae_name: str = DEFAULT_VAE, device: torch.device | str = "cpu",
                       cache_dir: str | os.PathLike | None = None) -> Any:
    """diffusers' AutoencoderKL from a directory written by `save_pretrained`, or from the Hugging Face hub
    (downloaded once, with progress bars, into `cache_dir`, default <project cache>/diffusers); in eval mode,
    without gradients, on `device`. Failures are one-line errors naming `vae_name`."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError(f"StabilityVAEEncoder needs diffusers, which is not installed: {INSTALL_HINT}") from None
    # Without accelerate, diffusers warns about low_cpu_mem_usage at every load unless told to do without it.
    options = dict(low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
    path = os.path.expanduser(vae_name)
    if os.path.exists(path) or _looks_like_path(vae_name):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"vae_name {vae_name}: no such directory (expected a directory written by "
                                    f"AutoencoderKL.save_pretrained, or a hub name such as {DEFAULT_VAE})")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"vae_name {vae_name}: no config.json in it (expected a directory written by "
                                    "AutoencoderKL.save_pretrained)")
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, **options)
        except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError, ... on a bad directory
            raise ValueError(f"vae_name {vae_name}: cannot load an AutoencoderKL from it "
                             f"({type(err).__name__}: {_first_line(err)})") from None
    else:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "diffusers"
        try:  # the cached copy first, without asking the hub
            vae = AutoencoderKL.from_pretrained(vae_name, cache_dir=cache, local_files_only=True, **options)
        except Exception:
            print(f"downloading the VAE {vae_name} from the Hugging Face hub into {cache}", file=sys.stderr,
                  flush=True)
            try:
                vae = AutoencoderKL.from_pretrained(vae_name, cache_dir=cache, **options)
            except Exception as err:  # offline, unknown name, hub errors: all mean the VAE is unavailable
                raise VAEUnavailableError(
                    f"vae_name {vae_name}: not in the cache {cache} and cannot be downloaded "
                    f"({type(err).__name__}: {_first_line(err)}); connect once to download it, or pass a "
                    "directory written by AutoencoderKL.save_pretrained") from None
    return vae.eval().requires_grad_(False).to(device)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else "no details"


ENCODERS: dict[str, type[Encoder]] = {"StandardRGBEncoder": StandardRGBEncoder,
                                      "StabilityVAEEncoder": StabilityVAEEncoder}


def encoder_from_record(class_name: str, state: dict) -> Encoder:
    """The encoder an EDM2 snapshot records (its `encoder` entry: class name and state, as
    guided_diffusion.loading.nvlabs_pickle reads it), rebuilt from the recorded attributes without running any of its code."""
    if class_name not in ENCODERS:
        raise ValueError(f"encoder record: unknown class {class_name!r} (expected one of {', '.join(ENCODERS)})")
    if class_name == "StandardRGBEncoder":
        return StandardRGBEncoder()
    missing = [key for key in ("vae_name", "scale", "bias", "batch_size") if key not in state]
    if missing:
        raise ValueError(f"encoder record {class_name}: missing {', '.join(missing)}")
    scale = np.asarray(state["scale"], np.float32)
    bias = np.asarray(state["bias"], np.float32)
    if scale.shape != bias.shape or scale.ndim > 1 or not (np.all(np.isfinite(scale)) and np.all(scale != 0)):
        raise ValueError(f"encoder record {class_name}: scale and bias must be finite per-channel numbers of one "
                         f"shape, scale non-zero (got {scale.tolist()} and {bias.tolist()})")
    encoder = StabilityVAEEncoder(vae_name=state["vae_name"], batch_size=state["batch_size"])
    encoder.scale, encoder.bias = np.array(scale), np.array(bias)
    return encoder
