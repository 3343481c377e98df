"""The ImageNet-512 latent path: EDM2's img512 XS and S networks sampling 64x64x4 latents, and Stability's VAE
decoding them to 512x512 pixels through guided_diffusion/networks/encoders.py, with stand-in random weights.

    python benchmarks/bench_latent512.py [--device cpu|cuda] [--batch 2] [--steps 32] [--nets xs,s] [--full xs]
        [--probe_steps 3] [--decode_images 16] [--vae_batch 8] [--json OUT.json] [--quick]

* Decoding: ``StabilityVAEEncoder`` (batch_size ``--vae_batch``) over a diffusers ``AutoencoderKL`` built with
  sd-vae-ft-mse's configuration (``SD_VAE_FT_MSE``; random weights, seed 0) and written with ``save_pretrained``
  to a temporary folder, as a real VAE folder is passed with ``--vae``.  ``--decode_images`` latents of EDM2's
  final distribution (N(0, 0.5^2), 64x64x4) are decoded in one ``decode`` call; each VAE batch is timed and its
  memory recorded, above the memory just before the call: at the batch's start and its peak (on the CPU the
  resident set size, sampled every 5 ms; on CUDA the allocated memory).  With streaming decoding every batch peaks
  at the first one's level: decoding 2N images needs what N need (the first batch) plus the uint8 output.
* Sampling: ``edm2.Precond`` with the constructor arguments of EDM2's edm2-img512-xs / -s generators
  (``tests/fixtures/reference/edm2/manifests``; random weights, its zero-initialised gains set to 1 so that every
  layer contributes), class-conditional, EDM2's sampler: Heun (2nd order) over ``--steps`` Karras levels from
  sigma 80 to 0.002 (rho 7), ``2 steps - 1`` network evaluations (63 at 32 steps), through the project's
  ``samplers.sample_heun`` and ``PrecondDenoiser``.  Networks in ``--full`` run the whole schedule; the others run
  its first ``--probe_steps`` steps (all 2nd order) and are extrapolated from their mean time per evaluation,
  which the network's cost does not depend on.  The full runs report the same extrapolation from their own first
  steps beside the measured time, as a check of it.  A warm-up evaluation precedes each timing.

Prints a JSON report and a Markdown table: seconds per image for sampling (decode excluded), for decoding, and
their sum.  ``--quick`` runs tiny stand-ins (sd-vae-ft-mse's layout at 32 channels, a 2-level EDM2 network on
8x8 latents, 2 steps) for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from guided_diffusion.networks import edm2  # noqa: E402
from guided_diffusion.sampling import samplers
from guided_diffusion.processes.denoiser import PrecondDenoiser  # noqa: E402
from guided_diffusion.networks.encoders import StabilityVAEEncoder  # noqa: E402
from guided_diffusion.sampling.dispatch import SamplerOptions, noise_levels  # noqa: E402

MANIFESTS = ROOT / "tests" / "fixtures" / "reference" / "edm2" / "manifests"
NETS = ("xs", "s")
LATENT_CHANNELS, LATENT_SIZE, FINAL_STD = 4, 64, 0.5
# stabilityai/sd-vae-ft-mse's config.json (the architecture of Stable Diffusion's VAE, 83.7 M parameters).
SD_VAE_FT_MSE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256,
)
QUICK_VAE = {**SD_VAE_FT_MSE, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1, "sample_size": 64}
QUICK_NET = dict(img_resolution=8, img_channels=4, label_dim=10, model_channels=32, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(4,), use_fp16=False)
QUICK = dict(steps=2, probe_steps=1, decode_images=4, vae_batch=2, batch=2)
RSS_INTERVAL_S = 0.005


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked (one-line errors naming the flag)."""
    parser = argparse.ArgumentParser(prog="bench_latent512.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: EDM2's fp16 networks, as released)")
    parser.add_argument("--batch", type=int, default=2, help="latents sampled at once")
    parser.add_argument("--steps", type=int, default=32, help="Heun steps (EDM2's default: 32, 63 evaluations)")
    parser.add_argument("--nets", default="xs,s", help="EDM2 img512 generators to time, among xs, s")
    parser.add_argument("--full", default="xs", help="of --nets, those to run the whole schedule ('' for none)")
    parser.add_argument("--probe_steps", type=int, default=3, help="steps timed for the other networks")
    parser.add_argument("--decode_images", type=int, default=16, help="latents decoded in one call (0: skip)")
    parser.add_argument("--vae_batch", type=int, default=8, help="StabilityVAEEncoder batch_size")
    parser.add_argument("--json", metavar="PATH", help="also write the report to PATH")
    quick = ", ".join(f"--{key} {value}" for key, value in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"tiny stand-ins for tests, as defaults: {quick}")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)  # flags given explicitly still win
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch has no CUDA device")
    for flag in ("batch", "steps", "probe_steps", "vae_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.decode_images < 0:
        parser.error(f"--decode_images must be 0 or more, got {args.decode_images}")
    if args.probe_steps >= args.steps:
        parser.error(f"--probe_steps {args.probe_steps} must be below --steps {args.steps} (the last step is 1st "
                     "order)")
    args.nets = [name for name in args.nets.split(",") if name]
    args.full = [name for name in args.full.split(",") if name]
    for flag, names in (("nets", args.nets), ("full", args.full)):
        unknown = [name for name in names if name not in NETS]
        if unknown:
            parser.error(f"--{flag}: unknown network {','.join(unknown)}; choose among {', '.join(NETS)}")
    if not set(args.full) <= set(args.nets):
        parser.error(f"--full {','.join(args.full)}: each must also be in --nets {','.join(args.nets)}")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- decoding


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory in consecutive intervals of one window, against the memory at the window's start: the CPU's
    resident set size sampled by a thread every RSS_INTERVAL_S, or CUDA's peak allocated bytes. ``mark`` ends an
    interval and returns its peak; ``peaks`` holds them all (the last one ends with the window)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.peaks: list[int] = []
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> int:
        """Memory in use now, in bytes."""
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else rss_bytes()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = self._peak = self.current()
        if self.device.type != "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            with self._lock:
                self._peak = max(self._peak, rss_bytes())

    def mark(self) -> int:
        """The peak since the previous mark (or the window's start), in bytes; a new interval starts."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with self._lock:
                now = rss_bytes()
                peak, self._peak = max(self._peak, now), now
        self.peaks.append(peak)
        return peak

    def __exit__(self, *exc: Any) -> None:
        self.mark()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def above_start_mb(self, value: int) -> float:
        """``value`` bytes minus the memory at the window's start, in MiB."""
        return round((value - self.baseline) / 2**20, 1)


def standin_vae(folder: Path, config: dict) -> Path:
    """A random AutoencoderKL of ``config`` (seed 0) saved with save_pretrained into ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**config).save_pretrained(folder)
    return folder


def decode_benchmark(vae_dir: Path, count: int, vae_batch: int, latent_size: int,
                     device: torch.device) -> dict[str, Any]:
    """Decode ``count`` latents in one StabilityVAEEncoder.decode call: seconds and peak memory per VAE batch and
    of the whole call, in MiB above the memory just before the call (the latents and the VAE already there)."""
    encoder = StabilityVAEEncoder(vae_name=str(vae_dir), batch_size=vae_batch)
    start = time.perf_counter()
    encoder.init(device)
    load_s = time.perf_counter() - start
    vae = encoder._vae
    inner = vae.decode
    batches: list[dict[str, Any]] = []

    memory = PeakMemory(device)

    def timed_decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The VAE's decode of one StabilityVAEEncoder batch, timed, with its peak memory."""
        memory.mark()  # what came before the batch is not its own
        at_start = memory.current()
        began = time.perf_counter()
        out = inner(z, *args, **kwargs)
        synchronize(device)
        seconds = time.perf_counter() - began
        peak = memory.mark()
        batches.append({"images": len(z), "seconds": round(seconds, 2),
                        "memory_at_start_mb": memory.above_start_mb(at_start),
                        "peak_mb": memory.above_start_mb(peak)})
        return out

    generator = torch.Generator().manual_seed(1)
    latents = (FINAL_STD * torch.randn(count, LATENT_CHANNELS, latent_size, latent_size, generator=generator))
    latents = latents.to(device)
    vae.decode = timed_decode
    try:
        with memory:
            began = time.perf_counter()
            pixels = encoder.decode(latents)
            synchronize(device)
            seconds = time.perf_counter() - began
    finally:
        del vae.decode
    side = pixels.shape[-1]
    return {
        "images": count, "vae_batch": vae_batch, "pixels": f"{side}x{side}", "vae_load_s": round(load_s, 2),
        "vae_parameters_M": round(sum(p.numel() for p in vae.parameters()) / 1e6, 1),
        "seconds": round(seconds, 2), "s_per_image": round(seconds / count, 3), "batches": batches,
        "peak_mb": memory.above_start_mb(max(memory.peaks)), "output_mb": round(pixels.numel() / 2**20, 1),
        "output_uint8": pixels.dtype == torch.uint8,
    }


# ---------------------------------------------------------------- sampling


def standin_network(kwargs: dict) -> torch.nn.Module:
    """edm2.Precond with ``kwargs`` and random weights (seed 0); the zero-initialised gains set to 1."""
    torch.manual_seed(0)
    net = edm2.Precond(**kwargs)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("gain"):
                param.fill_(1.0)
    return net.eval().requires_grad_(False)


def network_kwargs(name: str, quick: bool) -> dict:
    """The constructor arguments of EDM2's edm2-img512-<name> generator (or the tiny stand-in's)."""
    if quick:
        return dict(QUICK_NET)
    return json.loads((MANIFESTS / f"edm2-img512-{name}.json").read_text())["init_kwargs"]


class CountedDenoiser:
    """D(x; sigma) for fixed labels, timing every network evaluation."""

    def __init__(self, net: torch.nn.Module, labels: torch.Tensor, device: torch.device):
        self.denoiser, self.labels, self.device = PrecondDenoiser(net), labels, device
        self.seconds: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        began = time.perf_counter()
        out = self.denoiser(x, sigma, y=self.labels)
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - began)
        return out


