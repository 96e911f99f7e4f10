"""The sampler registry: every sampler is one object, declared in one file.

A sampler (a subclass of `Sampler`, registered with `@register`) declares

* `name` and `summary`;
* which models it walks: the `objectives` of the families table it can draw from, the
  `processes` (the families' `diffusion.process` presets) it walks, and the reverse-step
  protocol of `hdlm.denoiser` the model's process must have (`needs`);
* its `options` (`sampling.options.Option`: default, range or choices, command-line flag): the
  one place an option's default lives;
* `run(denoiser, tokens, known, generator, options, pick, trace)`: fill the unknown positions.

Everything else is derived from the registry: which samplers a family can be drawn with
(`samplers_of`; its default is the families table's), the option check of `fill` and `sample`
(`sampler_options`), the command-line flags (`cli_options`), the study's sweep check. The
built-in samplers live in `hdlm.sampling.samplers`, one file each, found when that package is
imported: adding a sampler is one new file there (docs/decisions.md shows one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from hdlm.denoiser import Denoiser
from hdlm.errors import ConfigError, HdlmError
from hdlm.families import Family
from hdlm.sampling.options import Option
from hdlm.sampling.trace import Trace


class Sampler(ABC):
    """One way to fill unknown positions of a sequence (module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    objectives: ClassVar[tuple[str, ...]]  # `Family.objective`s of the models it walks
    processes: ClassVar[tuple[str, ...]] = ()  # `diffusion.process` presets; (): any, or none
    needs: ClassVar[type | None] = None  # a reverse-step protocol of `hdlm.denoiser`
    options: ClassVar[tuple[Option, ...]] = ()

    def walks(self, row: Family) -> bool:
        """Whether models of the family `row` can be drawn with this sampler."""
        process = (row.diffusion or {}).get("process")
        return row.objective in self.objectives and (
            not self.processes or process in self.processes
        )

    def check(self, denoiser: Denoiser) -> None:
        """Refuse a model whose process lacks the reverse step this sampler takes (a config
        can pair a family with a process its samplers cannot walk, e.g. uniform)."""
        if self.needs is not None and not isinstance(denoiser.process, self.needs):
            raise HdlmError(
                f"the {self.name} sampler walks processes with {self.needs.__name__} reverse "
                f"steps; this model's {type(denoiser.process).__name__} process has none: train "
                "with a masking process (absorbing, eps-hybrid) or the gamma-hybrid family"
            )

    def resolve(self, denoiser: Denoiser, options: dict[str, Any]) -> dict[str, Any]:
        """The options as `run` reads them and `settings` reports them (JSON-able), with the
        defaults that depend on the model filled in; here: unchanged."""
        return options

    @abstractmethod
    def run(
        self,
        denoiser: Denoiser,
        tokens: Tensor,
        known: Tensor,
        generator: torch.Generator,
        options: dict[str, Any],
        pick: dict[str, Any],
        trace: Trace | None,
    ) -> Tensor:
        """Fill the positions of `tokens` [n, L] where `known` [L] (bool, BOS included) is
        False. `options` are this sampler's (resolved), `pick` the token choice (temperature,
        top_k, top_p), `trace` records the steps where the sampler takes `TRACE`."""


SAMPLERS: dict[str, Sampler] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator: add one instance of `cls` to `SAMPLERS` under its name."""
    if cls.name in SAMPLERS:
        raise ValueError(f"a sampler named '{cls.name}' is registered already")
    SAMPLERS[cls.name] = cls()
    return cls


def samplers_of(row: Family) -> list[str]:
    """The samplers that can draw from models of family `row`, its default first."""
    rest = [name for name, s in SAMPLERS.items() if s.walks(row) and name != row.default_sampler]
    return [row.default_sampler, *rest]


def check_sampler(row: Family, name: str) -> Sampler:
    """The sampler `name`, after checking that it can draw from family `row`."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if not SAMPLERS[name].walks(row):
        raise ConfigError(
            f"the {name} sampler cannot draw from a '{row.name}' model; "
            f"use --sampler {' or '.join(samplers_of(row))}"
        )
    return SAMPLERS[name]


def cli_options() -> dict[str, Option]:
    """Every option some sampler declares, once each (the first declaration), by name."""
    options: dict[str, Option] = {}
    for sampler in SAMPLERS.values():
        for option in sampler.options:
            options.setdefault(option.name, option)
    return options


def readers(name: str) -> list[str]:
    """The samplers that declare option `name`."""
    return [s.name for s in SAMPLERS.values() if any(o.name == name for o in s.options)]


def sampler_options(family: str, sampler: Sampler, given: dict[str, Any]) -> dict[str, Any]:
    """`sampler`'s options: the `given` values (checked against their ranges), its defaults
    otherwise. A given option (not None) that `sampler` does not declare is an `HdlmError`
    naming the option and the samplers that read it; an unknown name is a `TypeError`."""
    known = cli_options()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}")
    mine = {option.name: option for option in sampler.options}
    for name, value in given.items():
        if value is not None and name not in mine:
            which = readers(name)
            raise HdlmError(
                f"{known[name].flag} does not apply to {family} models (sampler "
                f"{sampler.name}); it is an option of the {', '.join(which)} "
                f"sampler{'s' if len(which) > 1 else ''}"
            )
    return {
        name: option.default if given.get(name) is None else option.check(given[name])
        for name, option in mine.items()
    }
