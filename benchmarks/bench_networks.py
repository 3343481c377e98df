"""Three generations of ImageNet-64 networks side by side: parameters and forward time at batch 2.

    python benchmarks/bench_networks.py [--batch 2] [--repeats 3] [--device cuda]

ADM-64 (the released 64x64_diffusion.pt configuration), EDM-64 (EDM's retrained ADM network, DhariwalUNet under
EDMPrecond) and EDM2-img64-S (the magnitude-preserving network), each built from its manifest in
tests/fixtures/reference with random weights, timed in fp32 (best of --repeats after a warm-up) on the same inputs
in one process; prints JSON with the times relative to ADM-64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from guided_diffusion.networks import edm  # noqa: E402
from guided_diffusion.networks import edm2
from reference import MANIFESTS, REFERENCE, build, load_json  # noqa: E402


def networks() -> dict:
    """name -> (network, forward(x, sigma, labels))."""
    adm, diffusion, _ = build("unet", load_json(os.path.join(MANIFESTS, "64x64_diffusion.json"))["flags"])
    edm_kwargs = load_json(os.path.join(REFERENCE, "edm", "manifests", "edm-imagenet-64x64-cond-adm.json"))
    edm2_kwargs = load_json(os.path.join(REFERENCE, "edm2", "manifests", "edm2-img64-s.json"))
    edm_net = edm.EDMPrecond(**{**edm_kwargs["init_kwargs"], "use_fp16": False})
    edm2_net = edm2.Precond(**{**edm2_kwargs["init_kwargs"], "use_fp16": False})
    return {
        "ADM-64": (adm, lambda x, sigma, labels: adm(x, (sigma * 10).long(), y=labels.argmax(1))),
        "EDM-64": (edm_net, lambda x, sigma, labels: edm_net(x, sigma, labels)),
        "EDM2-img64-S": (edm2_net, lambda x, sigma, labels: edm2_net(x, sigma, labels)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 64, 64, generator=generator).to(device)
    sigma = torch.full((args.batch,), 2.0, device=device)
    labels = torch.nn.functional.one_hot(torch.arange(args.batch) % 1000, 1000).float().to(device)
    results = {}
    for name, (net, forward) in networks().items():
        net.to(device).eval()
        with torch.no_grad():
            forward(x, sigma, labels)  # warm-up
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                forward(x, sigma, labels)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        results[name] = {"parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
                         "forward_s": round(min(times), 3)}
        net.to("cpu")
    base = results["ADM-64"]["forward_s"]
    for row in results.values():
        row["time_vs_ADM"] = round(row["forward_s"] / base, 2)
    print(json.dumps({"device": str(device), "cpu": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "batch": args.batch, "results": results}, indent=1))


if __name__ == "__main__":
    main()