def sample_benchmark(label: str, kwargs: dict, batch: int, steps: int, full: bool, probe_steps: int,
                     device: torch.device) -> dict[str, Any]:
    """Heun sampling of ``batch`` latents with the network: the whole schedule (``full``) or its first
    ``probe_steps`` steps, with the time per image of the whole schedule measured or extrapolated."""
    net = standin_network(kwargs).to(device)
    size, channels = kwargs["img_resolution"], kwargs["img_channels"]
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, kwargs["label_dim"], (batch,), generator=generator).to(device)
    denoise = CountedDenoiser(net, labels, device)
    sigmas = noise_levels(denoise.denoiser, SamplerOptions(sampler="heun", steps=steps, clip_denoised=False))
    x = (torch.randn(batch, channels, size, size, generator=generator, dtype=torch.float64) * sigmas[0]).float()
    x = x.to(device)
    denoise(x, sigmas[0])  # warm-up, not counted
    denoise.seconds.clear()
    run_sigmas = sigmas if full else sigmas[: probe_steps + 1]
    began = time.perf_counter()
    out = samplers.sample_heun(denoise, x, run_sigmas)
    synchronize(device)
    seconds = time.perf_counter() - began
    evaluations = 2 * steps - 1
    probe = denoise.seconds[: 2 * probe_steps]
    per_evaluation = sum(probe) / len(probe)
    report = {
        "network": label,
        "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 1), "batch": batch, "steps": steps,
        "evaluations_full_schedule": evaluations, "evaluations_run": len(denoise.seconds),
        "steps_run": len(run_sigmas) - 1, "seconds_run": round(seconds, 2),
        "s_per_evaluation_first_steps": round(per_evaluation, 3),
        "extrapolated_s_per_image": round(per_evaluation * evaluations / batch, 2),
        "finite": bool(torch.isfinite(out).all()),
    }
    if full:
        report["measured_s_per_image"] = round(seconds / batch, 2)
        report["extrapolation_error"] = round(report["extrapolated_s_per_image"] / report["measured_s_per_image"] - 1,
                                              4)
    report["s_per_image"] = report.get("measured_s_per_image", report["extrapolated_s_per_image"])
    report["s_per_image_is"] = "measured" if full else f"extrapolated from {probe_steps} steps"
    net.to("cpu")
    return report


