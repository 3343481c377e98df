"""Discretization error of each sampler on a trained network: how far its samples lie from the exact solution of
the network's own probability-flow ODE, started from the same noise at the same noise level.

    python benchmarks/bench_samplers_network.py --model_path runs/quickstart/diffusion/ema_0.995_002500.pt \
        runs/cfg_digits/diffusion/ema_0.995_002500.pt

The model's flags come from the args.json beside the checkpoint (as in the sampling scripts); D is clipped to
[-1, 1] as the scripts do by default (--clip_denoised False for the unclipped ODE). The exact solution
is a 250-step Heun solve over the model's trained levels (Karras schedule, rho 7) from the sampler's first noise
level: DDIM's respaced processes start below the top level (ddim100 of a 1000-step process at t = 990), and a
network's ODE can depend strongly on where it starts, so each start level gets its own reference. The error is
the RMS over samples of the L2 distance in [-1, 1] pixel units, also relative to the samples' RMS norm; the
reference's own error is estimated from a 125-step solve. Writes RESULTS_samplers_network.md (or
RESULTS_samplers_network_unclipped.md) to --out.

Read the numbers as discretization error, not image quality: where a network's ODE is sensitive (its final
samples change with the start level, as these small networks' do at high noise), an error made early is
amplified into a different but equally valid image. Samplers that start at the same level share a reference
and compare most directly.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from guided_diffusion.processes.denoiser import Denoiser
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.loading.checkpoint_flags import checkpoint_args
from guided_diffusion.sampling.dispatch import SamplerOptions, noise_levels, run_sampler
from guided_diffusion.loading.loader import load_module_weights, model_fn_for
from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    str2bool,
)

RUNS = [("ddim", n) for n in (25, 50, 100, 250)] + [("euler", n) for n in (35, 100)] + \
       [("heun", n) for n in (13, 18, 25, 50)] + [("dpmpp_2m", n) for n in (15, 25, 35, 50)]
REFERENCE_STEPS = 250


class Network:
    """A checkpoint with its flags, sampled on seeds 0..num_samples-1 by any sampler."""

    def __init__(self, model_path: str, num_samples: int, clip_denoised: bool = True):
        self.path = model_path
        self.clip_denoised = clip_denoised
        self.flags = model_and_diffusion_defaults()
        saved = checkpoint_args(model_path)
        if saved is None:
            raise SystemExit(f"--model_path {model_path}: no args.json beside it to read the model's flags from")
        self.flags.update({k: saved[k] for k in self.flags if k in saved})
        self.flags["timestep_respacing"] = ""
        model, _ = create_model_and_diffusion(**self.flags)
        load_module_weights(model, model_path, "model_path")
        self.model_fn = model_fn_for(model, self.flags["class_cond"])
        self.num_samples = num_samples
        self.shape = (num_samples, 3, self.flags["image_size"], self.flags["image_size"])
        self.references = {}
        self.calls = 0

    def diffusion(self, respacing: str = ""):
        """The model's process, respaced: only the schedule is built, not another network."""
        f = self.flags
        return create_gaussian_diffusion(
            steps=f["diffusion_steps"], learn_sigma=f["learn_sigma"], noise_schedule=f["noise_schedule"],
            use_kl=f["use_kl"], predict_xstart=f["predict_xstart"], rescale_timesteps=f["rescale_timesteps"],
            rescale_learned_sigmas=f["rescale_learned_sigmas"], timestep_respacing=respacing)

    def sample(self, options: SamplerOptions, respacing: str = "", seed: int = 0) -> torch.Tensor:
        """Samples seed .. seed + num_samples - 1 (image i from its own noise stream), in [-1, 1]."""
        def counted(x, t, **kwargs):
            self.calls += 1
            return self.model_fn(x, t, **kwargs)

        kwargs = {}
        if self.flags["class_cond"]:
            kwargs["y"] = torch.arange(self.num_samples) % self.flags["num_classes"]
        with torch.no_grad():
            return run_sampler(self.diffusion(respacing), counted, self.shape, kwargs,
                               SampleRNG(range(seed, seed + self.num_samples)), options).double()

    def start_level(self, options: SamplerOptions, respacing: str) -> float:
        if options.name == "ddim":
            return Denoiser(self.diffusion(respacing), self.model_fn).sigma_max
        return float(noise_levels(Denoiser(self.diffusion(), self.model_fn), options)[0])

    def reference(self, sigma_start: float, steps: int = REFERENCE_STEPS) -> torch.Tensor:
        key = (sigma_start, steps)
        if key not in self.references:
            self.references[key] = self.sample(SamplerOptions(sampler="heun", steps=steps, sigma_max=sigma_start,
                                                              clip_denoised=self.clip_denoised))
        return self.references[key]


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).norm(dim=1).pow(2).mean().sqrt())


