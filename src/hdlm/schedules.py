"""Hyperschedules: a noise level for every (generation step, position) pair.

A hyperschedule is a table T[s, i] over steps s = 0..S (rows) and positions i = 0..L-1 (columns)
of noise levels, 1 = fully noised, 0 = clean. Row 0 is all ones, row S all zeros and every column
is non-increasing: generation walks down the table, step s taking position i from T[s-1, i] to
T[s, i].

Every built-in schedule is a *staggered flat* schedule: position i waits start_i steps, then goes
from 1 to 0 in tau equal steps,

    T[s, i] = clip(1 - (s - start_i) / tau, 0, 1),        S = max_i start_i + tau,

and the constructors differ only in start_i and tau:

    quenched_ar(L)            start_i = i                    tau = 1
    flat(L, steps)            start_i = 0                    tau = steps
    block(L, width, k)        start_i = k * (i // width)     tau = k
    slide(L, width, tau)      start_i = (i * tau) // width   tau

Levels are multiples of 1/tau: the continuous form of the official code's integer levels 0..tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from hdlm.errors import ConfigError
from hdlm.files import new_figure

SPEC_SYNTAX = (
    "quenched_ar | flat:STEPS | block:WIDTH:STEPS_PER_BLOCK[:OFFSET] | slide:WIDTH:TAU | "
    "file:PATH (.pt, .npy or .csv table)"
)
_VALID_TABLE = (
    "a valid table has shape [S+1, L] with S >= 1, values in [0, 1], row 0 all ones, "
    "the last row all zeros and every column non-increasing"
)


class PositionStates(NamedTuple):
    """Where each position stands during a step t -> s of a hyperschedule (BoolTensors)."""

    settled: torch.Tensor  # clean before the step, T[s-1, i] == 0: final, cacheable
    active: torch.Tensor  # in flight, T[s-1, i] > 0 and T[s, i] < 1: computed and denoised
    untouched: torch.Tensor  # still pure noise after the step, T[s, i] == 1: not computed
    newly_settled: torch.Tensor  # active and clean after the step: committed to a KV cache


def position_states(before: torch.Tensor, after: torch.Tensor) -> PositionStates:
    """The states of every position for a step whose levels go from `before` to `after`."""
    active = (before > 0) & (after < 1)
    return PositionStates(before == 0, active, after == 1, active & (after == 0))


@dataclass(frozen=True, eq=False)
class Hyperschedule:
    """A validated noise table T (float32, [S+1, L]) and its name (a `from_spec` string).

    Relative to step s (1..S) every position is in exactly one of three states:

        settled before it   T[s-1, i] == 0               clean, never changes again: cacheable
        active              T[s-1, i] > 0, T[s, i] < 1   in flight: computed and denoised at s
        untouched           T[s, i] == 1                 still pure noise: need not be computed

    For the built-in schedules "active" is exactly T[s-1, i] > T[s, i]. A custom table that holds
    a position at a level strictly between 0 and 1 keeps it active: it is noisy context, neither
    cacheable nor skippable.
    """

    table: torch.Tensor
    name: str = "custom"
    kind: str = "custom"  # quenched_ar | flat | block | slide | file | custom
    width: int | None = None  # block and slide: positions per block / in the band
    steps: int | None = None  # flat: S; block: steps per block; slide: tau
    offset: int = 0  # block: how much narrower the first block is

    def __post_init__(self) -> None:
        _check_table(self.table)

    @property
    def num_steps(self) -> int:
        """S, the number of generation steps."""
        return self.table.shape[0] - 1

    @property
    def length(self) -> int:
        """L, the number of positions."""
        return self.table.shape[1]

    @cached_property
    def settle_step(self) -> torch.Tensor:
        """LongTensor [L]: the step that makes each position clean, min{s : T[s, i] == 0}."""
        return (self.table > 0).sum(0)

    @cached_property
    def start_step(self) -> torch.Tensor:
        """LongTensor [L]: the first step that leaves each position below full noise,
        min{s : T[s, i] < 1}; position i is untouched after step s iff s < start_step[i]."""
        return (self.table == 1).sum(0)

    def _row(self, s: int | torch.Tensor) -> torch.Tensor:
        """T[s]; a LongTensor of steps [B] gives one row per step, [B, L]."""
        s_min, s_max = (int(s.min()), int(s.max())) if torch.is_tensor(s) else (s, s)
        if not 0 <= s_min <= s_max <= self.num_steps:
            raise IndexError(f"step {s} is outside 0..{self.num_steps} of schedule {self.name}")
        return self.table[s]

    def levels(self, s: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T[s-1], T[s]): every position's noise level before and after step s (1 <= s <= S)."""
        if (int(s.min()) if torch.is_tensor(s) else s) < 1:
            raise IndexError(f"step {s} has no level before it: steps run 1..{self.num_steps}")
        return self._row(s - 1), self._row(s)

    # The state queries below accept an int step (-> [L]) or a LongTensor of steps (-> [B, L]).

    def settled(self, s: int) -> torch.Tensor:
        """BoolTensor [L]: positions clean after step s (0 <= s <= S), T[s, i] == 0."""
        return self._row(s) == 0

    def untouched(self, s: int) -> torch.Tensor:
        """BoolTensor [L]: positions still fully noised after step s (0 <= s <= S), T[s, i] == 1."""
        return self._row(s) == 1

    def active(self, s: int) -> torch.Tensor:
        """BoolTensor [L]: positions in flight during step s, T[s-1, i] > 0 and T[s, i] < 1."""
        return position_states(*self.levels(s)).active

    def newly_settled(self, s: int) -> torch.Tensor:
        """BoolTensor [L]: positions that step s makes clean, T[s-1, i] > 0 and T[s, i] == 0.

        A KV-cached sampler commits their keys and values after step s.
        """
        return position_states(*self.levels(s)).newly_settled

    def active_span(self, s: int) -> tuple[int, int]:
        """(first, last + 1) of the active positions at step s; (0, 0) if none is active.

        For left-to-right schedules (quenched AR, block, slide) the active positions fill this
        span, so a cached sampler computes `x[:, first:last + 1]` only.
        """
        index = self.active(s).nonzero().flatten()
        return (int(index[0]), int(index[-1]) + 1) if len(index) else (0, 0)


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    """Index of the first True entry of `mask`, row-major."""
    return tuple(mask.nonzero()[0].tolist())


