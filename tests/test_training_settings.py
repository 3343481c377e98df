"""A training run's flags are resolved once, in one order (defaults < what the data implies < EDM2's preset < the
command line), into frozen settings that the run reads and args.json records; the parsed namespace is left as it
is. image_nll.py reads a checkpoint's args.json the same way."""

import argparse
import dataclasses
import json

import pytest

from guided_diffusion.loading import checkpoint_flags
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.script_util import model_and_diffusion_defaults

from launch import make_image_folder, run_main

CLASS_NAMES = ["c0", "c1", "c2", "c3"]
TINY_ADM = ["--image_size", 16, "--num_channels", 32, "--num_head_channels", 16, "--num_res_blocks", 1,
            "--attention_resolutions", "", "--channel_mult", "1,2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight 16x16 images of four classes (c0_..c3_), and four 64x64 ones for the upsampler."""
    root = tmp_path_factory.mktemp("images")
    return (make_image_folder(root / "small", count=8, size=16, classes=4),
            make_image_folder(root / "large", count=4, size=64, classes=4))


class _Stop(ValueError):
    """Raised by a spy to end a run at its opening (a user error: one line, exit code 2)."""


def run_resolving(monkeypatch, script: str, argv: list, opening=(cli, "start"), stop: bool = False):
    """Run scripts/<script>'s main in this process: (exit code, stderr, the parsed namespace's flags as parsed,
    the namespace after the run, the settings the run handed to its opening, module.function, or None). stop:
    end the run there."""
    parsed, handed = [], []
    make_parser, (module, name) = cli.make_parser, opening
    original = getattr(module, name)

    def recording_parser(*args, **kwargs):
        parser = make_parser(*args, **kwargs)
        parse_args = parser.parse_args

        def parse(*a, **k):
            namespace = parse_args(*a, **k)
            parsed.append((dict(vars(namespace)), namespace))
            return namespace

        parser.parse_args = parse
        return parser

    def recording_opening(*args):
        settings = args[0] if module is cli else args[1]  # cli.start(settings, script), configure_logging(script, s)
        handed.append(settings)
        if stop:
            raise _Stop("stopped at the opening")
        return original(*args)

    monkeypatch.setattr(cli, "make_parser", recording_parser)
    monkeypatch.setattr(module, name, recording_opening)
    code, stderr = run_main(script, [str(a) for a in argv])
    (as_parsed, namespace), = parsed
    return code, stderr, as_parsed, namespace, handed[0] if handed else None


def _check_frozen_and_untouched(as_parsed, namespace, settings):
    assert vars(namespace) == as_parsed  # the parsed namespace is left as it is
    assert dataclasses.is_dataclass(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_classes = 7


def test_layers_merge_in_the_documented_order():
    """defaults < data-implied layers (in turn) < the preset < the command line; "" on the command line asks for
    the value a layer implies; spell_out rewrites command-line values first; the namespace is left as it is."""
    parser = cli.make_parser("", dict(a=1, b=2, c=3, d=4, e="", path="x"))
    argv = ["--d", "40", "--e", "", "--path", "rel"]
    args = parser.parse_args(argv)
    seen = []

    def preset(flags, explicit):
        seen.append(("preset", dict(vars(flags)), set(explicit)))
        return {"b": 20, "c": 30, "d": 400, "e": "filled"}

    def data(flags, explicit):
        seen.append(("data", dict(vars(flags)), set(explicit)))
        return {"a": 10, "b": 200, "names": ["x", "y"]}

    def more_data(flags, explicit):
        seen.append(("more", dict(vars(flags)), set(explicit)))
        return {"a": 100}

    settings = cli.training_settings(args, argv, preset, data, more_data,
                                     spell_out=lambda given: {"path": "/abs/" + given["path"]})
    assert vars(settings) == {"a": 100, "b": 20, "c": 30, "d": 40, "e": "filled", "path": "/abs/rel",
                              "names": ["x", "y"]}
    # The preset runs first and sees the command line; each later layer sees the layers before it.
    assert seen[0] == ("preset", {"a": 1, "b": 2, "c": 3, "d": 40, "e": "", "path": "/abs/rel"}, {"d", "path"})
    assert seen[1][1]["b"] == 20 and seen[2][1]["a"] == 10 and seen[2][1]["names"] == ["x", "y"]
    assert vars(args) == {"a": 1, "b": 2, "c": 3, "d": 40, "e": "", "path": "rel"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.a = 5


@pytest.mark.parametrize("script, flags, resolved", [
    # An ADM class-conditional run: the objective, the class count and names come from the layers.
    ("image_train.py", ["--class_cond", True, *TINY_ADM],
     {"objective": "adm", "num_classes": 4, "class_names": CLASS_NAMES}),
    # EDM2's xs preset: its width and dropout, EDM2's objective.
    ("image_train.py", ["--arch", "edm2", "--edm2_preset", "xs", "--image_size", 16, "--channel_mult", "1,2",
                        "--num_blocks", 1, "--attn_resolutions", ""],
     {"objective": "edm2", "model_channels": 128, "dropout": 0.0}),
    # A full preset with --lr, --model_channels and --num_classes given: those win over the preset and the data.
    ("image_train.py", ["--arch", "edm2", "--edm2_preset", "img64-xs", "--image_size", 16, "--channel_mult", "1,2",
                        "--num_blocks", 1, "--attn_resolutions", "", "--lr", 0.002, "--model_channels", 8,
                        "--class_cond", True, "--num_classes", 6],
     {"objective": "edm2", "dropout": 0.0, "lr_ref_images": 35000 * 2048, "lr_rampup_images": 10e6,
      "p_mean": -0.8, "p_std": 1.6, "class_names": CLASS_NAMES}),
    # --objective "" given: the architecture's own.
    ("image_train.py", ["--arch", "edm2", "--objective", "", "--model_channels", 8, "--image_size", 16,
                        "--channel_mult", "1,2", "--num_blocks", 1, "--attn_resolutions", ""],
     {"objective": "edm2"}),
    ("classifier_train.py", ["--image_size", 16, "--classifier_width", 64, "--classifier_pool", "attention",
                             "--classifier_depth", 1, "--classifier_channel_mult", "1,2",
                             "--classifier_attention_resolutions", "", "--objective", "edm"],
     {"num_classes": 4, "class_names": CLASS_NAMES}),
    ("super_res_train.py", ["--large_size", 64, "--small_size", 16, "--num_channels", 32, "--num_res_blocks", 1,
                            "--attention_resolutions", "", "--class_cond", True, "--objective", "edm"],
     {"num_classes": 4, "class_names": CLASS_NAMES}),
], ids=["adm_class_cond", "edm2_xs", "edm2_full_preset_given_flags", "objective_empty", "classifier", "super_res"])
def test_a_training_run_resolves_its_flags_once(monkeypatch, images, tmp_path, script, flags, resolved):
    """args.json is the parsed flags with exactly the resolved values changed or added (the content the scripts
    wrote before their flags resolved into frozen settings, checked byte for byte against those for these
    commands); the namespace is left as it is and the settings cannot be assigned to."""
    data = images[1] if script == "super_res_train.py" else images[0]
    steps = ["--iterations" if script == "classifier_train.py" else "--max_steps", 1]
    argv = ["--data_dir", data, "--log_dir", tmp_path / "run", "--batch_size", 2, *steps, *flags]
    code, stderr, as_parsed, namespace, settings = run_resolving(monkeypatch, script, argv)
    assert code == 0, stderr
    _check_frozen_and_untouched(as_parsed, namespace, settings)
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    assert saved == vars(settings) == {**as_parsed, **resolved}


def test_a_bad_flag_still_fails_in_one_line_before_args_json(monkeypatch, images, tmp_path):
    code, stderr, as_parsed, namespace, settings = run_resolving(monkeypatch, "image_train.py", [
        "--data_dir", images[0], "--log_dir", tmp_path / "run", "--arch", "edm2", "--edm2_preset", "xxs"])
    assert code == 2 and stderr == ("image_train.py: error: --edm2_preset 'xxs': choose one of xs, s, m, l, xl (width "
                                    "and dropout), or " + ", ".join(sigma_space.EDM2_FULL_PRESETS) +
                                    " (EDM2's full presets)")
    assert settings is None and vars(namespace) == as_parsed and not (tmp_path / "run").exists()


def test_image_nll_reads_the_checkpoints_flags_into_frozen_settings(monkeypatch, tmp_path):
    """args.json beside the checkpoint fills the network's flags (only those), one given on the command line wins;
    the namespace is left as it is."""
    (tmp_path / "model.pt").write_bytes(b"")
    json.dump({"image_size": 16, "num_channels": 32, "class_cond": True, "num_classes": 4, "lr": 0.5},
              open(tmp_path / "args.json", "w"))
    code, stderr, as_parsed, namespace, settings = run_resolving(
        monkeypatch, "image_nll.py", ["--model_path", tmp_path / "model.pt", "--data_dir", tmp_path,
                                      "--num_channels", 64, "--log_dir", tmp_path / "nll"],
        opening=(checkpoint_flags, "configure_logging"), stop=True)
    assert code == 2 and stderr == "image_nll.py: error: stopped at the opening"
    _check_frozen_and_untouched(as_parsed, namespace, settings)
    assert (as_parsed["image_size"], as_parsed["num_channels"], as_parsed["class_cond"]) == (64, 64, False)
    assert vars(settings) == {**as_parsed, "image_size": 16, "class_cond": True, "num_classes": 4}


def test_a_pipeline_stage_gets_a_new_namespace(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    json.dump({"image_size": 16, "num_channels": 32}, open(tmp_path / "args.json", "w"))
    stage = checkpoint_flags.namespace_from_flags(model_and_diffusion_defaults(), "--num_channels 64",
                                                  str(tmp_path / "model.pt"), "base_model_path")
    assert isinstance(stage, argparse.Namespace) and (stage.image_size, stage.num_channels) == (16, 64)


def test_architecture_defaults_are_the_adm_and_sigma_space_flags():
    from guided_diffusion.script_util import sr_model_and_diffusion_defaults

    assert sigma_space.architecture_defaults() == {**model_and_diffusion_defaults(), **sigma_space.edm_defaults()}
    assert list(sigma_space.architecture_defaults()) == [*model_and_diffusion_defaults(), *sigma_space.edm_defaults()]
    assert sigma_space.upsampler_architecture_defaults() == {**sr_model_and_diffusion_defaults(),
                                                          **sigma_space.objective_defaults()}
    assert not set(model_and_diffusion_defaults()) & set(sigma_space.edm_defaults())  # the order cannot matter
