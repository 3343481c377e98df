"""EDM's ImageNet-64 network (guided_diffusion/networks/edm.py) against NVlabs' own: the released model's state dict and a
small network's denoiser outputs over the whole noise range (tests/fixtures/reference/edm)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm

from reference import REFERENCE, formula_weights

EDM = os.path.join(REFERENCE, "edm")


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_the_released_imagenet_64_network_has_nvlabs_state_dict():
    manifest = _json(os.path.join(EDM, "manifests", "edm-imagenet-64x64-cond-adm.json"))
    with torch.device("meta"):
        net = edm.EDMPrecond(**manifest["init_kwargs"])
    state = {name: list(t.shape) for name, t in net.state_dict().items()}
    assert list(state.items()) == list(manifest["state_dict"].items())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


def test_small_network_outputs_match_nvlabs():
    meta = _json(os.path.join(EDM, "edm_small_precond.json"))
    with np.load(os.path.join(EDM, "edm_small_precond.npz")) as data:
        golden = {k: torch.from_numpy(data[k]) for k in data.files}
    net = formula_weights(edm.EDMPrecond(**meta["init_kwargs"])).eval()
    onehot = torch.nn.functional.one_hot(golden["labels"].long(), meta["init_kwargs"]["label_dim"]).float()
    with torch.no_grad():
        denoised = net(golden["x"], golden["sigma"], onehot)
    error = float((denoised - golden["D"]).abs().max())
    assert error <= 1e-5 * float(golden["D"].abs().max()), error


def test_other_backbones_are_refused():
    with pytest.raises(ValueError, match="only EDM's ImageNet network, DhariwalUNet"):
        edm.EDMPrecond(img_resolution=32, img_channels=3, model_type="SongUNet")