def options_for(name: str, steps: int, clip_denoised: bool) -> tuple[SamplerOptions, str]:
    if name == "ddim":
        return SamplerOptions(sampler="ddim", clip_denoised=clip_denoised), f"ddim{steps}"
    return SamplerOptions(sampler=name, steps=steps, clip_denoised=clip_denoised), ""


def measure(net: Network) -> list[dict]:
    rows = []
    for name, steps in RUNS:
        options, respacing = options_for(name, steps, net.clip_denoised)
        start = net.start_level(options, respacing)
        reference = net.reference(start)
        net.calls = 0
        began = time.perf_counter()
        samples = net.sample(options, respacing)
        rows.append({"sampler": name, "steps": respacing or f"Karras, N={steps}", "nfe": net.calls,
                     "start": start, "error": rms_distance(samples, reference),
                     "norm": float(samples.flatten(1).norm(dim=1).pow(2).mean().sqrt()),
                     "seconds": time.perf_counter() - began})
        print(f"{name:9s} {rows[-1]['steps']:14s} nfe {net.calls:4d} start sigma {start:8.2f} "
              f"error {rows[-1]['error']:.4f}", flush=True)
    return rows


def report(net: Network, rows: list[dict], reference_error: float) -> str:
    """One network's section: the verdict for Heun-35 against DDIM-100 and the table."""
    heun = next(r for r in rows if r["sampler"] == "heun" and r["nfe"] == 35)
    ddim = next(r for r in rows if r["sampler"] == "ddim" and r["nfe"] == 100)
    verdict = "met" if heun["error"] <= ddim["error"] else "NOT met"
    lines = [f"## {net.path}: {net.flags['noise_schedule']} schedule of {net.flags['diffusion_steps']} steps, "
             f"{net.flags['image_size']}x{net.flags['image_size']} images"
             f"{', class-conditional' if net.flags['class_cond'] else ''}",
             "",
             f"Heun at 35 NFE against DDIM at 100 NFE: {verdict} (ODE error {heun['error']:.4f} vs "
             f"{ddim['error']:.4f}). The reference solutions' own error (250 against 125 Heun steps from sigma "
             f"{rows[-1]['start']:.0f}): {reference_error:.4f}.",
             "",
             "| sampler (time steps) | NFE | start sigma | ODE error | relative |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sampler']} ({r['steps']}) | {r['nfe']} | {r['start']:.2f} | {r['error']:.4f} | "
                     f"{r['error'] / r['norm']:.2%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, nargs="+", help="one or more checkpoints")
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--clip_denoised", type=str2bool, default=True,
                        help="clip D to [-1, 1] as the sampling scripts do by default")
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args()
    for path in args.model_path:
        if not os.path.isfile(path):
            raise SystemExit(f"--model_path {path}: no such file (bash quickstart.sh trains one)")
    command = f"python benchmarks/bench_samplers_network.py --model_path {' '.join(args.model_path)} " \
              f"--num_samples {args.num_samples} --clip_denoised {args.clip_denoised}"
    sections = [f"Command: `{command}` on {os.cpu_count()} CPU cores ({platform.machine()}), torch "
                f"{torch.__version__}, python {sys.version.split()[0]}; {args.num_samples} samples per run.\n"]
    for path in args.model_path:
        net = Network(path, args.num_samples, args.clip_denoised)
        rows = measure(net)
        start = rows[-1]["start"]
        reference_error = rms_distance(net.reference(start), net.reference(start, REFERENCE_STEPS // 2))
        sections.append(report(net, rows, reference_error))
        print(sections[-1], flush=True)
    name = "RESULTS_samplers_network.md" if args.clip_denoised else "RESULTS_samplers_network_unclipped.md"
    with open(os.path.join(args.out, name), "w") as f:
        f.write("\n".join(sections))


if __name__ == "__main__":
    main()
