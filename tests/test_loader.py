"""One road from a checkpoint to a network ready to sample: loader.load_model for every family, each file read
once, and the samplers reached through LoadedModel alone."""

import argparse
import os

import torch

from guided_diffusion.networks import sigma_space
from guided_diffusion.loading import loader
from guided_diffusion.loading import nvlabs
from guided_diffusion.loading.checkpoint_flags import checkpoint_args
from guided_diffusion.processes.denoiser import Denoiser, PrecondDenoiser
from guided_diffusion.guidance.compose import Guidance
from guided_diffusion.sampling.rng import SampleRNG
from guided_diffusion.sampling.dispatch import SamplerOptions, run_sampler
from guided_diffusion.script_util import create_model_and_diffusion

from launch import read_samples, run_main

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "nvlabs")
ARCHITECTURE = sigma_space.architecture_defaults()


def _flags(path: str, **extra) -> argparse.Namespace:
    saved = {k: v for k, v in checkpoint_args(path).items() if k in ARCHITECTURE} if path.endswith(".pt") else {}
    return argparse.Namespace(**{**ARCHITECTURE, **saved, **extra})


def test_an_adm_checkpoint_loads_as_its_process_and_denoiser(trained):
    loaded = loader.load_model(create_model_and_diffusion, _flags(trained["cfg"], timestep_respacing="10"),
                               ARCHITECTURE, trained["cfg"], "model_path")
    assert loaded.timesteps and isinstance(loaded.denoiser, Denoiser) and not loaded.network.training
    assert loaded.denoiser.model_fn is loaded.model_fn and loaded.sigma_range[0] < loaded.sigma_range[1]
    options = SamplerOptions(sampler="heun", steps=3)
    kwargs = {"y": torch.tensor([1, 2])}
    direct = run_sampler(loaded.diffusion, loaded.model_fn, (2, 3, 16, 16), kwargs, SampleRNG([0, 1]), options)
    assert torch.equal(loaded.sample((2, 3, 16, 16), kwargs, SampleRNG([0, 1]), options, Guidance()), direct)
    assert loaded.step_count(options) == 3 and len(loaded.visited_levels(options)) == 4


def test_an_nvlabs_pickle_loads_as_a_denoiser_read_once(monkeypatch):
    path = os.path.join(FIXTURES, "edm2_snapshot.pkl")
    loader._nvlabs_checkpoint.cache_clear()
    reads = []
    original = nvlabs.load_generator
    monkeypatch.setattr(nvlabs, "load_generator", lambda p: reads.append(p) or original(p))
    flags = _flags(path, **loader.nvlabs_flags(path, "model_path"))
    loaded = loader.load_model(create_model_and_diffusion, flags, ARCHITECTURE, path, "model_path")
    assert not loaded.timesteps and isinstance(loaded.denoiser, PrecondDenoiser) and loaded.denoiser is loaded.model_fn
    assert (flags.image_size, flags.num_classes) == (16, 4)
    options = SamplerOptions(sampler="euler", steps=2)
    out = loaded.sample((1, 3, 16, 16), {"y": torch.tensor([2])}, SampleRNG([0]), options, Guidance())
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    assert reads == [path]  # flags and network from one read
    loader._nvlabs_checkpoint.cache_clear()


def test_a_sampling_run_reads_each_nvlabs_file_once(tmp_path, monkeypatch):
    loader._nvlabs_checkpoint.cache_clear()
    reads = []
    original = nvlabs.load_generator
    monkeypatch.setattr(nvlabs, "load_generator", lambda p: reads.append(os.path.basename(p)) or original(p))
    code, stderr = run_main("image_sample.py", [
        "--model_path", os.path.join(FIXTURES, "edm2_snapshot.pkl"), "--guide_model_path",
        os.path.join(FIXTURES, "edm_snapshot.pkl"), "--guide_scale", 2, "--sampler", "heun", "--steps", 2,
        "--num_samples", 2, "--batch_size", 2, "--progress", False, "--log_dir", tmp_path])
    assert code == 0, stderr
    assert sorted(reads) == ["edm2_snapshot.pkl", "edm_snapshot.pkl"]
    assert read_samples(tmp_path / "samples_2x16x16x3.npz")["arr_0"].shape == (2, 16, 16, 3)
    loader._nvlabs_checkpoint.cache_clear()
