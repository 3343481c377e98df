"""The scripts' argument parsers: one-line errors for the command line, exceptions for flag strings inside a flag."""

from __future__ import annotations

import argparse
import sys

from guided_diffusion.script_util import add_dict_to_argparser


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), like every other user error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


class RaisingParser(argparse.ArgumentParser):
    """An argument parser for flag strings inside a flag (--base_flags "..."): errors raise ValueError."""

    def error(self, message: str):
        raise ValueError(f"{self.prog}: {message}")


def make_parser(doc: str, *defaults: dict) -> argparse.ArgumentParser:
    """An argument parser with a --flag for every entry of the default dicts (later dicts win); float flags
    must be finite and inside their range (script_util.float_flag), integer flags inside theirs
    (int_flags.INT_RANGES)."""
    merged: dict = {}
    for d in defaults:
        merged.update(d)
    parser = OneLineParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, merged)
    return parser