# ---------------------------------------------------------------- report


def machine(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch version, threads, GPU name if any."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    info = {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(report: dict[str, Any]) -> str:
    """Seconds per image: sampling (decode excluded), decoding, total."""
    decode = report.get("decode")
    lines = []
    if report["sampling"]:
        evaluations = report["sampling"][0]["evaluations_full_schedule"]
        lines = [f"| network | parameters | s / image, sampling ({evaluations} NFE) | how | s / image, decode | "
                 "s / image, total |", "|---|---:|---:|---|---:|---:|"]
    for row in report["sampling"]:
        decode_s = f"{decode['s_per_image']:.2f}" if decode else "-"
        total = f"{row['s_per_image'] + decode['s_per_image']:.2f}" if decode else "-"
        lines.append(f"| {row['network']} | {row['parameters_M']} M | {row['s_per_image']:.2f} | "
                     f"{row['s_per_image_is']} | {decode_s} | {total} |")
    if decode:
        lines += ["", "| VAE batch | images | seconds | s / image | memory at its start | its peak |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for i, batch in enumerate(decode["batches"], 1):
            lines.append(f"| {i} | {batch['images']} | {batch['seconds']:.2f} | "
                         f"{batch['seconds'] / batch['images']:.2f} | {batch['memory_at_start_mb']:.0f} MiB | "
                         f"{batch['peak_mb']:.0f} MiB |")
        lines.append(f"| whole call | {decode['images']} | {decode['seconds']:.2f} | {decode['s_per_image']:.2f} | "
                     f"0 MiB | {decode['peak_mb']:.0f} MiB |")
        lines.append("(memory above the memory just before the decode call)")
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Sampling first (the smaller memory), then decoding; the report."""
    device = torch.device(args.device)
    load_before = os.getloadavg()
    report: dict[str, Any] = {"machine": machine(device), "sampling": []}
    for name in args.nets:
        label = f"tiny stand-in for {name}" if args.quick else f"edm2-img512-{name}"
        report["sampling"].append(sample_benchmark(label, network_kwargs(name, args.quick), args.batch, args.steps,
                                                   name in args.full, args.probe_steps, device))
    if args.decode_images:
        vae_dir = standin_vae(work / "vae", QUICK_VAE if args.quick else SD_VAE_FT_MSE)
        latent_size = QUICK_NET["img_resolution"] if args.quick else LATENT_SIZE
        report["decode"] = decode_benchmark(vae_dir, args.decode_images, args.vae_batch, latent_size, device)
    report["load_average"] = {"before": [round(v, 2) for v in load_before],
                              "after": [round(v, 2) for v in os.getloadavg()]}
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_latent512_") as work:
        report = run(args, Path(work))
    text = json.dumps(report, indent=2)
    print(text)
    print(table(report))
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
