"""Reading NVlabs' network pickles safely (guided_diffusion/loading/nvlabs.py). The pickles are built here with the record
structure of NVlabs' torch_utils.persistence (a stand-in reconstruct function, no NVlabs code), plus malicious
ones that must be refused without side effects."""

from __future__ import annotations

import collections
import json
import os
import shutil
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm2
from guided_diffusion.loading import nvlabs

SMALL = dict(img_resolution=8, img_channels=3, label_dim=4, model_channels=16, channel_mult=[1, 2], num_blocks=1,
             attn_resolutions=[4], channels_per_head=16, logvar_channels=8, use_fp16=False)


class _Persistent:
    """Pickles as NVlabs' persistence records do: _reconstruct_persistent_obj(meta) with the module's source."""

    def __init__(self, module: torch.nn.Module, init_kwargs: dict | None = None):
        self.module, self.init_kwargs = module, init_kwargs

    def __reduce__(self):
        m = self.module
        state = {"training": m.training, "_parameters": collections.OrderedDict(m._parameters),
                 "_buffers": collections.OrderedDict(m._buffers),
                 "_modules": collections.OrderedDict((k, _Persistent(v)) for k, v in m._modules.items()),
                 "_init_args": (), "_init_kwargs": self.init_kwargs or {}}
        meta = dict(type="class", version=6, module_src="raise SystemExit('recorded source must never run')",
                    class_name=type(m).__name__, state=state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


class _Loss:
    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="", class_name="EDM2Loss",
                    state={"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5})
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


@pytest.fixture
def stand_ins(monkeypatch):
    """Modules named as NVlabs' so pickle records the same globals; removed after the test."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the stand-in is only for writing")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, module in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                         ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, module)
    return util


def _write(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def test_a_snapshot_loads_as_this_projects_network(tmp_path, stand_ins):
    torch.manual_seed(0)
    net = edm2.Precond(**SMALL)
    with torch.no_grad():
        net.unet.out_gain.fill_(0.7)
        for block in net.unet.enc.values():
            if isinstance(block, edm2.Block):
                block.emb_gain.fill_(0.3)
    net.eval()
    path = _write(tmp_path / "snapshot.pkl", {"ema": _Persistent(net, SMALL), "loss_fn": _Loss(),
                                              "dataset_kwargs": stand_ins.EasyDict(resolution=8)})
    loaded = nvlabs.load_network_pickle(path)
    assert isinstance(loaded, edm2.Precond) and not loaded.training
    assert loaded.unet.emb_label.weight.shape == (32, 4) and loaded.label_dim == 4
    want, got = net.state_dict(), loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 12.0])
    labels = torch.eye(4)[[1, 3]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"has no 'net' entry \(it has ema, loss_fn, dataset_kwargs\)"):
        nvlabs.load_network_pickle(path, key="net")
    with pytest.raises(ValueError, match="holds a EDM2Loss; networks read here: Precond, EDMPrecond"):
        nvlabs.load_network_pickle(path, key="loss_fn")


class _Malicious:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call, name", [(os.system, "system"), (eval, "builtins.eval"), (exec, "builtins.exec"),
                                        (getattr, "builtins.getattr")])
def test_any_other_global_is_refused_without_side_effects(tmp_path, stand_ins, call, name):
    marker = tmp_path / "pwned"
    argument = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    args = (argument,) if call is not getattr else (_Malicious(__import__, "os"), "system")
    path = _write(tmp_path / "evil.pkl", {"ema": _Malicious(call, *args)})
    with pytest.raises(ValueError) as info:
        nvlabs.load_network_pickle(path)
    message = str(info.value)
    assert "refused the global" in message and name in message and "\n" not in message
    assert not marker.exists()


def test_records_that_do_not_fit_their_class_are_refused(tmp_path, stand_ins):
    torch.manual_seed(0)
    net = edm2.Precond(**SMALL)
    wrong = dict(SMALL, model_channels=32)  # the recorded arguments disagree with the tensors
    path = _write(tmp_path / "wrong.pkl", {"ema": _Persistent(net, wrong)})
    with pytest.raises(ValueError, match="does not match its tensors"):
        nvlabs.load_network_pickle(path)
    with pytest.raises(FileNotFoundError, match="missing.pkl not found"):
        nvlabs.load_network_pickle(str(tmp_path / "missing.pkl"))
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not readable as an NVlabs network pickle"):
        nvlabs.load_network_pickle(str(tmp_path / "junk.pkl"))


def test_image_and_classifier_sample_run_nvlabs_pickles(tmp_path, stand_ins, trained):
    """image_sample.py with an EDM2 pickle (and an unconditional pickle as its guide), classifier_sample.py with
    an ADM classifier guiding it; the original samplers are refused with the ones to use."""
    from launch import read_samples, run_main

    torch.manual_seed(0)
    conditional = edm2.Precond(**{**SMALL, "img_resolution": 16})
    unconditional = edm2.Precond(**{**SMALL, "img_resolution": 16, "label_dim": 0})
    for net in (conditional, unconditional):
        with torch.no_grad():
            net.unet.out_gain.fill_(1.0)
    main = _write(tmp_path / "main.pkl", {"ema": _Persistent(conditional, {**SMALL, "img_resolution": 16})})
    guide = _write(tmp_path / "guide.pkl", {"ema": _Persistent(unconditional, {**SMALL, "img_resolution": 16,
                                                                                  "label_dim": 0})})
    common = ["--model_path", main, "--num_samples", 3, "--batch_size", 2, "--classes", "1-3", "--sampler", "heun",
              "--steps", 3, "--progress", False]
    outputs = {}
    for name, extra, script in (("plain", [], "image_sample.py"),
                                ("guided", ["--guide_model_path", guide, "--guide_scale", 2], "image_sample.py"),
                                ("classifier", ["--classifier_path", trained["classifier"], "--classifier_scale", 5],
                                 "classifier_sample.py")):
        code, stderr = run_main(script, [*common, "--log_dir", tmp_path / name, *extra])
        assert code == 0, stderr
        samples = read_samples(tmp_path / name / "samples_3x16x16x3.npz")
        assert samples["arr_1"].tolist() == [1, 2, 3]
        outputs[name] = samples["arr_0"].astype(int)
    assert abs(outputs["guided"] - outputs["plain"]).mean() > 0.5
    assert abs(outputs["classifier"] - outputs["plain"]).mean() > 0.5
    code, stderr = run_main("image_sample.py", [*common[:2], "--use_ddim", True, "--log_dir", tmp_path / "ddim"])
    assert code == 2 and "use --sampler euler, heun, edm_stochastic, dpmpp_2m" in stderr and "\n" not in stderr


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_convert_checkpoint_writes_a_file_the_scripts_load(tmp_path, stand_ins, suffix):
    from launch import read_samples, run_main

    torch.manual_seed(0)
    kwargs = {**SMALL, "img_resolution": 16}
    net = edm2.Precond(**kwargs)
    with torch.no_grad():
        net.unet.out_gain.fill_(1.0)
    source = _write(tmp_path / "snapshot.pkl", {"ema": _Persistent(net, kwargs)})
    out = tmp_path / "converted" / f"edm2{suffix}"
    code, stderr = run_main("convert_checkpoint.py", [source, out])
    assert code == 0, stderr
    assert nvlabs.is_converted(str(out))
    loaded = nvlabs.load_network(str(out))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    images = {}
    for path in (source, out):
        folder = tmp_path / f"samples{os.path.splitext(str(path))[1]}"
        code, stderr = run_main("image_sample.py", ["--model_path", path, "--num_samples", 2, "--classes", "2",
                                                    "--sampler", "euler", "--steps", 3, "--log_dir", folder,
                                                    "--progress", False])
        assert code == 0, stderr
        images[path] = read_samples(folder / "samples_2x16x16x3.npz")["arr_0"]
    np.testing.assert_array_equal(images[source], images[out])
    # EDM/EDM2 do not clip D: that is the default for these networks.
    code, stderr = run_main("image_sample.py", ["--model_path", source, "--num_samples", 2, "--classes", "2",
                                                "--sampler", "euler", "--steps", 3, "--log_dir", tmp_path / "noclip",
                                                "--progress", False, "--clip_denoised", False])
    assert code == 0, stderr
    np.testing.assert_array_equal(read_samples(tmp_path / "noclip" / "samples_2x16x16x3.npz")["arr_0"], images[source])
    # A second network converted into the same folder keeps the first one loadable.
    small = edm2.Precond(**{**kwargs, "model_channels": 32})
    second = _write(tmp_path / "second.pkl", {"ema": _Persistent(small, {**kwargs, "model_channels": 32})})
    code, stderr = run_main("convert_checkpoint.py", [second, tmp_path / "converted" / f"second{suffix}"])
    assert code == 0, stderr
    assert nvlabs.load_network(str(out)).unet.enc["16x16_conv"].weight.shape[0] == 16
    assert nvlabs.load_network(str(tmp_path / "converted" / f"second{suffix}")).unet.enc["16x16_conv"].weight.shape[0] == 32
    code, stderr = run_main("convert_checkpoint.py", [source, tmp_path / "x.bin"])
    assert code == 2 and "must end in .pt or .safetensors" in stderr
    for script, args, message in (
            ("cascade_sample.py", ["--base_model_path", source, "--sr_model_path", source],
             f"--base_model_path {source} is an EDM/EDM2 network: sample it with image_sample.py"),
            ("super_res_sample.py", ["--model_path", source, "--base_samples", source],
             f"--model_path {source} is an EDM/EDM2 network, not an upsampler")):
        code, stderr = run_main(script, [*args, "--log_dir", tmp_path / "bad"])
        assert code == 2 and message in stderr and "\n" not in stderr, stderr


def test_converted_networks_keep_their_record_in_networks_json(tmp_path, stand_ins):
    """args.json has one layout (a training run's flags): converted networks are listed in networks.json, so they
    can sit beside a run's args.json without touching it; folders converted into an args.json earlier still load."""
    from launch import run_main

    torch.manual_seed(0)
    kwargs = {**SMALL, "img_resolution": 16}
    net = edm2.Precond(**kwargs)
    source = _write(tmp_path / "snapshot.pkl", {"ema": _Persistent(net, kwargs)})
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text('{"arch": "edm2", "model_channels": 16}')
    flags_before = (run / "args.json").read_bytes()
    code, stderr = run_main("convert_checkpoint.py", [source, run / "net.pt"])
    assert code == 0, stderr
    assert (run / "args.json").read_bytes() == flags_before
    record = json.loads((run / "networks.json").read_text())
    assert record == {"nvlabs_networks": {"net.pt": {"class": "Precond", "init_kwargs": record["nvlabs_networks"]["net.pt"]["init_kwargs"]}}}
    assert nvlabs.is_converted(str(run / "net.pt")) and not nvlabs.is_converted(str(run / "model000100.pt"))
    expected = nvlabs.load_network(str(run / "net.pt")).state_dict()
    # A folder written before networks.json: the record in an args.json of its own.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(run / "net.pt", old / "net.pt")
    (old / "args.json").write_text(json.dumps(record))
    loaded = nvlabs.load_network(str(old / "net.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    # A damaged record: a one-line error naming it.
    (run / "networks.json").write_text("{not json")
    code, stderr = run_main("image_sample.py", ["--model_path", run / "net.pt", "--num_samples", 1,
                                                "--log_dir", tmp_path / "samples"])
    assert code == 2 and f"{run / 'networks.json'}: not a record of converted networks" in stderr, stderr
    assert "\n" not in stderr.strip()


def test_an_edm_snapshot_loads_too(tmp_path, stand_ins):
    from guided_diffusion.networks import edm

    kwargs = dict(img_resolution=8, img_channels=3, label_dim=4, model_type="DhariwalUNet", model_channels=32,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    torch.manual_seed(0)
    net = edm.EDMPrecond(**kwargs).eval()
    path = _write(tmp_path / "edm.pkl", {"ema": _Persistent(net, kwargs)})
    loaded = nvlabs.load_network_pickle(path)
    assert isinstance(loaded, edm.EDMPrecond)
    x, sigma, labels = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 20.0]), torch.eye(4)[[0, 2]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)


def test_edm2_presets_resolve_to_files_and_name_the_download(tmp_path, stand_ins):
    from launch import run_main

    code, stderr = run_main("image_sample.py", ["--preset", "edm2-img64-s-autog-fid", "--model_dir", tmp_path])
    assert code == 2 and "\n" not in stderr
    assert (f"{tmp_path}/edm2-img64-s-1073741-0.045.pkl not found: download https://nvlabs-fi-cdn.nvidia.com/edm2/"
            "posthoc-reconstructions/edm2-img64-s-1073741-0.045.pkl into --model_dir") in stderr
    code, stderr = run_main("image_sample.py", ["--preset", "edm2-img64-q-fid"])
    assert code == 2 and "--preset 'edm2-img64-q-fid': choose one of edm2-img512-xs-fid" in stderr
    assert len(nvlabs.EDM2_PRESETS) == 36 and nvlabs.EDM2_PRESETS["edm2-img512-xxl-autog-fid"] == (
        "edm2-img512-xxl-0939524-0.075.pkl", "edm2-img512-m-0268435-0.155.pkl", 2.05)
    latent = edm2.Precond(**{**SMALL, "img_channels": 4})
    path = _write(tmp_path / "latent.pkl", {"ema": _Persistent(latent, {**SMALL, "img_channels": 4})})
    code, stderr = run_main("image_sample.py", ["--model_path", path, "--vae", tmp_path / "no_vae", "--log_dir",
                                                tmp_path / "bad"])  # latents: decoded by a VAE (here a missing one)
    assert code == 2 and stderr == (f"image_sample.py: error: --vae {tmp_path / 'no_vae'}: no such directory "
                                    "(expected a directory written by AutoencoderKL.save_pretrained, or a hub name "
                                    "such as stabilityai/sd-vae-ft-mse)")
    for name in ("edm2-img64-s-1073741-0.045.pkl", "edm2-img64-xs-0134217-0.110.pkl"):
        (tmp_path / name).touch()
    flags = nvlabs.resolve_preset("edm2-img64-s-autog-fid", str(tmp_path))
    assert flags == dict(model_path=str(tmp_path / "edm2-img64-s-1073741-0.045.pkl"),
                         guide_model_path=str(tmp_path / "edm2-img64-xs-0134217-0.110.pkl"), guide_scale=1.70,
                         sampler="heun", steps=32, clip_denoised=False)
