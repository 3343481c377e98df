"""Real NVlabs snapshots and crafted pickles through guided_diffusion.loading.nvlabs.

tests/fixtures/nvlabs holds two EDM2 snapshots (RGB and latent) and an EDM snapshot written by NVlabs' own
training code (tests/make_nvlabs_snapshots.py, run on their repositories), and what NVlabs' code computes after
its own pickle.load of the same files. Here they are read with this project's reader only. The crafted pickles use stand-ins named
as NVlabs' modules (test_nvlabs.py's) and must each end in one ValueError naming the file.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import pickletools
import sys
import time

import numpy as np
import pytest
import torch

from guided_diffusion.networks import edm
from guided_diffusion.networks import edm2
from guided_diffusion.loading import nvlabs
from guided_diffusion.loading.nvlabs_pickle import Record

from launch import read_samples, run_main
from reference import REFERENCE
from test_nvlabs import SMALL, _Persistent, _write, stand_ins  # noqa: F401 - stand_ins is a fixture

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "nvlabs")
# NVlabs' code computes with the float16 weights as stored, rounding gain / sqrt(fan_in) in float16; so does this
# project's network with them: measured 5.0e-7 (RGB) and 3.8e-7 (latent) of max |D| apart.
EDM2_TOLERANCE = 1e-5
# A float32 copy of the same weights rounds those gains differently: measured 4.0e-4 and 1.4e-4 of max |D|, within
# float16's precision (its relative rounding step is 9.8e-4).
FLOAT32_TOLERANCE = 1e-3


def _fixture(kind: str) -> tuple[str, dict]:
    with np.load(os.path.join(FIXTURES, f"{kind}_outputs.npz")) as data:
        outputs = {k: data[k] for k in data.files}
    outputs["records"] = json.loads(str(outputs["records"]))
    return os.path.join(FIXTURES, f"{kind}_snapshot.pkl"), outputs


def _tensor(outputs: dict, name: str) -> torch.Tensor:
    return torch.from_numpy(outputs[name])


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("kind", ["edm2", "edm2_latent"])
def test_an_edm2_snapshot_gives_what_nvlabs_code_computes_from_it(kind):
    path, out = _fixture(kind)
    net = nvlabs.load_network_pickle(path)
    assert isinstance(net, edm2.Precond) and not net.training and out["ema_dtype"] == "torch.float16"
    assert {p.dtype for p in net.parameters()} == {torch.float16}  # as stored, as NVlabs' code runs it
    res = net.img_resolution
    assert list(net.unet.enc) == [f"{res}x{res}_conv", f"{res}x{res}_block0", f"{res // 2}x{res // 2}_down",
                                  f"{res // 2}x{res // 2}_block0"]
    assert net.unet.dec[f"{res // 2}x{res // 2}_in0"].num_heads == 4  # attention, 8 channels per head
    x, sigma, labels = (_tensor(out, k) for k in ("x", "sigma", "labels"))
    with torch.no_grad():
        denoised, logvar = net(x, sigma, labels, return_logvar=True)
        assert _relative_error(denoised, _tensor(out, "D")) <= EDM2_TOLERANCE
        assert _relative_error(logvar, _tensor(out, "logvar")) <= EDM2_TOLERANCE
        assert _relative_error(net.float()(x, sigma, labels), _tensor(out, "D")) <= FLOAT32_TOLERANCE
    # The network part matters at every noise level: D is far from c_skip x alone.
    c_skip = 0.25 / (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25)
    assert float((_tensor(out, "D") - c_skip * x).abs().mean()) > 0.1


def test_an_edm_snapshot_gives_what_nvlabs_code_computes_from_it():
    path, out = _fixture("edm")
    net = nvlabs.load_network_pickle(path)
    assert isinstance(net, edm.EDMPrecond) and net.model.map_augment is not None and out["ema_dtype"] == "torch.float32"
    x, sigma, labels, augment = (_tensor(out, k) for k in ("x", "sigma", "labels", "augment_labels"))
    with torch.no_grad():
        torch.testing.assert_close(net(x, sigma, labels), _tensor(out, "D"), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(x, sigma, labels, augment_labels=augment), _tensor(out, "D_augment"),
                                   rtol=1e-5, atol=1e-6)
    assert float((_tensor(out, "D_augment") - _tensor(out, "D")).abs().max()) > 0.1  # the augment weights count


def _plain(value):
    """JSON's reading of a value (tuples and arrays become lists), to compare with what NVlabs' code saw."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist()))


