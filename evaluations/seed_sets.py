"""Seed sets for ``evaluator.py --seeds``: EDM/EDM2's seed lists (``0-49999``, ``1,2,5-10``), kept as ranges.

A set is held as sorted, inclusive ``(low, high)`` ranges rather than a list of seeds, so a mistyped bound such as
``0-999999999999`` costs nothing and is reported as a shortfall of images instead of filling the memory.
Sets must be disjoint, within themselves and from each other: the minimum and mean over them are meant to be
over independent evaluations, as EDM2 recommends (``--seeds=0-49999``, ``50000-99999``, ``100000-149999``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from evaluations.errors import EvaluatorError

_PART = re.compile(r"(\d+)(?:-(\d+))?")
SYNTAX = "seeds and inclusive ranges such as 0-49999 or 1,2,5-10 (non-negative integers)"


@dataclass(frozen=True)
class SeedSet:
    """One ``--seeds`` argument: its text as given and its seeds as sorted, disjoint inclusive ranges."""

    text: str
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        """Number of seeds in the set."""
        return sum(high - low + 1 for low, high in self.ranges)

    def contains(self, seeds: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``seeds`` (int64) lie in the set."""
        lows = np.array([low for low, _ in self.ranges], dtype=np.int64)
        highs = np.array([high for _, high in self.ranges], dtype=np.int64)
        slot = np.searchsorted(lows, seeds, side="right") - 1  # the last range starting at or below each seed
        inside = slot >= 0
        inside[inside] = seeds[inside] <= highs[slot[inside]]
        return inside


def parse_seed_set(text: str) -> SeedSet:
    """A seed set from EDM2's list syntax; a one-line error for anything else, for ranges that run backwards and
    for seeds listed twice."""
    ranges = []
    for part in text.split(","):
        match = _PART.fullmatch(part.strip())
        if match is None:
            got = repr(part.strip()) if part.strip() else "an empty item"
            raise EvaluatorError(f"--seeds {text}: expected {SYNTAX}, got {got}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise EvaluatorError(f"--seeds {text}: the range {part.strip()} runs backwards (write {high}-{low})")
        ranges.append((low, high))
    ranges.sort()
    for (_, high), (low, _) in zip(ranges, ranges[1:]):
        if low <= high:
            raise EvaluatorError(f"--seeds {text}: seed {low} is listed twice; a seed set names each seed once")
    return SeedSet(text, tuple(ranges))


def parse_seed_sets(texts: list[str]) -> list[SeedSet]:
    """The ``--seeds`` arguments as seed sets, refusing sets that share a seed (or repeat each other)."""
    sets = [parse_seed_set(text) for text in texts]
    for i, first in enumerate(sets):
        for second in sets[i + 1:]:
            shared = _first_shared(first, second)
            if shared is not None:
                raise EvaluatorError(f"--seeds: the seed sets {first.text} and {second.text} share seed {shared}; "
                                     "the sets must not overlap (each is an independent evaluation)")
    return sets


def _first_shared(a: SeedSet, b: SeedSet) -> int | None:
    """The smallest seed in both sets, or None (one sweep over both sorted range lists)."""
    i = j = 0
    while i < len(a.ranges) and j < len(b.ranges):
        (lo_a, hi_a), (lo_b, hi_b) = a.ranges[i], b.ranges[j]
        if max(lo_a, lo_b) <= min(hi_a, hi_b):
            return max(lo_a, lo_b)
        if hi_a < hi_b:
            i += 1
        else:
            j += 1
    return None


def describe_seeds(seeds: np.ndarray) -> str:
    """A short account of which seeds a file's images have: ``0-49999``, or ``N seeds from A to B``."""
    if len(seeds) == 0:
        return "no seeds"
    low, high = int(seeds.min()), int(seeds.max())
    if high - low + 1 == len(seeds) and len(np.unique(seeds)) == len(seeds):
        return f"seeds {low}-{high}" if high > low else f"seed {low}"
    return f"{len(seeds)} seeds from {low} to {high}"
