"""The official DINOv2 ViT-L/14 weights: given (``--dinov2_weights``), cached, or downloaded once.

The state dict is downloaded from Meta's URL (the one ``torch.hub`` uses for ``dinov2_vitl14``) into the cache
dir of the Inception graph (``evaluations.inception_file.default_cache_dir``) with a progress bar, into a
temporary file that is checked and then renamed.  No digest of the file is published, so the check is
structural: it must load with ``torch.load(weights_only=True)`` (which runs no code) as a dict holding exactly
the backbone's parameter names, with their shapes and finite floating-point values.  A cached file that fails
the check is reported and downloaded again; a given file that fails it is an error naming it.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evaluations.dinov2 import VITL14, ViTConfig, state_dict_layout
from evaluations.errors import EvaluatorError
from evaluations.inception_file import default_cache_dir

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
FILE_NAME = "dinov2_vitl14_pretrain.pth"


def check_state_dict(label: str, state: object, config: ViTConfig) -> dict[str, torch.Tensor]:
    """``state`` as a state dict of the backbone ``config``, or an error naming ``label`` and what differs."""
    what = f"a state dict of DINOv2 {config.name}"
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise EvaluatorError(f"{label}: not {what} (expected a dict of tensors, got {type(state).__name__})")
    layout = state_dict_layout(config)
    missing = [name for name in layout if name not in state]
    unexpected = [name for name in state if name not in layout]
    if missing or unexpected:
        parts = [f"{kind} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
                 for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise EvaluatorError(f"{label}: not {what}: {'; '.join(parts)}")
    for name, shape in layout.items():
        value = state[name]
        if tuple(value.shape) != shape:
            raise EvaluatorError(f"{label}: not {what}: {name} has shape {tuple(value.shape)}, expected {shape}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise EvaluatorError(f"{label}: {name} is not finite floating-point values ({value.dtype})")
    return {name: state[name].float() for name in layout}


def read_state_dict(path: Path, label: str, config: ViTConfig) -> dict[str, torch.Tensor]:
    """Load and check a state dict file without running code from it (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # arbitrary bytes fail in many ways inside the (code-free) unpickler
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        reason = err.strerror if isinstance(err, OSError) and err.strerror else text
        raise EvaluatorError(f"{label}: cannot read it as a PyTorch state dict ({reason})") from None
    return check_state_dict(label, state, config)


def _download(url: str, target: Path, config: ViTConfig) -> dict[str, torch.Tensor]:
    temp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(temp, "wb") as out:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=target.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        try:
            state = read_state_dict(temp, f"the download from {url}", config)
        except EvaluatorError as err:
            raise EvaluatorError(f"{err}; it is unusable") from None
        os.replace(temp, target)
        return state
    except OSError as err:
        raise EvaluatorError(
            f"cannot download the DINOv2 weights from {url} ({getattr(err, 'reason', None) or err}); fetch them by "
            "hand and pass --dinov2_weights PATH"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def load_weights(path: str | None = None, url: str = DINOV2_URL, cache_dir: str | None = None,
                 config: ViTConfig = VITL14) -> dict[str, torch.Tensor]:
    """The backbone's state dict from ``path``, else from the cache, downloading it when missing or unusable."""
    if path is not None:
        if not os.path.isfile(path):
            raise EvaluatorError(f"--dinov2_weights {path}: no such file")
        return read_state_dict(Path(path), f"--dinov2_weights {path}", config)
    target = (Path(cache_dir) if cache_dir else default_cache_dir()) / FILE_NAME
    if target.exists():
        try:
            return read_state_dict(target, str(target), config)
        except EvaluatorError as err:
            print(f"warning: {err}; downloading it again", file=sys.stderr)
            target.unlink()
    print(f"downloading the DINOv2 {config.name} weights from {url} to {target}...")
    return _download(url, target, config)
