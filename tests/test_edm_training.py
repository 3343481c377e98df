"""Training with EDM's and EDM2's recipes (--objective edm, --arch edm2): preconditioning, losses, schedules,
forced weight normalization, power-function EMA snapshots, and the scripts' round trips."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm2
from guided_diffusion.networks.sigma_space import ADMPrecond
from guided_diffusion.processes.objectives import EDMConditioning, EDMLoss, LogNormalSigma, edm2_learning_rate
from guided_diffusion.script_util import create_model
from guided_diffusion.train_util import TrainLoop

from launch import make_image_folder, read_samples, run_main, run_script, train_straight_and_killed

TINY_ADM = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions '' "
            "--class_cond True --num_classes 4 --class_dropout_prob 0.2").split()
TINY_EDM2 = ("--arch edm2 --image_size 16 --model_channels 16 --channel_mult 1,2 --num_blocks 1 "
             "--attn_resolutions 8 --class_cond True --num_classes 4 --class_dropout_prob 0.2").split()


def _flags(flags: list[str]) -> list[str]:
    return ["" if f == "''" else f for f in flags]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=16, size=16)


def _adm_precond(class_cond: bool = True) -> ADMPrecond:
    torch.manual_seed(0)
    model = create_model(16, 32, 1, channel_mult="1,2", attention_resolutions="", class_cond=class_cond,
                         num_classes=5)
    for p in model.parameters():  # the zero-initialized output layer would hide the network
        torch.nn.init.normal_(p, std=0.05)
    return ADMPrecond(model, sigma_data=0.5).eval()


def _tiny_edm2(label_dim: int = 4) -> edm2.Precond:
    torch.manual_seed(0)
    return edm2.Precond(16, 3, label_dim, use_fp16=False, model_channels=16, channel_mult=[1, 2], num_blocks=1,
                        attn_resolutions=[8])


# ----- preconditioning, losses and schedules ---------------------------------------------------------------

def test_preconditioning_limits():
    """c_skip -> 1 and c_out -> 0 as sigma -> 0 (D is the input); c_skip -> 0 and c_out -> sigma_data as
    sigma -> inf (D is sigma_data times the network's output on c_in x)."""
    net = _adm_precond()
    x = torch.randn(3, 3, 16, 16) * 0.5
    y = torch.tensor([0, 1, 4])
    with torch.no_grad():
        small = net(x, torch.full((3,), 1e-6), y)
        torch.testing.assert_close(small, x, atol=1e-5, rtol=0)
        sigma = 1e7  # c_skip x is then below 1e-7
        noisy = x + sigma * torch.randn_like(x)
        big = net(noisy, torch.full((3,), sigma), y)
        c_in = 1 / math.sqrt(sigma**2 + 0.25)
        raw = net.model(noisy * c_in, torch.full((3,), math.log(sigma) / 4), y=y)
        torch.testing.assert_close(big, 0.5 * raw, atol=1e-4 * float(big.abs().max()), rtol=0)
        assert (big - noisy).abs().mean() > 1  # D is not the input at large sigma


def test_networks_and_classifiers_in_sigma_space_see_the_same_c_in_and_c_noise():
    """c_in = 1 / sqrt(sigma_data^2 + sigma^2) and c_noise = ln(sigma) / 4 have one home (edm.input_scale,
    edm.noise_label): the networks' preconditioning (NVlabs' expression, bit for bit) and a classifier trained with
    --objective edm (EDMConditioning) compute the same bits, in float32 and float64, over sigma 1e-3 .. 1e3."""
    from guided_diffusion.networks.edm import input_scale, noise_label, preconditioning

    for dtype in (torch.float32, torch.float64):
        sigma = torch.logspace(-3, 3, 4001, dtype=dtype)
        assert torch.equal(input_scale(sigma, 0.5), 1 / (0.5**2 + sigma**2).sqrt())
        assert torch.equal(noise_label(sigma), sigma.log() / 4)
        for sigma_data in (0.5, 1.0, 0.3):
            conditioning = EDMConditioning(sigma_data)
            assert torch.equal(conditioning.input_scale(sigma), input_scale(sigma, sigma_data))
            assert torch.equal(conditioning.noise_label(sigma), noise_label(sigma))
    sigma = torch.logspace(-3, 3, 4001)
    _, _, _, _, c_in, c_noise = preconditioning(torch.zeros(len(sigma), 1, 1, 1), sigma, None, 0, 0.5)
    assert torch.equal(c_in.flatten(), EDMConditioning(0.5).input_scale(sigma))
    assert torch.equal(c_noise, EDMConditioning(0.5).noise_label(sigma))


def test_edm_loss_weight_and_noise_distribution():
    loss = EDMLoss(sigma_data=0.5, p_mean=-1.2, p_std=1.2)
    sigma = torch.tensor([0.1, 0.5, 2.0])
    torch.testing.assert_close(loss.weight(sigma), (sigma**2 + 0.25) / (0.5 * sigma) ** 2)
    torch.manual_seed(0)
    draws = loss.noise.sample(200000).log()
    assert abs(float(draws.mean()) + 1.2) < 0.01 and abs(float(draws.std()) - 1.2) < 0.01
    quartiles = LogNormalSigma(-1.2, 1.2).quartile(torch.tensor([math.exp(-1.2 - 2), math.exp(-1.2 - 0.1),
                                                                  math.exp(-1.2 + 0.1), math.exp(-1.2 + 2)]))
    assert quartiles.tolist() == [0, 1, 2, 3]
    cond = EDMConditioning(0.5)
    torch.testing.assert_close(cond.noise_label(torch.tensor([math.e**4])), torch.tensor([1.0]))
    torch.testing.assert_close(cond.input_scale(torch.tensor([0.0])), torch.tensor([2.0]))


def test_edm2_learning_rate_schedule():
    assert edm2_learning_rate(0, 1e-2) == 1e-2  # no schedule
    assert edm2_learning_rate(0, 1e-2, 1000, 100) == 0  # ramp-up starts at 0
    assert edm2_learning_rate(50, 1e-2, 1000, 100) == pytest.approx(5e-3)
    assert edm2_learning_rate(1000, 1e-2, 1000, 100) == pytest.approx(1e-2)
    assert edm2_learning_rate(4000, 1e-2, 1000, 100) == pytest.approx(5e-3)  # 1 / sqrt(4)
    assert edm2_learning_rate(16000, 1e-2, 1000, 0) == pytest.approx(2.5e-3)


class _Batches:
    def __init__(self, n: int = 4, classes: int = 4):
        torch.manual_seed(1)
        self.x = torch.rand(n, 3, 16, 16) * 2 - 1
        self.y = torch.arange(n) % classes

    def __next__(self):
        return self.x, {"y": self.y}


def test_edm2_training_step_keeps_weights_on_the_sphere_and_follows_the_schedule(tmp_path):
    from guided_diffusion import logger

    logger.configure(dir=str(tmp_path), format_strs=[])
    net = _tiny_edm2()
    loop = TrainLoop(model=net, diffusion=None, data=_Batches(), batch_size=4, microbatch=-1, lr=1e-2,
                     ema_rate="0.9", log_interval=100, save_interval=100, resume_checkpoint="", max_steps=3,
                     objective=EDMLoss(0.5, -0.8, 1.6, learned_uncertainty=True), adam_betas=(0.9, 0.99),
                     lr_ref_images=8, lr_rampup_images=8, label_dropout=0.5, null_label=4)
    assert loop.opt.param_groups[0]["betas"] == (0.9, 0.99) and loop.force_weight_norm
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lrs = []
    for _ in range(3):
        loop._set_lr()
        lrs.append(loop.opt.param_groups[0]["lr"])
        loop.run_step()
        loop._count_images()
        loop.step += 1
    assert lrs == pytest.approx([0.0, 1e-2 * 4 / 8, 1e-2 / math.sqrt(8 / 8)])  # nimg 0, 4, 8
    layers = [m for m in net.modules() if isinstance(m, edm2.MPConv)]
    assert len(layers) > 5
    moved = 0
    for layer in layers:
        rms = layer.weight.detach().flatten(1).norm(dim=1) / math.sqrt(layer.weight[0].numel())
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=2e-4, rtol=0)  # unit RMS up to the eps 1e-4
        name = next(n for n, m in net.named_modules() if m is layer) + ".weight"
        moved += not torch.equal(before[name], layer.weight.detach())
    assert moved > len(layers) // 2  # the optimizer did move them


