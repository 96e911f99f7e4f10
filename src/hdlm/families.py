"""The families table: the one place that knows which families exist and what each one is.

A family is a row of configuration, not a code path: which objective trains it, which network it
runs, the sampler it is drawn with by default, and the preset of its
`diffusion` section (schedule, process, time, attention, read-out; keys a config leaves unset take
these values). `ar` carries a preset too: quenched AR + masking + causal attention + shifted
read-out *is* an AR model (design.md §2), which is how the hyperschedule sampler walks AR
checkpoints. Everything else asks this table: config validation, `LanguageModel`, the samplers,
the study, the trainer. Which other samplers can draw from a family is the samplers' own
declaration (`hdlm.sampling.registry.samplers_of`).

This module is data only (it imports nothing of hdlm but its errors), so that `hdlm.config` can
use it without reaching above itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from hdlm.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    objective: str  # "ar" | "diffusion" | "score-entropy" | "a3" (`hdlm.objectives.OBJECTIVES`)
    network: str  # "transformer" | "a3" (`hdlm.model.NETWORKS`)
    default_sampler: str  # a name of the sampler registry (`hdlm.sampling.SAMPLERS`)
    diffusion: dict[str, str] | None = field(default=None)  # preset; None: no diffusion section
    summary: str = ""

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
            "ar", "ar", "transformer", "ar",
            _masking("quenched_ar", "discrete", "causal") | {"readout": "shifted"},
            "next-token prediction (its hyperschedule twin: quenched AR, causal, shifted)",
        ),
        Family(
            "mdlm", "diffusion", "transformer", "ancestral",
            _masking("flat:1000", "count", "full"), "masked diffusion (MDLM)",
        ),
        Family(
            "block-diffusion", "diffusion", "transformer", "ancestral",
            _masking("block:16:16", "discrete", "two-copy"),
            "blocks denoised left to right, trained on the [noisy ; clean] layout (BD3-LM)",
        ),
        Family(
            "slide", "diffusion", "transformer", "ancestral",
            _masking("slide:16:16", "discrete", "schedule"), "slide annealing (HDLM)",
        ),
        Family(
            "eps-hybrid", "diffusion", "transformer", "eps-chain",
            _masking("flat:1000", "count", "full") | {"process": "eps-hybrid"},
            "masking plus ε uniform replacements (HDLM), exact NELBO",
        ),
        Family(
            "gamma-hybrid", "score-entropy", "transformer", "tweedie",
            _masking("flat:1000", "continuous", "full") | {"process": "gamma-hybrid"},
            "the γ-hybrid CTMC (HDLM), score entropy, τ-leaping",
        ),
        Family(
            "hyperschedule", "diffusion", "transformer", "ancestral",
            _masking(None, "discrete", "schedule"), "any schedule, including a custom table",
        ),
        Family(
            "a3", "a3", "a3", "a3", None,
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
