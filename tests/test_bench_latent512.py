"""benchmarks/bench_latent512.py: the stand-ins have EDM2's img512 and sd-vae-ft-mse's shapes, sampling counts
Heun's evaluations and extrapolates from them, decoding is timed and measured per VAE batch, bad flags are
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_latent512 as bench  # noqa: E402

from guided_diffusion.networks import edm2  # noqa: E402


@pytest.mark.parametrize("name, channels", [("xs", 128), ("s", 192)])
def test_networks_are_edm2s_img512_generators(name, channels):
    kwargs = bench.network_kwargs(name, quick=False)
    assert (kwargs["img_resolution"], kwargs["img_channels"], kwargs["label_dim"]) == (64, 4, 1000)
    assert kwargs["model_channels"] == channels
    with torch.device("meta"):
        net = edm2.Precond(**kwargs)
    manifest = json.loads((bench.MANIFESTS / f"edm2-img512-{name}.json").read_text())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


def test_vae_standin_has_sd_vae_ft_mse_shape():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**bench.SD_VAE_FT_MSE)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # stabilityai/sd-vae-ft-mse's parameter count
    assert bench.LATENT_SIZE * 2 ** (len(vae.config.block_out_channels) - 1) == 512


# Run in a fresh process: in a long test session the allocator may hand back memory freed by earlier tests, and
# the resident set size then does not rise.
PEAKS = """
import sys, time, torch
sys.path.insert(0, "benchmarks")
import bench_latent512 as bench

def sampled(memory, mebibytes):  # the meter's thread samples on its own schedule, which a busy machine delays
    deadline = time.monotonic() + 60
    while memory.above_start_mb(memory._peak) < mebibytes and time.monotonic() < deadline:
        time.sleep(0.01)

with bench.PeakMemory(torch.device("cpu")) as memory:
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    sampled(memory, 60)
    del block
    first = memory.mark()
    block = torch.ones(32 * 2**20)  # 128 MiB
    sampled(memory, 124)
    del block
print(memory.peaks[0] == first, len(memory.peaks), *(memory.above_start_mb(p) for p in memory.peaks))
"""


def test_peak_memory_sees_allocations_freed_inside_each_interval():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", PEAKS], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    same, count, first, second = out.stdout.split()
    assert same == "True" and count == "2"
    assert 60 <= float(first) < 120
    assert 124 <= float(second) < 190


@pytest.mark.parametrize("argv, message", [
    (["--full", "m"], "--full: unknown network m; choose among xs, s"),
    (["--nets", "s", "--full", "xs"], "--full xs: each must also be in --nets s"),
    (["--steps", "4", "--probe_steps", "4"], "--probe_steps 4 must be below --steps 4 (the last step is 1st order)"),
    (["--device", "tpu"], "--device must be cpu or cuda, got 'tpu'"),
    (["--vae_batch", "0"], "--vae_batch must be a positive integer, got 0"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench_latent512.py: error: {message}"


def test_quick_sets_defaults_that_flags_override():
    args = bench.parse_args(["--quick", "--decode_images", "0"])
    assert (args.steps, args.probe_steps, args.vae_batch, args.decode_images, args.quick) == (2, 1, 2, 0, True)
    assert bench.parse_args([]).steps == 32


@pytest.mark.slow
def test_quick_run_samples_decodes_and_reports(tmp_path, capsys):
    assert bench.main(["--quick", "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    full, probed = report["sampling"]
    assert full["network"] == "tiny stand-in for xs" and full["s_per_image_is"] == "measured"
    assert full["evaluations_full_schedule"] == full["evaluations_run"] == 3  # Heun, 2 steps: 2 + 1 evaluations
    assert full["measured_s_per_image"] == pytest.approx(full["seconds_run"] / 2, abs=0.01)
    assert probed["s_per_image_is"] == "extrapolated from 1 steps" and probed["evaluations_run"] == 2
    assert probed["extrapolated_s_per_image"] == pytest.approx(probed["s_per_evaluation_first_steps"] * 3 / 2,
                                                               abs=0.01)
    assert full["finite"] and probed["finite"]
    decode = report["decode"]
    assert decode["pixels"] == "64x64" and decode["output_uint8"] and decode["vae_batch"] == 2
    assert [b["images"] for b in decode["batches"]] == [2, 2]  # streamed: one VAE call per batch
    assert decode["s_per_image"] == pytest.approx(decode["seconds"] / 4, abs=0.005)
    assert decode["peak_mb"] == max(b["peak_mb"] for b in decode["batches"]) > 0  # the VAE's work is the peak
    assert decode["batches"][0]["memory_at_start_mb"] < decode["batches"][0]["peak_mb"]
    out = capsys.readouterr().out
    total = full["s_per_image"] + decode["s_per_image"]
    assert f"| tiny stand-in for xs | 0.7 M | {full['s_per_image']:.2f} | measured | {decode['s_per_image']:.2f} | " \
           f"{total:.2f} |" in out
    assert 0 < sum(b["seconds"] for b in decode["batches"]) <= decode["seconds"] + 0.02  # the batches lie inside
