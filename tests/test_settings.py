"""A sampling run's flags are resolved once, in one order (defaults < checkpoint-implied < preset < command line),
into frozen settings; the parsed namespace is left as it is."""

import dataclasses
import os
import shutil

import pytest

from guided_diffusion import dist_util
from guided_diffusion.cli import run as cli
from guided_diffusion.networks import sigma_space
from guided_diffusion.sampling import pipeline as sampling
from guided_diffusion.cli.settings import freeze, resolve, with_flags

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "nvlabs")
ARCHITECTURE = sigma_space.architecture_defaults()


def _prepare(args, argv):
    """sampling.prepare in this process, its process group and the variables it exports undone afterwards."""
    environ = dict(os.environ)
    try:
        return sampling.prepare("image_sample", args, ARCHITECTURE, [str(a) for a in argv])
    finally:
        dist_util.cleanup()
        os.environ.clear()
        os.environ.update(environ)


def _parse(argv):
    defaults = {**sampling.sampling_defaults(), **sampling.preset_flag_defaults(), **sampling.latent_flag_defaults(),
                **ARCHITECTURE}
    return cli.make_parser("", defaults).parse_args([str(a) for a in argv])


def test_resolve_layers_in_order_and_the_command_line_wins():
    given = {"a": 1, "b": 2, "c": 3, "d": 4}
    assert resolve(given, {"d"}, {"b": 20, "c": 30, "d": 40}, {"c": 300, "d": 400}) == {"a": 1, "b": 20, "c": 300,
                                                                                          "d": 4}
    settings = freeze({"steps": 3, "sampler": "heun", "scale": 1.5, "path": None})
    assert [f.type for f in dataclasses.fields(settings)] == [int, str, float, type(None)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 4
    changed = with_flags(settings, steps=5, extra=True)
    assert (settings.steps, changed.steps, changed.extra, vars(changed)["sampler"]) == (3, 5, True, "heun")


def test_a_sampling_run_resolves_its_flags_once_in_the_documented_order(tmp_path):
    net = sampling.presets.EDM2_PRESETS["edm2-img64-s-fid"][0]
    shutil.copy(os.path.join(FIXTURES, "edm2_snapshot.pkl"), tmp_path / net)
    argv = ["--preset", "edm2-img64-s-fid", "--model_dir", tmp_path, "--steps", 3, "--classes", "1",
            "--log_dir", tmp_path / "run", "--progress", False]
    args = _parse(argv)
    parsed = dict(vars(args))
    prepared = _prepare(args, argv)
    assert vars(args) == parsed  # the parsed namespace is left as it is
    settings = prepared.settings
    assert settings.steps == 3  # the command line over the preset's 32
    assert (settings.sampler, settings.model_path) == ("heun", str(tmp_path / net))  # the preset over the defaults
    assert (settings.image_size, settings.num_classes, settings.class_cond) == (16, 4, True)  # the network's
    assert settings.clip_denoised is False and settings.timestep_respacing == ""  # EDM's D is not clipped
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.image_size = 32


def test_a_flag_given_on_the_command_line_wins_over_the_checkpoint(trained, tmp_path):
    argv = ["--model_path", trained["cfg"], "--num_channels", 16, "--log_dir", tmp_path, "--progress", False]
    settings = _prepare(_parse(argv), argv).settings
    assert settings.num_channels == 16 and settings.image_size == 16  # given; from args.json (default 64)
    assert settings.class_dropout_prob == 0.25 and settings.clip_denoised is True  # from args.json; ADM clips D