def test_label_dropout_reaches_edm2_networks_as_the_zero_label():
    from guided_diffusion.processes.denoiser import net_labels

    net = _tiny_edm2()
    rows = net_labels(net, torch.tensor([0, 3, 4]))
    assert rows.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert net_labels(_adm_precond(), torch.tensor([4])).tolist() == [4]
    assert net_labels(_adm_precond(class_cond=False), torch.tensor([4])) is None


# ----- scripts --------------------------------------------------------------------------------------------

def _train(images, log_dir, flags, *extra):
    code, stderr = run_main("image_train.py", ["--data_dir", images, "--log_dir", log_dir, "--batch_size", 4,
                                               "--max_steps", 4, "--save_interval", 4, "--log_interval", 2,
                                               "--ema_rate", 0.9, "--lr", 1e-3, *_flags(flags), *extra])
    assert code == 0, stderr


def _sample(model_path, out, *extra, script="image_sample.py"):
    code, stderr = run_main(script, ["--model_path", model_path, "--num_samples", 4, "--batch_size", 4,
                                     "--log_dir", out, "--progress", False, *extra])
    assert code == 0, stderr
    return read_samples(os.path.join(out, "samples_4x16x16x3.npz"))


def test_objective_edm_train_and_sample_round_trip(images, tmp_path):
    """--objective edm: args.json records it, the loss is logged by noise-level quartile, every sigma-space
    sampler samples the checkpoint with CFG, ddim is refused in one line, an EDM-objective classifier guides it."""
    run = tmp_path / "edm"
    _train(images, run, TINY_ADM, "--objective", "edm")
    args = json.load(open(run / "args.json"))
    assert (args["objective"], args["sigma_data"], args["p_mean"], args["p_std"]) == ("edm", 0.5, -1.2, 1.2)
    header = open(run / "progress.csv").read().splitlines()[0].split(",")
    assert {"loss", "mse", "loss_q0", "loss_q3"} <= set(header) and "vb" not in header
    unguided = _sample(run / "model000004.pt", tmp_path / "s1", "--sampler", "heun", "--steps", 4,
                       "--classes", "1")
    guided = _sample(run / "model000004.pt", tmp_path / "s2", "--sampler", "heun", "--steps", 4,
                     "--classes", "1", "--cfg_scale", 3)
    assert unguided["arr_0"].shape == (4, 16, 16, 3) and unguided["arr_1"].tolist() == [1, 1, 1, 1]
    assert np.abs(unguided["arr_0"].astype(float) - guided["arr_0"]).mean() > 0.5
    for sampler, extra in (("euler", []), ("dpmpp_2m", []), ("edm_stochastic", ["--s_churn", 10])):
        _sample(run / "model000004.pt", tmp_path / sampler, "--sampler", sampler, "--steps", 3, *extra)
    code, stderr = run_main("image_sample.py", ["--model_path", run / "model000004.pt", "--sampler", "ddim",
                                                "--num_samples", 2, "--log_dir", tmp_path / "bad"])
    assert code == 2 and "this model is a denoiser at continuous sigma" in stderr and "\n" not in stderr

    classifier = tmp_path / "classifier"
    code, stderr = run_main("classifier_train.py", [
        "--data_dir", images, "--log_dir", classifier, "--objective", "edm", "--iterations", 4, "--batch_size", 4,
        "--save_interval", 4, "--log_interval", 2, "--image_size", 16, "--classifier_width", 32,
        "--classifier_depth", 1, "--classifier_channel_mult", "1,2", "--classifier_attention_resolutions", "",
        "--classifier_pool", "adaptive", "--num_classes", 4])
    assert code == 0, stderr
    assert json.load(open(classifier / "args.json"))["objective"] == "edm"
    assert "train_loss_q3" in open(classifier / "progress.csv").read().splitlines()[0]
    common = ["--classifier_path", classifier / "model000004.pt", "--sampler", "heun", "--steps", 4, "--classes", 2]
    plain = _sample(run / "model000004.pt", tmp_path / "c0", *common, "--classifier_scale", 0,
                    script="classifier_sample.py")
    pushed = _sample(run / "model000004.pt", tmp_path / "c1", *common, "--classifier_scale", 30,
                     script="classifier_sample.py")
    assert np.abs(plain["arr_0"].astype(float) - pushed["arr_0"]).mean() > 0.5


