"""Seconds per image of a small configuration: DDPM-250 and DDIM-25, without and with classifier guidance.

    python benchmarks/bench_sample.py [--batch_size 8] [--image_size 32] [--device cuda]

Random weights (speed does not depend on them); the guided runs add a classifier forward and backward per
step. Prints JSON; ratios are guided time / unguided time for the same sampler.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.guidance.compose import Guidance, classifier_cond_fn
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sampler
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.script_util import (
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)


def build(image_size: int, device: torch.device):
    args = model_and_diffusion_defaults()
    args.update(image_size=image_size, num_channels=64, num_res_blocks=2, channel_mult="1,2,2",
                attention_resolutions="16,8", num_head_channels=32, class_cond=True, num_classes=10,
                learn_sigma=True, resblock_updown=True)
    clf_args = classifier_defaults()
    clf_args.update(image_size=image_size, classifier_width=64, classifier_depth=1, classifier_channel_mult="1,2,2",
                    classifier_attention_resolutions="16,8", num_classes=10)
    model, _ = create_model_and_diffusion(**args)
    classifier = create_classifier(**clf_args)
    return args, model.to(device).eval(), classifier.to(device).eval()


def seconds_per_image(args, model, classifier, respacing, use_ddim, guided, batch_size, device) -> float:
    _, diffusion = create_model_and_diffusion(**{**args, "timestep_respacing": respacing})
    model_fn = sampling.model_fn_for(model, class_cond=True)
    guidance = Guidance(cond_fn=classifier_cond_fn(classifier, 1.0) if guided else None)
    kwargs = {"y": torch.arange(batch_size, device=device) % 10}
    options = SamplerOptions(use_ddim=use_ddim)
    shape = (batch_size, 3, args["image_size"], args["image_size"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run_sampler(diffusion, model_fn, shape, kwargs, SampleRNG(range(batch_size)), options, guidance, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    torch.manual_seed(0)
    args, model, classifier = build(opts.image_size, device)
    rows = []
    for name, respacing, use_ddim in (("DDPM-250", "250", False), ("DDIM-25", "ddim25", True)):
        row = {"sampler": name}
        for guided in (False, True):
            key = "guided_s_per_image" if guided else "s_per_image"
            row[key] = round(seconds_per_image(args, model, classifier, respacing, use_ddim, guided,
                                               opts.batch_size, device), 4)
        row["guided_over_unguided"] = round(row["guided_s_per_image"] / row["s_per_image"], 2)
        rows.append(row)
    print(json.dumps({"image_size": opts.image_size, "batch_size": opts.batch_size, "device": str(device),
                      "model_parameters": sum(p.numel() for p in model.parameters()),
                      "classifier_parameters": sum(p.numel() for p in classifier.parameters()),
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