def _check_table(table: torch.Tensor) -> None:
    def fail(problem: str) -> None:
        raise ConfigError(f"bad hyperschedule table: {problem}; {_VALID_TABLE}")

    if table.dim() != 2 or table.shape[0] < 2 or table.shape[1] < 1:
        fail(f"shape {tuple(table.shape)} is not [S+1, L] with at least 2 rows and 1 column")
    outside = ~((table >= 0) & (table <= 1))  # also catches NaN
    if outside.any():
        s, i = _first(outside)
        fail(f"value {table[s, i].item()} at step {s}, column {i} is outside [0, 1]")
    if (table[0] != 1).any():
        (i,) = _first(table[0] != 1)
        fail(f"row 0 is not all ones (column {i} is {table[0, i].item()})")
    if (table[-1] != 0).any():
        (i,) = _first(table[-1] != 0)
        fail(f"the last row is not all zeros (column {i} is {table[-1, i].item()})")
    rises = table[1:] > table[:-1]
    if rises.any():
        s, i = _first(rises)
        fail(f"column {i} increases from step {s} to {s + 1}")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _staggered(spec: ScheduleSpec, start: torch.Tensor, tau: int) -> Hyperschedule:
    """T[s, i] = clip(1 - (s - start[i]) / tau, 0, 1) for s = 0..max(start) + tau."""
    steps = torch.arange(int(start.max()) + tau + 1)[:, None]
    steps_left = (tau - (steps - start)).clamp(0, tau)  # integers, so 0 and 1 come out exact
    return Hyperschedule(steps_left.float() / tau, spec.name, *spec[:4])