def test_arch_edm2_train_reconstruct_sample_and_convert(images, tmp_path):
    """--arch edm2 with label dropout and power-function EMAs every --phema_interval images: the checkpoint,
    a reconstruction and the converted file sample with CFG; EDM2's Adam betas and lr schedule are logged."""
    run = tmp_path / "edm2"
    _train(images, run, TINY_EDM2, "--phema_stds", "0.05,0.10", "--phema_interval", 8, "--lr_rampup_images", 8,
           "--lr", 1e-2)
    args = json.load(open(run / "args.json"))
    assert (args["arch"], args["objective"], args["model_channels"]) == ("edm2", "edm2", 16)
    index = json.load(open(run / "phema.json"))
    assert sorted({e["nimg"] for e in index.values()}) == [8, 16] and len(index) == 4
    opt = torch.load(run / "opt000004.pt", weights_only=True)
    assert tuple(opt["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.99)
    assert "lr" in open(run / "progress.csv").read().splitlines()[0].split(",")
    code, stderr = run_main("reconstruct_ema.py", ["--run_dir", run, "--sigma_rel", "0.07"])
    assert code == 0, stderr
    a = _sample(run / "phema_recon_0.070_000004.pt", tmp_path / "r", "--sampler", "heun", "--steps", 4,
                "--cfg_scale", 2, "--classes", 3)
    assert a["arr_0"].shape == (4, 16, 16, 3)
    code, stderr = run_main("convert_checkpoint.py", [run / "model000004.pt", tmp_path / "converted" / "edm2.pt"])
    assert code == 0, stderr
    b = _sample(run / "model000004.pt", tmp_path / "m", "--sampler", "heun", "--steps", 4, "--classes", 3)
    c = _sample(tmp_path / "converted" / "edm2.pt", tmp_path / "c", "--sampler", "heun", "--steps", 4,
                "--classes", 3)
    assert np.array_equal(b["arr_0"], c["arr_0"])


@pytest.mark.parametrize("flags, message", [
    (["--objective", "edm2"], "--objective edm2 needs the learned uncertainty of an EDM2 network"),
    (["--objective", "edm", "--learn_sigma", "True"], "--learn_sigma True does not apply"),
    (["--arch", "edm2", "--objective", "adm"], "--arch edm2 trains in sigma space"),
    (["--arch", "edm2", "--edm2_preset", "xxl"], "--edm2_preset 'xxl': choose one of xs, s, m, l, xl"),
    (["--arch", "edm2", "--use_fp16", "True"], "use --use_bf16"),
    (["--arch", "vit"], "--arch 'vit': choose one of adm, edm2"),
    (["--adam_betas", "0.9"], "--adam_betas '0.9': expected two numbers in [0, 1)"),
    (["--phema_interval", "8"], "--phema_interval 8: a positive image count, with --phema_stds"),
])
def test_bad_recipe_flags(images, tmp_path, flags, message):
    code, stderr = run_main("image_train.py", ["--data_dir", images, "--log_dir", tmp_path / "bad", "--max_steps", 1,
                                               "--image_size", 16, "--channel_mult", "1,2", *flags])
    assert code == 2 and message in stderr and "\n" not in stderr


def test_edm2_preset_sets_width_and_dropout_unless_given(images, tmp_path):
    from guided_diffusion.networks.sigma_space import architecture_defaults, edm_flag_layer
    import argparse

    args = argparse.Namespace(**{**architecture_defaults(), "arch": "edm2", "edm2_preset": "m"})
    assert edm_flag_layer(args, set()) == {"model_channels": 256, "dropout": 0.1, "objective": "edm2"}
    args = argparse.Namespace(**{**architecture_defaults(), "arch": "edm2", "edm2_preset": "m", "model_channels": 64})
    assert edm_flag_layer(args, {"model_channels"}) == {"dropout": 0.1, "objective": "edm2"}  # the given width wins
    assert args.model_channels == 64 and args.objective == ""  # the namespace is read, never changed


def test_super_res_objective_edm_round_trip(tmp_path):
    images = make_image_folder(str(tmp_path / "images"), count=4, size=64)
    run = tmp_path / "sr"
    code, stderr = run_main("super_res_train.py", [
        "--data_dir", images, "--log_dir", run, "--large_size", 64, "--small_size", 16, "--num_channels", 32,
        "--num_res_blocks", 1, "--attention_resolutions", "", "--batch_size", 2, "--max_steps", 2,
        "--save_interval", 2, "--ema_rate", 0.9, "--objective", "edm"])
    assert code == 0, stderr
    base = tmp_path / "base.npz"
    np.savez(base, np.random.RandomState(0).randint(0, 255, (2, 16, 16, 3), dtype=np.uint8))
    code, stderr = run_main("super_res_sample.py", ["--model_path", run / "ema_0.9_000002.pt", "--base_samples",
                                                    base, "--num_samples", 2, "--sampler", "heun", "--steps", 3,
                                                    "--log_dir", tmp_path / "up", "--progress", False])
    assert code == 0, stderr
    assert read_samples(tmp_path / "up" / "samples_2x64x64x3.npz")["arr_0"].shape == (2, 64, 64, 3)


@pytest.mark.slow
def test_sigkill_then_auto_resume_gives_the_same_snapshot_series(images, tmp_path):
    """An EDM2 run killed after its first checkpoint and resumed with --resume_checkpoint auto writes the same
    power-function EMA snapshots (every 8 images) as an uninterrupted run."""
    def args(log_dir):
        return ["--data_dir", images, "--log_dir", log_dir, "--batch_size", 4, "--max_steps", 10,
                "--save_interval", 2, "--log_interval", 2, "--lr", 1e-2, "--phema_stds", "0.05,0.10",
                "--phema_interval", 8, "--resume_checkpoint", "auto", *_flags(TINY_EDM2)]

    straight, killed = train_straight_and_killed(args, tmp_path, "model000010.pt")
    want = json.load(open(straight / "phema.json"))
    assert json.load(open(killed / "phema.json")) == want and len(want) == 10  # 5 snapshots of 2 widths
    for name in want:
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name
