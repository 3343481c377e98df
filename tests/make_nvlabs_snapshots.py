"""Write small EDM and EDM2 network snapshots with NVlabs' own code, plus what that code computes from them.

    python tests/make_nvlabs_snapshots.py --edm2 CHECKOUT_OF_NVlabs/edm2 --edm CHECKOUT_OF_NVlabs/edm \
        --out tests/fixtures/nvlabs

Each checkout runs in child processes with only the checkout (not this project) on sys.path. The first child
builds a tiny network, its loss, encoder or augmentation pipe and dataset arguments with the checkout's classes,
trains two steps, and pickles the snapshot as the checkout's training/training_loop.py does (EDM2: a
dnnlib.EasyDict of encoder, dataset_kwargs, loss_fn and the power-function EMA cast to float16; EDM: a dict of
ema, loss_fn, augment_pipe and dataset_kwargs). A second child reads that file back with pickle.load, so the
source recorded in it runs as in NVlabs' generate scripts, and stores the network's outputs on fixed inputs,
and the other records' attributes as that code sees them, in an .npz beside it.

The tests read these files with guided_diffusion.loading.nvlabs only; neither NVlabs' code nor this script is needed there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# Run inside the child processes, with the NVlabs checkout as the working directory and first on sys.path.
_WRITE_EDM2 = r"""
import copy, pickle, sys
import torch
import dnnlib
from training import phema

torch.manual_seed(0)
latent = sys.argv[2] == 'latent'  # an img512-style network on 4-channel latents of Stability's VAE
encoder = dnnlib.util.construct_class_by_name(class_name='training.encoders.' + (
    'StabilityVAEEncoder' if latent else 'StandardRGBEncoder'))
dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='datasets/img16.zip',
                                 use_labels=True)
resolution, channels = (8, 4) if latent else (16, 3)
net = dnnlib.util.construct_class_by_name(class_name='training.networks_edm2.Precond', model_channels=16,
                                          dropout=0.0, use_fp16=True, channel_mult=[1, 2], num_blocks=1,
                                          attn_resolutions=[resolution // 2], channels_per_head=8,
                                          img_resolution=resolution, img_channels=channels, label_dim=4)
with torch.no_grad():  # the gains start at zero: give the network something to compute
    for name, p in net.named_parameters():
        if p.ndim == 0:
            p.copy_(0.5 + torch.rand([]))
loss_fn = dnnlib.util.construct_class_by_name(class_name='training.training_loop.EDM2Loss', P_mean=-0.8, P_std=1.6)
net.train().requires_grad_(True)
optimizer = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.9, 0.99))
ema = phema.PowerFunctionEMA(net=net, stds=[0.050, 0.100])
for step in range(2):
    images = torch.randn([8, channels, resolution, resolution]) if latent else torch.rand([8, 3, 16, 16]) * 2 - 1
    labels = torch.eye(4)[torch.randint(4, [8])]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net=net, images=images, labels=labels)
    loss.sum().mul(1 / 8).backward()
    optimizer.step()
    ema.update(cur_nimg=(step + 1) * 8, batch_size=8)
ema_net, ema_suffix = ema.get()[1]
data = dnnlib.EasyDict(encoder=encoder, dataset_kwargs=dataset_kwargs, loss_fn=loss_fn)
data.ema = copy.deepcopy(ema_net).cpu().eval().requires_grad_(False).to(torch.float16)
with open(sys.argv[1], 'wb') as f:
    pickle.dump(data, f)
"""

_WRITE_EDM = r"""
import copy, pickle, sys
import torch
import dnnlib

torch.manual_seed(0)
dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='datasets/img16.zip',
                                 use_labels=True, xflip=False, cache=True, resolution=16, max_size=100)
net = dnnlib.util.construct_class_by_name(class_name='training.networks.EDMPrecond', model_type='DhariwalUNet',
                                          model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                          dropout=0.1, use_fp16=False, augment_dim=9, img_resolution=16,
                                          img_channels=3, label_dim=4)
with torch.no_grad():  # the output layers start at zero: give the network something to compute
    for p in net.parameters():
        if not p.any():
            p.copy_(torch.randn_like(p) / max(p[0].numel(), 1) ** 0.5 if p.ndim > 1 else 0.1 * torch.randn_like(p))
