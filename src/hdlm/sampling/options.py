"""A sampler option: its name, its default (the one place it lives), its range or choices, and
its command-line spelling. Samplers declare theirs (`Sampler.options`); the options several
samplers share are declared once here.

An option is *given* when it is not None (the API's defaults and the CLI's argparse defaults are
None for every option). A given option that the chosen sampler does not declare is an error
naming the option and the model's family (`registry.sampler_options`), never silently ignored;
an option that is not given takes the sampler's default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hdlm.errors import HdlmError


def interval(low: float, high: float = math.inf, low_open: bool = False) -> str:
    """`[low, high]` as a range is written in messages (`(low, ∞)` and the like)."""
    upper = "∞)" if high == math.inf else f"{high:g}]"
    return f"{'(' if low_open else '['}{low:g}, {upper}"


def in_range(value: float, low: float, high: float = math.inf, low_open: bool = False) -> bool:
    """Whether `value` is finite and lies in [low, high] ((low, high] with `low_open`)."""
    too_low = value <= low if low_open else value < low
    return math.isfinite(value) and not too_low and value <= high


@dataclass(frozen=True)
class Option:
    """One keyword of `fill` / `sample` a sampler reads.

    `kind` is its type (int, float, bool, str; `object` for values built by `parse`), `low` /
    `high` its range (numbers), `choices` its values (strings). On the command line it is
    `--name-with-dashes` (`flag` when spelled otherwise; a bool option is a `--no-...` switch
    that gives False), read by `parse` when that is set; `cli=False` options have no flag of
    their own here (the command adds it, or it is API-only). `template` options are read by
    `sample` to build an infilling template, not by the sampler; `settings` reports them only
    when they are passed."""

    name: str
    default: Any
    help: str
    kind: type = str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    choices: tuple[str, ...] = ()
    flag_name: str | None = None
    parse: Callable[[str], Any] | None = None
    cli: bool = True
    template: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling."""
        return self.flag_name or "--" + self.name.replace("_", "-")

    def with_default(self, default: Any) -> Option:
        """This option with another sampler's default."""
        return dataclasses.replace(self, default=default)

    def check(self, value: Any) -> Any:
        """`value` (given) after checking its range or choices; a one-line `HdlmError` else."""
        if self.choices and value not in self.choices:
            raise HdlmError(f"{self.flag} {value}: choose one of {', '.join(self.choices)}")
        if self.kind in (int, float) and not in_range(value, self.low, self.high, self.low_open):
            where = interval(self.low, self.high, self.low_open)
            raise HdlmError(f"{self.flag} {value} must lie in {where}")
        return value


# the options several samplers share; each sampler lists those it reads, with its own default
SCHEDULE = Option(
    "schedule", None, "hyperschedule to walk, e.g. block:16:4 (default: the model's own; a flat "
    "one with --steps steps for flat-trained models)",
)  # fmt: skip
STEPS = Option("steps", None, "steps of a flat schedule (default 128)", int, low=1)
ETA = Option("eta", None, "re-draw / remask strength", float, low=0.0, high=1.0)
USE_CACHE = Option(
    "use_cache", True, "recompute everything each step (same samples, slower)", bool,
    flag_name="--no-cache",
)  # fmt: skip
TRACE = Option("trace", None, "a `Trace` the steps are recorded into", object, cli=False)