@pytest.mark.parametrize("kind", ["edm2", "edm2_latent", "edm"])
def test_the_other_records_are_read_as_data_and_nothing_is_constructed(kind):
    path, out = _fixture(kind)
    seen = out["records"]
    before = set(sys.modules)
    data = nvlabs.read_pickle(path)
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("training", "torch_utils", "dnnlib")}
    assert list(data) == (["encoder", "dataset_kwargs", "loss_fn", "ema"] if kind != "edm"
                          else ["ema", "loss_fn", "augment_pipe", "dataset_kwargs"])
    assert type(data).__name__ == "EasyDict" if kind != "edm" else type(data) is dict
    records = {k: v for k, v in data.items() if isinstance(v, Record)}
    assert {k: v.class_name for k, v in records.items()} == {k: t for k, t in seen["types"].items() if k in records}
    assert all(type(v) is Record for v in records.values())  # names and states, no object of the file's classes
    for key in ("loss_fn", "encoder", "augment_pipe"):
        if key in seen:
            assert _plain(records[key].state) == seen[key]
    assert dict(data["dataset_kwargs"]) == seen["dataset_kwargs"]
    assert _plain(records["ema"].state["_init_kwargs"]) == seen["ema_init_kwargs"]
    if kind == "edm2_latent":  # the VAE is named, not pickled; its scaling constants are numpy arrays
        scale = records["encoder"].state["scale"]
        assert isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.shape == (4,)
    name = seen["types"]["loss_fn"]
    with pytest.raises(ValueError, match=f"{path}: holds a {name}; networks read here: Precond, EDMPrecond"):
        nvlabs.load_network_pickle(path, key="loss_fn")


def _sources(data: bytes) -> list[bytes]:
    """The module sources recorded in a snapshot (each written once; later records refer to it)."""
    return [arg.encode() for _, arg, _ in pickletools.genops(data)
            if isinstance(arg, str) and "@persistence.persistent_class" in arg]


@pytest.mark.parametrize("kind", ["edm2", "edm2_latent", "edm"])
def test_the_recorded_source_is_never_run(tmp_path, kind):
    path, out = _fixture(kind)
    with open(path, "rb") as f:
        data = f.read()
    marker = tmp_path / "ran"
    sources = _sources(data)
    assert len(sources) == 3 and all(b"class " in s for s in sources)  # networks, loss, encoder or augment pipe
    for source in sources:  # the same length keeps the pickle's frames intact
        payload = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
        data = data.replace(source, payload + b"#" * (len(source) - len(payload)))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(data)
    net = nvlabs.load_network_pickle(str(evil))
    x, sigma, labels = (_tensor(out, k) for k in ("x", "sigma", "labels"))
    with torch.no_grad():
        assert _relative_error(net(x, sigma, labels), _tensor(out, "D")) <= EDM2_TOLERANCE
    assert not marker.exists()


def test_the_edm2_snapshot_samples_and_converts(tmp_path):
    path, _ = _fixture("edm2")
    common = ["--num_samples", 2, "--classes", "1,3", "--sampler", "euler", "--steps", 3, "--progress", False]
    code, stderr = run_main("image_sample.py", ["--model_path", path, *common, "--log_dir", tmp_path / "pkl"])
    assert code == 0, stderr
    converted = tmp_path / "converted" / "edm2.safetensors"
    code, stderr = run_main("convert_checkpoint.py", [path, converted])
    assert code == 0, stderr
    code, stderr = run_main("image_sample.py", ["--model_path", converted, *common, "--log_dir", tmp_path / "st"])
    assert code == 0, stderr
    samples = [read_samples(tmp_path / d / "samples_2x16x16x3.npz") for d in ("pkl", "st")]
    np.testing.assert_array_equal(samples[0]["arr_0"], samples[1]["arr_0"])
    assert samples[0]["arr_1"].tolist() == [1, 3]
    latent, _ = _fixture("edm2_latent")  # decoded by the tiny VAE of tests/fixtures/encoders (8x8 -> 64x64)
    vae = os.path.join(os.path.dirname(FIXTURES), "encoders", "vae")
    code, stderr = run_main("image_sample.py", ["--model_path", latent, "--vae", vae, *common, "--log_dir",
                                                tmp_path / "latent"])
    assert code == 0, stderr
    samples = read_samples(tmp_path / "latent" / "samples_2x64x64x3.npz")
    assert samples["arr_0"].dtype == np.uint8 and samples["arr_1"].tolist() == [1, 3]


