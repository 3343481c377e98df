"""The allowed values of the scripts' integer flags, declared once and checked when the command line is parsed.

A batch size of 0 would divide by zero, a negative one would never fill a batch, a save interval of 0 would divide
by zero in the training loop: every script refuses such values up front, in one line naming the flag.
"""

from __future__ import annotations

import argparse
from typing import Callable, NamedTuple


class IntRange(NamedTuple):
    """low <= value <= high (high None: no upper bound), or exactly `special` (a sentinel such as -1 = off)."""

    low: int
    high: int | None = None
    special: int | None = None
    special_means: str = ""


# Flags whose integer value must lie in a range; flags not listed accept any integer.
INT_RANGES: dict[str, IntRange] = {
    # Running: batches, intervals, counts.
    "batch_size": IntRange(1),
    "microbatch": IntRange(1, special=-1, special_means="the whole batch"),
    "log_interval": IntRange(1),
    "save_interval": IntRange(1),
    "eval_interval": IntRange(1),
    "iterations": IntRange(1),
    "lr_anneal_steps": IntRange(0),
    "max_steps": IntRange(0),
    "num_workers": IntRange(0),
    "num_samples": IntRange(1),
    "save_trajectory": IntRange(0),
    "seed": IntRange(0, 2**32 - 1),
    # The network and the process.
    "image_size": IntRange(1),
    "large_size": IntRange(1),
    "small_size": IntRange(1),
    "num_channels": IntRange(1),
    "model_channels": IntRange(1),
    "classifier_width": IntRange(1),
    "num_res_blocks": IntRange(1),
    "num_blocks": IntRange(1),
    "classifier_depth": IntRange(1),
    "num_heads": IntRange(1),
    "num_head_channels": IntRange(1, special=-1, special_means="off"),
    "num_heads_upsample": IntRange(1, special=-1, special_means="as --num_heads"),
    "num_classes": IntRange(1),
    "diffusion_steps": IntRange(1),
    "steps": IntRange(1),  # the sigma-space samplers' steps
}


def describe(allowed: IntRange) -> str:
    """The allowed values in words, e.g. "-1 (off) or an integer >= 1"."""
    if allowed.high is None:
        words = f"an integer >= {allowed.low}"
    else:
        words = f"an integer in [{allowed.low}, {allowed.high}]"
    if allowed.special is not None:
        words = f"{allowed.special} ({allowed.special_means}) or {words}"
    return words


def int_flag(name: str) -> Callable[[str], int]:
    """An argparse type for --name: an integer inside INT_RANGES[name] (any integer when the flag is not listed)."""
    allowed = INT_RANGES.get(name)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if allowed is None or value == allowed.special:
            return value
        if value < allowed.low or (allowed.high is not None and value > allowed.high):
            raise argparse.ArgumentTypeError(f"expected {describe(allowed)}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse
