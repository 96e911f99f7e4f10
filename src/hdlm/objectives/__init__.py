"""Training losses and evaluation NELBOs: one objective per kind, chosen by the families table.

* `ar.py`: next-token cross-entropy (exact NLL);
* `diffusion.py`: the hyperschedule NELBO (schedule x process x attention x read-out) and score
  entropy for the γ-hybrid; `layout.py` lays out what their network sees;
* `a3.py`: any-order, any-subset autoregression (exact NLL under a grouping).

`base.Objective` is the interface (`loss`, `nelbo`, `scored_tokens`, `at_step`).
"""

from __future__ import annotations

from hdlm.families import family
from hdlm.objectives.a3 import A3Objective
from hdlm.objectives.ar import AutoregressiveObjective
from hdlm.objectives.base import Objective
from hdlm.objectives.diffusion import DiffusionObjective, ScoreEntropyObjective
from hdlm.objectives.layout import InputLayout

__all__ = [
    "A3Objective", "AutoregressiveObjective", "DiffusionObjective", "InputLayout", "Objective",
    "ScoreEntropyObjective", "build_objective",
]  # fmt: skip

OBJECTIVES: dict[str, type[Objective]] = {
    "ar": AutoregressiveObjective,
    "diffusion": DiffusionObjective,
    "score-entropy": ScoreEntropyObjective,
    "a3": A3Objective,
}


def build_objective(config, mask_id: int) -> Objective:
    """The objective of `config.family` (its row in the families table names it)."""
    return OBJECTIVES[family(config.family).objective](config, mask_id)