# --- crafted pickles --------------------------------------------------------------------------------------------

class _Reduce:
    """Pickles as the given reduce tuple."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


class _Rec:
    """A persistence record with the given class name and state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="", class_name=self.class_name, state=self.state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def _snapshot_with(tmp_path, name: str, ema) -> str:
    return _write(tmp_path / f"{name}.pkl", {"ema": ema})


def _huge_blocks(tmp_path):
    return _snapshot_with(tmp_path, "blocks", _Persistent(edm2.Precond(**SMALL), {**SMALL, "num_blocks": 10**6}))


def _module_dict_loop(tmp_path):
    blocks = torch.nn.ModuleDict()  # pickled as torch pickles it: the class, then its __dict__
    blocks._modules["loop"] = blocks
    return _snapshot_with(tmp_path, "moduledict_loop", _Rec("Precond", {"_modules": {"enc": blocks},
                                                                         "_init_kwargs": SMALL}))


def _record_loop(tmp_path):
    modules = {}
    modules["unet"] = _Rec("UNet", {"_modules": modules})
    return _snapshot_with(tmp_path, "record_loop", _Rec("Precond", {"_modules": modules, "_init_kwargs": SMALL}))


def _short_storage(tmp_path):
    storage = torch.storage.TypedStorage(4, dtype=torch.float32, _internal=True)
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (10**6, 10**6), (10**6, 1), False,
                                                       collections.OrderedDict()))
    return _snapshot_with(tmp_path, "short_storage", _Rec("Precond", {"_parameters": {"w": tensor},
                                                                       "_init_kwargs": SMALL}))


def _broadcast_view(tmp_path):
    storage = torch.storage.TypedStorage(1, dtype=torch.float32, _internal=True)
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (10**5, 10**5), (0, 0), False,
                                                       collections.OrderedDict()))
    return _snapshot_with(tmp_path, "broadcast", _Rec("Precond", {"_parameters": {"w": tensor},
                                                                   "_init_kwargs": SMALL}))


def _integer_weights(tmp_path):
    net = edm2.Precond(**SMALL)
    net.unet.out_gain = torch.nn.Parameter(torch.zeros([], dtype=torch.int64), requires_grad=False)
    return _snapshot_with(tmp_path, "integer", _Persistent(net, SMALL))


def _huge_numpy(tmp_path):
    from numpy._core import multiarray

    array = _Reduce(multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (10**6, 10**6, 10**6), np.dtype("float32"), False, b""))
    return _snapshot_with(tmp_path, "numpy", _Rec("Precond", {"_init_kwargs": SMALL, "note": array}))


def _numpy_allocation(tmp_path):
    array = _Reduce(np.ndarray, ((10**11,),))  # 800 GB, uninitialized
    return _snapshot_with(tmp_path, "numpy_alloc", _Rec("Precond", {"_init_kwargs": SMALL, "note": array}))


def _storage_declaring_too_much(tmp_path):
    import io

    class Header(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.HalfStorage, "0", "cpu", 10**12, None) if obj is Header else None

    blob = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(value, blob, protocol=2)
    Header(blob, protocol=2).dump(Header)
    pickle.dump(["0"], blob, protocol=2)
    blob.write((10**12).to_bytes(8, "little"))
    storage = _Reduce(torch.storage._load_from_bytes, (blob.getvalue(),))
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, collections.OrderedDict()))
    return _snapshot_with(tmp_path, "storage", _Rec("Precond", {"_parameters": {"w": tensor}, "_init_kwargs": SMALL}))


