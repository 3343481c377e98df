"""The shared command-line parser: float and integer flags checked once, one-line errors, and where logs go."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os

import pytest

from guided_diffusion import logger
from guided_diffusion.loading import checkpoint_flags
from guided_diffusion.script_util import model_and_diffusion_defaults
from launch import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_parser(name: str) -> argparse.ArgumentParser:
    """The parser of scripts/<name>.py, imported in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_argparser()


def refused(capsys, parser: argparse.ArgumentParser, *argv: str) -> str:
    """Parse argv, expecting exit code 2 and one line on stderr; returns that line."""
    with pytest.raises(SystemExit) as info:
        parser.parse_args(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("script, argv, message", [
    ("classifier_sample", ["--classifier_scale", "nan"], "argument --classifier_scale: expected a finite number, got nan"),
    ("image_sample", ["--cfg_scale", "inf"], "argument --cfg_scale: expected a finite number, got inf"),
    ("image_sample", ["--eta", "-0.5"], "argument --eta: expected a number in [0, inf), got -0.5"),
    ("image_sample", ["--sigma_min", "0"], "argument --sigma_min: expected a number in (0, inf), got 0"),
    ("image_sample", ["--s_noise", "nan"], "argument --s_noise: expected a number in (0, inf), got nan"),
    ("image_sample", ["--eta", "fast"], "argument --eta: expected a number, got 'fast'"),
    ("image_train", ["--lr", "0"], "argument --lr: expected a number in (0, inf), got 0"),
    ("image_train", ["--dropout", "1"], "argument --dropout: expected a number in [0, 1), got 1"),
    ("image_train", ["--class_dropout_prob", "nan"], "argument --class_dropout_prob: expected a number in [0, 1)"),
    ("image_train", ["--ema_rate", "0.9999,1.5"], "argument --ema_rate: each rate must lie in [0, 1)"),
    ("classifier_train", ["--weight_decay=-1e-4"], "argument --weight_decay: expected a number in [0, inf)"),
    ("super_res_train", ["--fp16_scale_growth", "inf"], "argument --fp16_scale_growth: expected a number in [0, inf)"),
])
def test_bad_float_flags_are_one_line_errors(capsys, script, argv, message):
    line = refused(capsys, script_parser(script), *argv)
    assert ": error: " + message in line


def test_good_float_flags_pass():
    args = script_parser("classifier_sample").parse_args(
        ["--classifier_scale", "-2.5", "--s_tmax", "inf", "--eta", "0", "--sigma_max", "1e3"])
    assert (args.classifier_scale, args.s_tmax, args.eta, args.sigma_max) == (-2.5, math.inf, 0.0, 1000.0)
    assert script_parser("image_train").parse_args(["--ema_rate", "0.9999,0.99"]).ema_rate == "0.9999,0.99"


def test_flag_strings_inside_a_flag_are_checked_too(tmp_path):
    checkpoint = str(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"the flags '--dropout 2' for .*model\.pt: argument --dropout: expected "
                                         r"a number in \[0, 1\), got 2"):
        checkpoint_flags.namespace_from_flags(model_and_diffusion_defaults(), "--dropout 2", checkpoint, "base_model_path")
    with pytest.raises(ValueError, match="unrecognized arguments: --bogus"):
        checkpoint_flags.namespace_from_flags(model_and_diffusion_defaults(), "--bogus 1", checkpoint, "base_model_path")


def test_log_folder_order_is_flag_then_environment_then_default(tmp_path, monkeypatch):
    """--log_dir, else $OPENAI_LOGDIR, else runs/<script>-<checkpoint>-<hash> (the same for a rerun)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    args = script_parser("image_sample").parse_args(["--model_path", "ckpt/model000100.pt"])
    default = checkpoint_flags.configure_logging("image_sample", args)
    assert default.startswith(os.path.join("runs", "image_sample-model000100-"))
    assert checkpoint_flags.configure_logging("image_sample", args) == default
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "env"))
    assert checkpoint_flags.configure_logging("image_sample", args) == str(tmp_path / "env")
    args.log_dir = str(tmp_path / "flag")
    assert checkpoint_flags.configure_logging("image_sample", args) == str(tmp_path / "flag")
    assert logger.get_dir() == str(tmp_path / "flag")
    logger.configure(format_strs=[], dir=str(tmp_path / "reset"))


TRAINING_SCRIPTS = ("image_train", "classifier_train", "super_res_train")
SAMPLING_SCRIPTS = ("image_sample", "classifier_sample", "super_res_sample", "cascade_sample", "image_nll")


@pytest.mark.parametrize("script", TRAINING_SCRIPTS + SAMPLING_SCRIPTS)
@pytest.mark.parametrize("value", ["0", "-4"])
def test_batch_size_must_be_positive_in_every_script(capsys, script, value):
    """A batch size of 0 divided by zero, a negative one never filled a batch (training spun forever)."""
    line = refused(capsys, script_parser(script), "--batch_size", value)
    assert line.endswith(f": error: argument --batch_size: expected an integer >= 1, got {value} (see --help)")


@pytest.mark.parametrize("script", SAMPLING_SCRIPTS)
def test_num_samples_must_be_positive_in_every_sampling_script(capsys, script):
    line = refused(capsys, script_parser(script), "--num_samples", "0")
    assert ": error: argument --num_samples: expected an integer >= 1, got 0" in line


@pytest.mark.parametrize("script, argv, message", [
    ("image_train", ["--save_interval", "0"], "argument --save_interval: expected an integer >= 1, got 0"),
    ("classifier_train", ["--save_interval", "-1"], "argument --save_interval: expected an integer >= 1, got -1"),
    ("super_res_train", ["--log_interval", "0"], "argument --log_interval: expected an integer >= 1, got 0"),
    ("classifier_train", ["--eval_interval", "0"], "argument --eval_interval: expected an integer >= 1, got 0"),
    ("classifier_train", ["--iterations", "0"], "argument --iterations: expected an integer >= 1, got 0"),
    ("image_train", ["--microbatch", "0"],
     "argument --microbatch: expected -1 (the whole batch) or an integer >= 1, got 0"),
    ("image_train", ["--microbatch", "-2"],
     "argument --microbatch: expected -1 (the whole batch) or an integer >= 1, got -2"),
    ("image_train", ["--max_steps", "-1"], "argument --max_steps: expected an integer >= 0, got -1"),
    ("image_train", ["--num_workers", "-1"], "argument --num_workers: expected an integer >= 0, got -1"),
    ("image_train", ["--num_head_channels", "0"],
     "argument --num_head_channels: expected -1 (off) or an integer >= 1, got 0"),
    ("image_sample", ["--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got -1"),
    ("image_sample", ["--save_trajectory", "-3"], "argument --save_trajectory: expected an integer >= 0, got -3"),
    ("image_sample", ["--image_size", "0"], "argument --image_size: expected an integer >= 1, got 0"),
    ("image_sample", ["--batch_size", "2.5"], "argument --batch_size: expected an integer, got '2.5'"),
])
def test_bad_int_flags_are_one_line_errors(capsys, script, argv, message):
    line = refused(capsys, script_parser(script), *argv)
    assert ": error: " + message in line


def test_good_int_flags_pass():
    args = script_parser("image_train").parse_args(
        ["--batch_size", "1", "--microbatch", "-1", "--save_interval", "1", "--max_steps", "0", "--seed", "0",
         "--num_head_channels", "-1", "--num_workers", "0"])
    assert (args.batch_size, args.microbatch, args.save_interval, args.max_steps, args.seed,
            args.num_head_channels, args.num_workers) == (1, -1, 1, 0, 0, -1, 0)
    assert script_parser("image_train").parse_args(["--microbatch", "2"]).microbatch == 2


def test_int_flags_inside_a_flag_string_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match=r"argument --num_channels: expected an integer >= 1, got 0"):
        checkpoint_flags.namespace_from_flags(model_and_diffusion_defaults(), "--num_channels 0",
                                              str(tmp_path / "model.pt"), "base_model_path")


def test_training_refuses_a_negative_batch_size_in_one_line(tmp_path):
    """Through main(), as a user runs it: exit code 2 and one line (the loop used to spin at 100% CPU)."""
    code, err = run_main("image_train.py", ["--data_dir", str(tmp_path), "--batch_size", "-4"])
    assert code == 2 and err.count("\n") == 0
    assert "error: argument --batch_size: expected an integer >= 1, got -4" in err