net.train().requires_grad_(True)
loss_fn = dnnlib.util.construct_class_by_name(class_name='training.loss.EDMLoss')
augment_pipe = dnnlib.util.construct_class_by_name(class_name='training.augment.AugmentPipe', p=0.12, xflip=1e8,
                                                   yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
optimizer = torch.optim.Adam(net.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-8)
ema = copy.deepcopy(net).eval().requires_grad_(False)
for step in range(2):
    images = torch.rand([8, 3, 16, 16]) * 2 - 1
    labels = torch.eye(4)[torch.randint(4, [8])]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(net=net, images=images, labels=labels, augment_pipe=augment_pipe)
    loss.sum().mul(1 / 8).backward()
    optimizer.step()
    with torch.no_grad():
        for p_ema, p_net in zip(ema.parameters(), net.parameters()):
            p_ema.copy_(p_net.detach().lerp(p_ema, 0.5))
data = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
for key, value in data.items():
    if isinstance(value, torch.nn.Module):
        value = copy.deepcopy(value).eval().requires_grad_(False)
        data[key] = value.cpu()
    del value
with open(sys.argv[1], 'wb') as f:
    pickle.dump(data, f)
"""

_READ = r"""
import json, pickle, sys
import numpy as np
import torch

with open(sys.argv[1], 'rb') as f:
    data = pickle.load(f)
net = data['ema']
g = torch.Generator().manual_seed(1)
sigma = torch.tensor([0.002, 0.05, 0.4, 1.5, 8.0, 80.0])
shape = [6, net.img_channels, net.img_resolution, net.img_resolution]
x = (torch.rand(shape, generator=g) * 2 - 1) + sigma.reshape(-1, 1, 1, 1) * torch.randn(shape, generator=g)
labels = torch.eye(4)[[0, 1, 2, 3, 1, 0]]
labels[5] = 0  # the zero row: no label
out = dict(x=x, sigma=sigma, labels=labels, ema_dtype=np.array(str(next(net.parameters()).dtype)))
records = {}
with torch.no_grad():
    if sys.argv[3].startswith('edm2'):
        out['D'], out['logvar'] = net(x, sigma, labels, return_logvar=True)
    else:
        out['augment_labels'] = torch.randn([6, 9], generator=g)
        out['D'] = net(x, sigma, labels)
        out['D_augment'] = net(x, sigma, labels, augment_labels=out['augment_labels'])
        records['augment_pipe'] = dict(vars(data['augment_pipe']))
records['loss_fn'] = dict(vars(data['loss_fn']))
records['dataset_kwargs'] = dict(data['dataset_kwargs'])
records['types'] = {k: type(v).__name__ for k, v in data.items()}
records['ema_init_kwargs'] = dict(net.init_kwargs)
if 'encoder' in data:
    records['encoder'] = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in vars(data['encoder']).items()}
out['records'] = np.array(json.dumps(records, sort_keys=True))
np.savez(sys.argv[2], **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in out.items()})
"""


# Appended to each child's code: this project's package was never imported there.
_ISOLATED = "\nassert not [m for m in sys.modules if m.split('.')[0] == 'guided_diffusion']\n"


def _child(code: str, checkout: str, *args: str) -> None:
    """Run code in a fresh interpreter whose sys.path starts with the checkout (this project is not on it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.path.abspath(checkout)
    subprocess.run([sys.executable, "-c", code + _ISOLATED, *args], cwd=checkout, env=env, check=True)


def make(kind: str, checkout: str, out_dir: str) -> tuple[str, str]:
    """Write {kind}_snapshot.pkl with the checkout's training code (kind: edm2, edm2_latent or edm) and
    {kind}_outputs.npz with what its own pickle.load makes of that file; returns both paths."""
    pkl = os.path.abspath(os.path.join(out_dir, f"{kind}_snapshot.pkl"))
    npz = os.path.abspath(os.path.join(out_dir, f"{kind}_outputs.npz"))
    if kind == "edm":
        _child(_WRITE_EDM, checkout, pkl)
    else:
        _child(_WRITE_EDM2, checkout, pkl, "latent" if kind == "edm2_latent" else "rgb")
    _child(_READ, checkout, pkl, npz, kind)
    return pkl, npz


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edm2", required=True, help="a checkout of NVlabs/edm2")
    parser.add_argument("--edm", required=True, help="a checkout of NVlabs/edm")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures", "nvlabs"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for kind, checkout in (("edm2", args.edm2), ("edm2_latent", args.edm2), ("edm", args.edm)):
        for path in make(kind, checkout, args.out):
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