@pytest.mark.parametrize("craft, message", [
    (_huge_blocks, "the Precond records num_blocks=1000000: expected an integer from 1 to 12"),
    (_module_dict_loop, "the ModuleDict record enc.loop refers to itself or appears twice"),
    (_record_loop, "the UNet record unet.unet refers to itself or appears twice"),
    (_short_storage, "not readable as an NVlabs network pickle: a tensor of shape [1000000, 1000000] reaching "
                     "element 1000000000000 of a storage of 4 (no code in it was run)"),
    (_broadcast_view, "not readable as an NVlabs network pickle: a tensor of shape [100000, 100000] reaching "
                      "element 10000000000 of a storage of 1 (no code in it was run)"),
    (_integer_weights, "does not match its tensors (of other kinds: unet.out_gain (torch.int64))"),
    (_huge_numpy, "not readable as an NVlabs network pickle: a numpy array of shape [1000000, 1000000, 1000000] "
                  "(float32) held in 0 bytes (no code in it was run)"),
    (_numpy_allocation, "not readable as an NVlabs network pickle: numpy.ndarray called directly (numpy pickles "
                        "arrays through its _reconstruct) (no code in it was run)"),
    (_storage_declaring_too_much, "not readable as an NVlabs network pickle: a storage declaring 2000000000000 bytes "
                                  "held in"),
])
def test_crafted_pickles_end_in_one_line_naming_the_file(tmp_path, stand_ins, craft, message):
    path = craft(tmp_path)
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        nvlabs.load_network_pickle(path)
    assert str(info.value).startswith(path) and message in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 5
    code, stderr = run_main("image_sample.py", ["--model_path", path, "--log_dir", tmp_path / "out"])
    assert code == 2 and stderr == f"image_sample.py: error: {info.value}", stderr


def test_a_storage_holding_code_is_refused_as_not_plain_weights(tmp_path, stand_ins):
    import io

    marker = tmp_path / "ran"
    blob = io.BytesIO()
    torch.save(_Reduce(os.system, (f"touch {marker}",)), blob, _use_new_zipfile_serialization=False)
    storage = _Reduce(torch.storage._load_from_bytes, (blob.getvalue(),))
    tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, collections.OrderedDict()))
    path = _snapshot_with(tmp_path, "code", _Rec("Precond", {"_parameters": {"w": tensor}, "_init_kwargs": SMALL}))
    with pytest.raises(ValueError) as info:
        nvlabs.load_network_pickle(path)
    assert str(info.value) == (f"{path}: not readable as an NVlabs network pickle: a storage naming "
                               f"{os.system.__module__}.system: code or objects that are not plain weights (no code "
                               "in it was run)")
    assert not marker.exists()


def test_the_bounds_admit_every_released_network_with_a_margin():
    manifests = [os.path.join(REFERENCE, family, "manifests", name) for family in ("edm2", "edm")
                 for name in sorted(os.listdir(os.path.join(REFERENCE, family, "manifests")))]
    assert len(manifests) == 14
    largest = collections.Counter()
    for manifest in manifests:
        with open(manifest) as f:
            meta = json.load(f)
        record = Record(meta["class"], {"_init_kwargs": meta["init_kwargs"]})
        with torch.device("meta"):
            net = nvlabs._construct(record, manifest)
        assert sum(p.numel() for p in net.parameters()) == meta["num_params"]
        for name, value in nvlabs._arguments(record, manifest).items():
            if name in nvlabs.INT_LIMITS and value is not None:
                largest[name] = max(largest[name], value)
    assert all(nvlabs.INT_LIMITS[name][1] >= 4 * value for name, value in largest.items()), largest
    assert largest["model_channels"] == 448 and nvlabs.INT_LIMITS["model_channels"] == (1, 2048)
    too_wide = Record("Precond", {"_init_kwargs": {**SMALL, "model_channels": 4096}})
    with pytest.raises(ValueError, match="records model_channels=4096: expected an integer from 1 to 2048"):
        nvlabs._construct(too_wide, "x.pkl")


def test_a_pt_holding_code_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"net": _Reduce(print, ("ran",))}, path)
    code, stderr = run_main("image_sample.py", ["--model_path", path, "--log_dir", tmp_path / "out"])
    assert code == 2 and str(path) in stderr and "\n" not in stderr, stderr
    assert "weights_only" not in stderr and "False" not in stderr and "weights-only loader refuses" in stderr
