"""Forward and forward+backward time of a released network configuration, per attention kernel.

    python benchmarks/bench_unet.py 64x64_diffusion 2 [--repeats 3] [--device cuda]

Builds the configuration from its manifest (tests/fixtures/reference/checkpoints/NAME.json) with random weights,
times fp32 (plus fp16 and bf16 on CUDA) with the scaled_dot_product_attention kernel and with the plain
matmul + softmax kernel in the same process, and prints JSON; ratios are matmul time / sdpa time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from guided_diffusion.networks.attention import set_attention_backend  # noqa: E402
from reference import MANIFESTS, build, kind_of, load_json  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _inputs(model, kind: str, batch: int, device: torch.device):
    size = model.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    kwargs = {}
    if getattr(model, "num_classes", None):
        kwargs["y"] = torch.randint(0, model.num_classes, (batch,), device=device)
    if kind == "sr":
        kwargs["low_res"] = torch.randn(batch, 3, size // 4, size // 4, device=device)
    return x, torch.randint(0, 1000, (batch,), device=device), kwargs


def bench(name: str, batch: int, repeats: int, device: torch.device) -> dict:
    kind = kind_of(name)
    model, _, _ = build(kind, load_json(f"{MANIFESTS}/{name}.json")["flags"])
    model.to(device)
    x, t, kwargs = _inputs(model, kind, batch, device)
    precisions = ["fp32"] + (["bf16", "fp16"] if device.type == "cuda" else [])
    results = {"config": name, "batch": batch, "device": str(device),
               "parameters": sum(p.numel() for p in model.parameters()), "timings": []}
    for precision in precisions:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                                  enabled=precision != "fp32")
        if precision == "fp16":
            autocast = torch.autocast(device.type, enabled=False)
            model.convert_to_fp16()

        def forward():
            with torch.no_grad(), autocast:
                model(x, t, **kwargs)

        def forward_backward():
            model.zero_grad(set_to_none=True)
            with autocast:
                out = model(x, t, **kwargs)
            out.float().square().mean().backward()

        row = {"precision": precision}
        for backend in ("sdpa", "matmul"):
            set_attention_backend(backend)
            row[f"forward_s_{backend}"] = round(_time(forward, device, repeats), 4)
            row[f"forward_backward_s_{backend}"] = round(_time(forward_backward, device, repeats), 4)
        row["forward_ratio_matmul_over_sdpa"] = round(row["forward_s_matmul"] / row["forward_s_sdpa"], 3)
        row["forward_backward_ratio_matmul_over_sdpa"] = round(
            row["forward_backward_s_matmul"] / row["forward_backward_s_sdpa"], 3)
        if device.type == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        results["timings"].append(row)
    set_attention_backend("auto")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="manifest name, e.g. 64x64_diffusion, 256x256_classifier, 64_256_upsampler")
    parser.add_argument("batch", type=int)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not os.path.exists(f"{MANIFESTS}/{args.config}.json"):
        names = sorted(f[:-5] for f in os.listdir(MANIFESTS))
        parser.error(f"unknown config {args.config!r}: choose one of {', '.join(names)}")
    torch.manual_seed(0)
    print(json.dumps(bench(args.config, args.batch, args.repeats, torch.device(args.device)), indent=1))


if __name__ == "__main__":
    main()
