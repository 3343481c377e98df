"""Flags of a sampling run merged with the args.json saved beside each checkpoint: a network trained here
needs only its checkpoint path; a flag given on the command line wins (and a disagreement is reported)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys

from guided_diffusion import dist_util

from guided_diffusion import logger
from guided_diffusion.cli.parsers import RaisingParser
from guided_diffusion.cli.fileio import read_json
from guided_diffusion.script_util import add_dict_to_argparser
from guided_diffusion.cli.settings import resolve

# Flags that describe a trained network (read back from args.json); the rest are choices made when sampling.
_NOT_ARCHITECTURE = {"timestep_respacing", "use_fp16", "classifier_use_fp16", "use_checkpoint", "dropout"}


def explicit_flags(argv: list[str] | None = None) -> set[str]:
    """Names of the flags given on the command line (--name value or --name=value)."""
    argv = sys.argv[1:] if argv is None else argv
    return {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}


def checkpoint_args(path: str) -> dict | None:
    """The flags saved in args.json beside a checkpoint, or None; a file that is not a JSON object of flags is
    a one-line ValueError naming it."""
    json_path = os.path.join(os.path.dirname(os.path.abspath(path)), "args.json")
    if not os.path.exists(json_path):
        return None
    saved = read_json(json_path, "JSON file of flags")
    if not isinstance(saved, dict):
        raise ValueError(f"{json_path}: expected a JSON object of flags, got a {type(saved).__name__}")
    return saved


def checkpoint_layer(path: str, keys, given: dict, explicit: set[str], flag: str) -> tuple[dict, dict | None]:
    """(the architecture flags in `keys` that the args.json beside `path` implies, the file's flags or None);
    flags given explicitly are left out, and one that disagrees with the file wins and is reported."""
    saved = checkpoint_args(path)
    if saved is None:
        return {}, None
    layer = {}
    for key in keys:
        if key in _NOT_ARCHITECTURE or key not in saved:
            continue
        if key in explicit:
            if saved[key] != given[key]:
                logger.warn(f"--{key} {given[key]} given; args.json beside --{flag} {path} says {saved[key]}: "
                            f"using {given[key]}")
        else:
            layer[key] = saved[key]
    return layer, saved


def namespace_from_flags(defaults: dict, flags: str, checkpoint: str, flag: str) -> argparse.Namespace:
    """Flags for one network of a pipeline: defaults, then its args.json, then the flag string (which wins); a new
    namespace (settings.resolve of the parsed flag string and the checkpoint's layer)."""
    parser = RaisingParser(prog=f"the flags {flags!r} for {checkpoint}", add_help=False)
    add_dict_to_argparser(parser, defaults)
    tokens = shlex.split(flags)
    given, explicit = vars(parser.parse_args(tokens)), explicit_flags(tokens)
    layer, _ = checkpoint_layer(checkpoint, defaults, given, explicit, flag)
    return argparse.Namespace(**resolve(given, explicit, layer))


def require_file(path: str, flag: str) -> None:
    if not path:
        raise ValueError(f"--{flag} is required")
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"--{flag} not found: {path}")


def default_log_dir(script: str, args, ignore=("batch_size", "log_dir", "grid", "progress", "save_trajectory")) -> str:
    """runs/<script>-<checkpoint name>-<hash of the flags that change the samples>: a rerun of the same command
    lands in the same folder and resumes there."""
    relevant = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]
    paths = [relevant.get(k) for k in ("model_path", "base_model_path")]
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths if p]
    return os.path.join("runs", "-".join([script, *names[:1], digest]))


def configure_logging(script: str, args) -> str:
    """Log into --log_dir, else $OPENAI_LOGDIR, else runs/<script>-<checkpoint>-<hash>, clearing what interrupted
    writes left there; returns the folder."""
    folder = logger.configure(dir=args.log_dir or None, default=default_log_dir(script, args))
    dist_util.clear_interrupted_writes(folder)
    return folder
