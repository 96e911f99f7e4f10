"""What a sampler receives: the `Denoiser` an objective declares, and the reverse-step protocols.

A sampler draws from a network it is given, never from a `LanguageModel`: the objective builds
one `Denoiser` (`Objective.denoiser`) holding everything a reverse step may read, and nothing
else:

* `net`: the network (a `Transformer`, or an `A3Transformer` for A3);
* `layout`: how the network sees its input (`objectives.InputLayout`: attention, read-out,
  noise levels, the training schedule); None for A3;
* `process`: the forward noising process, whose reverse step the sampler walks; None for A3;
* `mask_id`, `eos_id`: the MASK token (never a clean token) and end of text.

Which reverse steps a process offers is declared by the protocols below, so a sampler asks for a
capability (`needs`), not for a concrete process class:

* `MaskingReverse`: reveal masked tokens from p_θ(x0 | x_t) (`Absorbing`, `EpsHybrid`), with
  HDLM's ACS and ReMDM corrections;
* `ChainReverse`: the ε-hybrid's own chain, the one its NELBO bounds (`EpsHybrid`);
* `LeapingReverse`: analytic and Euler τ-leaping of a CTMC (`GammaHybrid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from hdlm.readout import clean_log_probs

Proposal = Callable[[Tensor], Tensor]
"""`propose(needed)`: draws from p_θ(x0 | x_t) [K] for the K entries where `needed` is True."""


@runtime_checkable
class MaskingReverse(Protocol):
    """A masking reverse step t -> s over tokens `current` [n, A] at levels t, s [A]: a masked
    token is revealed with probability (t - s) / t from `propose`; `correction` (none, acs,
    remask) with strength `eta` may re-draw or re-mask visible ones. Returns the new tokens and
    the events [n, A] (revealed, corrected, remasked)."""

    def reverse_step(
        self,
        current: Tensor,
        t: Tensor,
        s: Tensor,
        propose: Proposal,
        generator: torch.Generator | None = None,
        correction: str = "none",
        eta: float = 0.0,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


@runtime_checkable
class ChainReverse(Protocol):
    """The reverse chain a NELBO with a reconstruction term bounds: `chain_step` reveals as
    `MaskingReverse.reverse_step` does (from a `reveal` distribution), `final_step` re-decodes
    the fully visible sequence at 0+ -> 0 (`final`: sample, greedy or none)."""

    def chain_step(
        self,
        current: Tensor,
        t: Tensor,
        s: Tensor,
        propose: Proposal,
        generator: torch.Generator | None = None,
        reveal: str = "mixture",
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def final_step(self, visible: Tensor, propose: Callable[[], Tensor], final: str) -> Tensor: ...


@runtime_checkable
class LeapingReverse(Protocol):
    """τ-leaping of a CTMC from levels t to s [n, L] given the network's clean-token
    log-scores [n, L, V]: `tweedie_step` is exact (Σ_x0 p_θ(x0 | x_t) q(x_s | x_t, x0)),
    `euler_step` freezes the reverse rates at t; generation starts from `sample_prior`."""

    def sample_prior(self, shape, device, generator: torch.Generator | None = None) -> Tensor: ...

    def tweedie_step(
        self, log_probs: Tensor, x_t: Tensor, t: Tensor, s: Tensor, generator=None
    ) -> Tensor: ...

    def euler_step(
        self, log_probs: Tensor, x_t: Tensor, t: Tensor, s: Tensor, generator=None
    ) -> Tensor: ...


@dataclass(frozen=True, eq=False)
class Denoiser:
    """A network with what its samplers need to walk it (module docstring)."""

    net: Any  # a `Transformer` or `A3Transformer` (the model package imports this module)
    mask_id: int
    eos_id: int | None = None
    layout: Any = None  # an `objectives.InputLayout`, None for A3
    process: Any = None  # a `processes.NoiseProcess`, None for A3

    @property
    def device(self) -> torch.device:
        return self.net.embed.weight.device

    def log_probs(self, hidden: Tensor) -> Tensor:
        """log p_θ(x0 | x_t) [..., V] (MASK excluded) read out of hidden states [..., d]."""
        return clean_log_probs(self.net.head(hidden), self.mask_id)
