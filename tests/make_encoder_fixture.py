"""Write a tiny VAE and what NVlabs' EDM2 encoders compute with it, for tests/test_encoders.py.

    python tests/make_encoder_fixture.py --edm2 CHECKOUT_OF_NVlabs/edm2 --out tests/fixtures/encoders

This process (with diffusers) saves a randomly initialised AutoencoderKL in sd-vae-ft-mse's layout made tiny
(four 32-channel levels, one layer each, 4 latent channels: downsampling by 8, 0.37 M parameters) with
save_pretrained into OUT/vae, and fixed inputs into OUT/inputs.npz. A child process with only the EDM2 checkout on
sys.path (not this project) then runs the checkout's training/encoders.py on them and stores its results in
OUT/edm2_outputs.npz:

- StabilityVAEEncoder(vae_name=OUT/vae, batch_size=2) with EDM2's default constants: `raw` =
  encode_pixels(pixels), `final` = encode_latents(raw) after torch.manual_seed(NOISE_SEED), `decoded` =
  decode(final), `decoded_latents` = decode(latents) for wider latents, and the encoder's `scale` and `bias`;
- StandardRGBEncoder: `rgb_final` = encode(pixels) and `rgb_decoded` = decode(rgb_values).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

NOISE_SEED = 7
BATCH_SIZE = 2
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=32,
)

# Run in the child, with the EDM2 checkout as working directory and first on sys.path.
_RUN_EDM2 = r"""
import sys
import numpy as np
import torch
from training.encoders import StabilityVAEEncoder, StandardRGBEncoder

vae_dir, inputs, out, seed, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
data = np.load(inputs)
pixels = torch.from_numpy(data['pixels'])
enc = StabilityVAEEncoder(vae_name=vae_dir, batch_size=batch_size)
raw = enc.encode_pixels(pixels)
torch.manual_seed(seed)
final = enc.encode_latents(raw)
decoded = enc.decode(final)
decoded_latents = enc.decode(torch.from_numpy(data['latents']))
rgb = StandardRGBEncoder()
rgb_final = rgb.encode(pixels)
rgb_decoded = rgb.decode(torch.from_numpy(data['rgb_values']))
np.savez(out, raw=raw.detach().numpy(), final=final.detach().numpy(), decoded=decoded.numpy(),
         decoded_latents=decoded_latents.numpy(), scale=enc.scale, bias=enc.bias,
         rgb_final=rgb_final.numpy(), rgb_decoded=rgb_decoded.numpy())
"""


def make_inputs() -> dict[str, np.ndarray]:
    """Five 32x32 images (smooth gradients plus noise), latents of std 1 (twice EDM2's final std), and RGB
    values at and between the levels, beyond both ends included."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, 32)
    base = (ramp[None, None, :, None] * 0.5 + ramp[None, None, None, :] * 0.5).expand(5, 3, 32, 32)
    pixels = (base + 40 * torch.randn(5, 3, 32, 32, generator=g)).clamp(0, 255).round().to(torch.uint8)
    latents = torch.randn(3, 4, 4, 4, generator=g)
    levels = torch.arange(-2, 258, dtype=torch.float32)  # each level and each half-way point, 2 beyond each end
    values = (torch.cat([levels, levels + 0.5]) - 127.5) / 127.5
    rgb_values = torch.cat([values, torch.rand(80, generator=g) * 2.4 - 1.2]).reshape(2, 3, 10, 10)
    return dict(pixels=pixels.numpy(), latents=latents.numpy(), rgb_values=rgb_values.numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm2", required=True, help="a checkout of NVlabs/edm2")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures", "encoders"))
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKL

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    vae_dir = os.path.abspath(os.path.join(args.out, "vae"))
    AutoencoderKL(**VAE_CONFIG).save_pretrained(vae_dir)
    inputs = os.path.abspath(os.path.join(args.out, "inputs.npz"))
    np.savez(inputs, **make_inputs())
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONPATH=os.path.abspath(args.edm2), DNNLIB_CACHE_DIR=cache, HF_HUB_OFFLINE="1")
        out = os.path.abspath(os.path.join(args.out, "edm2_outputs.npz"))
        subprocess.run([sys.executable, "-c", _RUN_EDM2, vae_dir, inputs, out, str(NOISE_SEED), str(BATCH_SIZE)],
                       cwd=args.edm2, env=env, check=True)
    print(f"wrote {vae_dir}, {inputs} and {out}")


if __name__ == "__main__":
    main()