def quenched_ar(length: int) -> Hyperschedule:
    """Autoregression as a hyperschedule: S = L, T[s, i] = 1 if i >= s else 0.

    Step s turns position s-1 from noise to clean in one go.
    """
    _check_positive(length=length)
    return _staggered(ScheduleSpec("quenched_ar", 1, 1), torch.arange(length), 1)


def flat(length: int, steps: int) -> Hyperschedule:
    """Ordinary (MDLM-like) diffusion: S = steps, T[s, i] = 1 - s/S at every position."""
    _check_positive(length=length, steps=steps)
    spec = ScheduleSpec("flat", None, steps)
    return _staggered(spec, torch.zeros(length, dtype=torch.long), steps)


def block(length: int, width: int, steps_per_block: int, offset: int = 0) -> Hyperschedule:
    """Block diffusion: blocks of `width` positions (the last may be shorter), left to right.

    With k = steps_per_block, block b = (i + offset) // width runs a flat schedule over steps
    b*k + 1 .. (b+1)*k while earlier blocks are clean and later ones fully noised:
    T[s, i] = clip(1 - (s - k * ((i + offset) // width)) / k, 0, 1), S = ceil((L + offset) /
    width) * k. `offset` (0 <= offset < width) narrows the first block to width - offset
    positions: BD3-LM's blocks count BOS in block 0, which is offset 1 over the positions
    after BOS.
    """
    _check_positive(length=length, width=width, steps_per_block=steps_per_block)
    if not 0 <= offset < width:
        raise ConfigError(f"block offset {offset} must lie in [0, width={width})")
    start = steps_per_block * ((torch.arange(length) + offset) // width)
    return _staggered(ScheduleSpec("block", width, steps_per_block, offset), start, steps_per_block)


def slide(length: int, width: int, tau: int) -> Hyperschedule:
    """Slide annealing: a diagonal band of `width` in-flight positions moving left to right.

    Position i starts after start_i = floor(i * tau / width) steps and takes tau steps from 1
    to 0:

        T[s, i] = clip(1 - (s - floor(i * tau / width)) / tau, 0, 1),
        S = floor((L - 1) * tau / width) + tau.

    Consecutive positions start tau/width steps apart (floor-rounded when width does not divide
    tau), so exactly `width` positions are active at every step once the band is clear of the
    sequence's ends, and at one step the band reads, left to right, levels rising from 0 towards
    1 in increments of about 1/width. width = tau = 1 is `quenched_ar`; tau = 1 is
    `block(L, width, 1)`.

    The official code's "simple annealing" lays the integer ramp round(k (tau-1) / (width-1)),
    k = 0..width-1, over the band, shifts it right by its number of leading zeros every step, and
    enters it one position per step during a warm-up of width - 1 steps. For tau == width the two
    tables are identical. Elsewhere we differ on purpose: (1) tau > width: the official band still
    advances one position per step, so a position is in flight only about `width` steps and tau
    merely sets the level resolution (the ramp skips levels); here the band slows to width/tau
    positions per step so that every position takes exactly tau steps, and S grows to about
    (L + width) * tau / width. (2) tau < width: the official warm-up makes early positions pause
    at a level and the rounded ramp can put unequal numbers of positions on each level; here
    every position starts at step floor(i * tau / width), never pauses, and each level holds
    width/tau positions (floor-rounded), which also gives a shorter S.
    """
    _check_positive(length=length, width=width, tau=tau)
    start = torch.arange(length) * tau // width
    return _staggered(ScheduleSpec("slide", width, tau), start, tau)


def from_table(table: object, name: str = "custom") -> Hyperschedule:
    """A hyperschedule from a user-made table (tensor, numpy array or nested list), validated."""
    try:
        table = torch.as_tensor(table, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"bad hyperschedule table: not numeric ({error}); {_VALID_TABLE}"
        ) from None
    return Hyperschedule(table, name)


_LOADERS = {
    ".pt": lambda path: torch.load(path, weights_only=True),
    ".npy": np.load,
    ".csv": lambda path: np.loadtxt(path, delimiter=",", ndmin=2),
}


def _load_table(path: Path, length: int) -> Hyperschedule:
    if path.suffix not in _LOADERS:
        raise ConfigError(f"schedule file {path} must end in .pt, .npy or .csv")
    if not path.is_file():
        raise ConfigError(f"schedule file {path} not found; check the path after 'file:'")
    try:
        table = _LOADERS[path.suffix](path)
    except Exception as error:
        raise ConfigError(f"cannot read schedule file {path}: {error}") from None
    schedule = Hyperschedule(from_table(table).table, f"file:{path}", "file")
    if schedule.length != length:
        raise ConfigError(
            f"schedule file {path} has {schedule.length} columns but sequences have length "
            f"{length}; give the table one column per position"
        )
    return schedule


class ScheduleSpec(NamedTuple):
    """A schedule spec string, parsed (`parse_spec`): its kind and numbers (None where the kind
    has none), or the table file's `path`."""

    kind: str
    width: int | None = None
    steps: int | None = None
    offset: int = 0
    path: str | None = None

    @property
    def name(self) -> str:
        """The spec string, e.g. "block:16:4" (`parse_spec(spec.name) == spec`)."""
        numbers = {
            "quenched_ar": (),
            "flat": (self.steps,),
            "block": (self.width, self.steps) + ((self.offset,) if self.offset else ()),
            "slide": (self.width, self.steps),
            "file": (self.path,),
        }[self.kind]
        return ":".join(map(str, (self.kind, *numbers)))


def spec_fields(spec: str) -> tuple[str, list[str]]:
    """A `KIND[:A[:B...]]` spec string split into its kind and its fields (strings), the syntax
    of the schedule specs here and of the γ-hybrid's σ schedules (`SigmaSchedule.parse`)."""
    kind, *fields = spec.strip().split(":")
    return kind, fields


_ARITIES = {"quenched_ar": (0,), "flat": (1,), "block": (2, 3), "slide": (2,)}


def parse_spec(spec: str) -> ScheduleSpec:
    """The kind and numbers of a CLI/config schedule string (see SPEC_SYNTAX), without building
    the table: the one parser of schedule specs."""
    kind, _, rest = spec.strip().partition(":")
    if kind == "file" and rest:
        return ScheduleSpec("file", path=rest)
    kind, args = spec_fields(spec)
    if len(args) not in _ARITIES.get(kind, ()) or not all(arg.isdigit() for arg in args):
        raise ConfigError(f"bad schedule {spec!r}; use one of: {SPEC_SYNTAX}")
    numbers = list(map(int, args))
    if kind == "flat":
        return ScheduleSpec(kind, steps=numbers[0])
    if kind in ("block", "slide"):
        return ScheduleSpec(kind, *numbers)
    return ScheduleSpec(kind)


def from_spec(spec: str, length: int) -> Hyperschedule:
    """Parse a CLI/config string (see SPEC_SYNTAX) into a hyperschedule over `length` positions.

    Examples: "quenched_ar", "flat:128", "block:16:8" (width 16, 8 steps per block),
    "slide:8:4" (width 8, tau 4), "file:tables/mine.npy". A built-in schedule's `.name` is its
    spec, so `from_spec(schedule.name, schedule.length)` rebuilds it; its kind and numbers are
    its `kind`, `width`, `steps`, `offset`.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "file":
        return _load_table(Path(parsed.path), length)
    if parsed.kind == "quenched_ar":
        return quenched_ar(length)
    if parsed.kind == "flat":
        return flat(length, parsed.steps)
    if parsed.kind == "block":
        return block(length, parsed.width, parsed.steps, parsed.offset)
    return slide(length, parsed.width, parsed.steps)


def plot_schedule(schedule: Hyperschedule, path: str | Path) -> Path:
    """Save a heatmap of T (steps down, positions across, colour = noise level) as PNG or SVG."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"cannot plot to {path}: use a file name ending in .png or .svg")
    figure = new_figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.add_subplot()
    table = schedule.table.cpu().numpy()
    image = axes.imshow(table, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="none")
    figure.colorbar(image, ax=axes, label="noise level T[s, i]")
    axes.set(xlabel="position i", ylabel="step s", title=f"hyperschedule {schedule.name}")
    figure.savefig(path)
    return path
