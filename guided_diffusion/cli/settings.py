"""A run's flags resolved once: the parsed command line and the layers that fill in what it leaves out, merged in
one documented order into a frozen, typed settings object that the rest of the run reads.

The order, each later source winning: the parser's defaults, what the checkpoints imply (a model's args.json, an
NVlabs network's image size and labels, a classifier's args.json), an EDM2 preset, the command line. A flag given
on the command line always wins; nothing edits the parsed namespace.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any


def resolve(given: dict[str, Any], explicit: set[str], *layers: dict[str, Any]) -> dict[str, Any]:
    """`given` (the parser's defaults and the command line) overlaid by each layer in order, except for the flags
    in `explicit` (those on the command line)."""
    out = dict(given)
    for layer in layers:
        out.update({k: v for k, v in layer.items() if k not in explicit})
    return out


@functools.lru_cache(maxsize=64)
def _settings_type(fields: tuple[tuple[str, type], ...]) -> type:
    return dataclasses.make_dataclass("Settings", [(name, kind) for name, kind in fields], frozen=True)


def freeze(flags: dict[str, Any]) -> Any:
    """The flags as a frozen dataclass (one typed field per flag; read as attributes, vars() gives the dict)."""
    kind = _settings_type(tuple((name, type(value)) for name, value in flags.items()))
    return kind(**flags)


def with_flags(settings: Any, **changes: Any) -> Any:
    """A copy of frozen settings with some flags changed or added (the original is left as it is)."""
    return freeze({**vars(settings), **changes})
