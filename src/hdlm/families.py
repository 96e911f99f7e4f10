"""The families table: the one place that knows which families exist and what each one is.

A family is a row of configuration, not a code path: which objective trains it, which network it
runs, the samplers that can draw from it (the first is its default), and the preset of its
`diffusion` section (schedule, process, time, attention, read-out; keys a config leaves unset take
these values). `ar` carries a preset too: quenched AR + masking + causal attention + shifted
read-out *is* an AR model (design.md §2), which is how the hyperschedule sampler walks AR
checkpoints. Everything else asks this table: config validation, `LanguageModel`, the samplers,
the study, the trainer. (Which sampler reads which option is `hdlm.sampling.options`'.)

This module is data only (it imports nothing of hdlm but its errors), so that `hdlm.config` can
use it without reaching above itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from hdlm.errors import ConfigError

HYPERSCHEDULE_SAMPLERS = ("ancestral", "acs", "remask")  # masking reverse steps (+ corrections)
TAU_LEAPING_SAMPLERS = ("tweedie", "euler")  # γ-hybrid reverse steps (SEDD)


@dataclass(frozen=True)
class Family:
    name: str
    objective: str  # "ar" | "diffusion" | "score-entropy" | "a3" (`hdlm.objectives.OBJECTIVES`)
    network: str  # "transformer" | "a3" (`hdlm.model.NETWORKS`)
    samplers: tuple[str, ...]  # the first one is the default
    diffusion: dict[str, str] | None = field(default=None)  # preset; None: no diffusion section
    summary: str = ""

    @property
    def default_sampler(self) -> str:
        return self.samplers[0]

    @property
    def is_a3(self) -> bool:
        return self.network == "a3"

    @property
    def causal(self) -> bool:
        """Whether the model sees only the tokens before a position (an AR model)."""
        return self.objective == "ar"

    @property
    def exact(self) -> bool:
        """Whether its likelihood is exact (AR, A3) rather than a diffusion bound."""
        return self.objective in ("ar", "a3")


def _masking(schedule: str | None, time: str, attention: str) -> dict[str, str]:
    preset = {"process": "absorbing", "time": time, "attention": attention, "readout": "aligned"}
    return preset | ({"schedule": schedule} if schedule else {})


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "ar", "ar", "transformer", ("ar", *HYPERSCHEDULE_SAMPLERS),
            _masking("quenched_ar", "discrete", "causal") | {"readout": "shifted"},
            "next-token prediction (its hyperschedule twin: quenched AR, causal, shifted)",
        ),
        Family(
            "mdlm", "diffusion", "transformer", HYPERSCHEDULE_SAMPLERS,
            _masking("flat:1000", "count", "full"), "masked diffusion (MDLM)",
        ),
        Family(
            "block-diffusion", "diffusion", "transformer", HYPERSCHEDULE_SAMPLERS,
            _masking("block:16:16", "discrete", "two-copy"),
            "blocks denoised left to right, trained on the [noisy ; clean] layout (BD3-LM)",
        ),
        Family(
            "slide", "diffusion", "transformer", HYPERSCHEDULE_SAMPLERS,
            _masking("slide:16:16", "discrete", "schedule"), "slide annealing (HDLM)",
        ),
        Family(
            "eps-hybrid", "diffusion", "transformer", ("eps-chain", *HYPERSCHEDULE_SAMPLERS),
            _masking("flat:1000", "count", "full") | {"process": "eps-hybrid"},
            "masking plus ε uniform replacements (HDLM), exact NELBO",
        ),
        Family(
            "gamma-hybrid", "score-entropy", "transformer", TAU_LEAPING_SAMPLERS,
            _masking("flat:1000", "continuous", "full") | {"process": "gamma-hybrid"},
            "the γ-hybrid CTMC (HDLM), score entropy, τ-leaping",
        ),
        Family(
            "hyperschedule", "diffusion", "transformer", HYPERSCHEDULE_SAMPLERS,
            _masking(None, "discrete", "schedule"), "any schedule, including a custom table",
        ),
        Family(
            "a3", "a3", "a3", ("a3",), None,
            "any-order, any-subset autoregression with two-stream attention (A3)",
        ),
    )
}  # fmt: skip


def family(name: str) -> Family:
    """The row of family `name`; an unknown name is a config error with a suggestion."""
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, FAMILIES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown family '{name}'; {hint}choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_sampler(row: Family, sampler: str) -> None:
    """Refuse a sampler the family cannot be drawn with, naming the ones it can."""
    known = {s for f in FAMILIES.values() for s in f.samplers}
    if sampler not in known:
        raise ConfigError(f"unknown sampler '{sampler}'; choose one of {', '.join(sorted(known))}")
    if sampler not in row.samplers:
        raise ConfigError(
            f"the {sampler} sampler cannot draw from a '{row.name}' model; "
            f"use --sampler {' or '.join(row.samplers)}"
        )
