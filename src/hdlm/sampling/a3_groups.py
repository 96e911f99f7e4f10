"""Explicit A3 decoding orders: which unknown positions are committed together, and when.

A grouping is given either as groups of positions in decoding order (`[[3, 4], [1, 2], [5]]`)
or as a group id per position (a sequence of length L: 0 at given positions, ids >= 1 at the
positions to fill, smaller ids first — the way `hdlm.a3` writes groupings). Positions count the
tokens of the sample with BOS at 0. On the command line (`--groups`) groups are separated by
commas or new lines, the positions of one group by `+`, and `A-B` is the range A..B inclusive:
`--groups "1-3,4-7,8+10,9"`; `--groups @FILE` reads the same text from a file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from hdlm.errors import HdlmError

ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


def parse_groups(spec: str) -> list[list[int]]:
    """Groups of positions from the `--groups` text (or `@FILE`), in decoding order."""
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text()
        except OSError as e:
            raise HdlmError(f"--groups {spec}: cannot read the file ({e.strerror})") from None
    groups = []
    for text in re.split(r"[,\n]", spec):
        if text.strip():
            groups.append([p for item in text.split("+") for p in _item(item.strip())])
    if not groups:
        raise HdlmError("--groups lists no positions; write e.g. --groups '1-3,4-7,8'")
    return groups


def _item(item: str) -> list[int]:
    """Positions of one item: `N` or the inclusive range `A-B`."""
    match = ITEM.fullmatch(item)
    if match is None:
        raise HdlmError(
            f"--groups: '{item}' is not a position or a range A-B (groups are separated by "
            "commas, positions within a group by +)"
        )
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise HdlmError(f"--groups: the range '{item}' is empty; write A-B with A <= B")
    return list(range(first, last + 1))


def explicit_steps(groups: Sequence | Tensor, known: Tensor) -> list[Tensor]:
    """The positions [k_s] committed at each step s, on `known`'s device, after checking that
    the groups cover exactly the unknown positions of `known` [L] (bool), once each."""
    if isinstance(groups, Tensor) or all(isinstance(g, int) for g in groups):
        groups = _from_ids(torch.as_tensor(groups).tolist(), known)
    length, seen = len(known), set()
    for g, group in enumerate(groups):
        if len(group) == 0:
            raise HdlmError(f"--groups: group {g + 1} is empty")
        for position in group:
            if not 0 <= position < length:
                raise HdlmError(
                    f"--groups: position {position} is outside the sample (positions "
                    f"0..{length - 1}, BOS at 0)"
                )
            if known[position]:
                raise HdlmError(
                    f"--groups: position {position} is given (BOS, prompt or template text); "
                    "list only the positions to fill"
                )
            if position in seen:
                raise HdlmError(f"--groups: position {position} is in more than one group")
            seen.add(position)
    missing = sorted(set((~known).nonzero()[:, 0].tolist()) - seen)
    if missing:
        listed = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise HdlmError(
            f"--groups leaves positions {listed} unfilled; every position to fill must be in "
            "exactly one group"
        )
    return [torch.tensor(group, device=known.device) for group in groups]


def _from_ids(ids: list[int], known: Tensor) -> list[list[int]]:
    """Groups of positions from a group id per position (0 given, >= 1 to fill)."""
    if len(ids) != len(known):
        raise HdlmError(
            f"--groups has {len(ids)} group ids but the sample has {len(known)} positions"
        )
    for position, (group, given) in enumerate(zip(ids, known.tolist(), strict=True)):
        if given and group != 0:
            raise HdlmError(
                f"--groups gives position {position} (given text) group {group}; given "
                "positions have group 0"
            )
        if not given and group < 1:
            raise HdlmError(
                f"--groups gives position {position} (to fill) group {group}; positions to "
                "fill need a group >= 1"
            )
    order = sorted({g for g in ids if g > 0})
    return [[p for p, g in enumerate(ids) if g == group] for group in order]
