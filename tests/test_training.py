"""Training mechanics in-process: fp16 loss scaling, microbatch weighting, rank-synced samplers, logging."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from guided_diffusion import logger
from guided_diffusion.fp16_util import MixedPrecisionTrainer
from guided_diffusion.resample import LossSecondMomentResampler
from guided_diffusion.script_util import create_classifier_and_diffusion, classifier_and_diffusion_defaults
from guided_diffusion.training.classifier import ClassifierTrainLoop
from guided_diffusion.train_util import parse_resume_step_from_filename
from guided_diffusion.unet import UNetModel


def _tiny_unet():
    torch.manual_seed(0)
    return UNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16)


def test_fp16_unscales_every_gradient():
    model = _tiny_unet()
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True, initial_lg_loss_scale=8.0)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    coeffs = [torch.rand(p.shape) for p in trainer.model_params]
    before = [m.detach().clone() for m in trainer.master_params]
    loss = sum((p.float() * c).sum() for p, c in zip(trainer.model_params, coeffs))  # d loss / d p = c
    trainer.backward(loss)
    opt = torch.optim.SGD(trainer.master_params, lr=1.0)
    assert trainer.optimize(opt)
    for name, master, old, c in zip(trainer.param_names, trainer.master_params, before, coeffs):
        # One SGD step with lr 1 moves each master weight by exactly its (unscaled) gradient.
        assert torch.allclose(old - master.detach(), c, rtol=2e-3, atol=1e-3), name
    assert trainer.lg_loss_scale == pytest.approx(8.0 + 1e-3)
    for master, param in zip(trainer.master_params, trainer.model_params):
        assert torch.equal(master.detach().to(param.dtype), param.detach())


def test_fp16_skips_a_step_with_inf_gradients_and_lowers_the_scale():
    model = _tiny_unet()
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True, initial_lg_loss_scale=8.0)
    before = [m.detach().clone() for m in trainer.master_params]
    first = trainer.model_params[0]
    trainer.backward(first.float().sum() * float("inf"))
    opt = torch.optim.SGD(trainer.master_params, lr=1.0)
    assert not trainer.optimize(opt)
    assert trainer.lg_loss_scale == 7.0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.master_params))
    assert all(p.grad is None for p in trainer.model_params)


def test_bf16_autocast_and_exclusive_precisions():
    model = _tiny_unet()
    trainer = MixedPrecisionTrainer(model=model, use_bf16=True)
    with trainer.autocast():
        out = model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert out.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="exclude each other"):
        MixedPrecisionTrainer(model=_tiny_unet(), use_fp16=True, use_bf16=True)


def _classifier_loop(microbatch, log_dir):
    args = classifier_and_diffusion_defaults()
    args.update(image_size=8, classifier_width=64, classifier_depth=1, classifier_channel_mult="1,2",
                classifier_attention_resolutions="4", classifier_pool="attention", num_classes=3,
                diffusion_steps=100, noise_schedule="cosine")
    torch.manual_seed(0)
    model, diffusion = create_classifier_and_diffusion(**args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    logger.configure(dir=str(log_dir), format_strs=[])
    return ClassifierTrainLoop(model=model, diffusion=diffusion, data=None, batch_size=4, microbatch=microbatch,
                               lr=1e-3, log_interval=1, save_interval=100, resume_checkpoint="", noised=False)


def test_microbatches_give_the_whole_batch_gradient(tmp_path):
    torch.manual_seed(1)
    batch = (torch.randn(4, 3, 8, 8), {"y": torch.tensor([0, 1, 2, 1])})
    grads = []
    for microbatch in (-1, 2, 1):
        loop = _classifier_loop(microbatch, tmp_path)
        loop.mp_trainer.zero_grad()
        loop.forward_backward_log(iter([batch]), prefix="train")
        grads.append([p.grad.clone() for p in loop.model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_names_parse_to_steps():
    assert parse_resume_step_from_filename("/x/model012345.pt") == 12345
    assert parse_resume_step_from_filename("ema_0.9999_000200.pt") == 200
    assert parse_resume_step_from_filename("opt000007.pt") == 7
    assert parse_resume_step_from_filename("64x64_diffusion.pt") == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sampler_worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    class Diffusion:
        num_timesteps = 3

    sampler = LossSecondMomentResampler(Diffusion(), history_per_term=2)
    # The ranks see different (and differently sized) batches; both must end with every loss.
    for _ in range(2):
        if rank == 0:
            sampler.update_with_local_losses(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
        else:
            sampler.update_with_local_losses(torch.tensor([2]), torch.tensor([4.0]))
    np.save(os.path.join(out_dir, f"weights{rank}.npy"), sampler.weights())
    dist.destroy_process_group()


@pytest.mark.mpi
def test_loss_aware_sampler_is_synced_across_ranks(tmp_path):
    mp.spawn(_sampler_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    w0, w1 = np.load(tmp_path / "weights0.npy"), np.load(tmp_path / "weights1.npy")
    expected = np.array([1.0, 2.0, 4.0]) / 7 * 0.999 + 0.001 / 3
    assert np.allclose(w0, expected) and np.allclose(w1, expected)


def test_logger_formats(tmp_path, capsys):
    folder = logger.configure(dir=str(tmp_path / "logs"), format_strs=["stdout", "log", "csv", "json",
                                                                          "tensorboard"])
    for step in range(2):
        logger.logkv("step", step)
        logger.logkv_mean("loss", 1.0)
        logger.logkv_mean("loss", 3.0)
        if step == 1:
            logger.logkv("extra", 5)
        assert logger.dumpkvs()["loss"] == 2.0
    logger.log("hello")
    out = capsys.readouterr().out
    assert f"Logging to {folder}" in out and "| loss  | 2" in out and "hello" in out
    rows = open(os.path.join(folder, "progress.csv")).read().splitlines()
    assert rows == ["loss,step,extra", "2.0,0,", "2.0,1,5"]
    lines = [json.loads(line) for line in open(os.path.join(folder, "progress.json"))]
    assert lines[1] == {"step": 1, "loss": 2.0, "extra": 5}
    assert "hello" in open(os.path.join(folder, "log.txt")).read()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(folder, "tb")))
    assert logger.get_dir() == folder


def test_logger_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    folder = logger.configure(format_strs=[], script="image_train")
    assert folder.startswith(os.path.join("runs", "image_train-"))
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "env"))
    monkeypatch.setenv("OPENAI_LOG_FORMAT", "csv")
    assert logger.configure() == str(tmp_path / "env")
    logger.logkv("a", 1)
    logger.dumpkvs()
    assert os.listdir(tmp_path / "env") == ["progress.csv"]
    monkeypatch.setenv("RANK", "1")  # other ranks write nothing unless asked
    assert logger.configure(dir=str(tmp_path / "rank1")) and os.listdir(tmp_path / "rank1") == []
    logger.configure(dir=str(tmp_path / "rank1b"), all_ranks=True)
    logger.logkv("a", 1)
    logger.dumpkvs()
    assert os.listdir(tmp_path / "rank1b") == ["progress-rank001.csv"]
