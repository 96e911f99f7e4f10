"""What every objective provides (the trainer, the evaluator and `LanguageModel` rely on it)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from hdlm.denoiser import Denoiser


class Objective(ABC):
    """A family's loss and likelihood bound over blocks [B, L] whose column 0 is BOS.

    * `loss(net, tokens, generator)`: a scalar to minimise, nats per scored token (for diffusion
      families a Monte Carlo estimate of the NELBO);
    * `nelbo(net, tokens, hidden=None, samples=None)`: per-sequence -log p bound in nats [B]
      (exact for AR and A3); with `hidden` [B, L-1] the bound on -log p(x_hidden | the rest),
      where defined; `samples`: Monte Carlo draws per sequence of an estimated bound;
    * `at_step(step)`: switch to the curriculum stage of a training step (A3); None when the
      objective has no stages;
    * `denoiser(net, eos_id)`: what the samplers receive (`hdlm.denoiser.Denoiser`): the
      network with this objective's input `layout` and noise `process` (None where it has none).
    """

    layout = None  # an `InputLayout` (diffusion objectives, and AR's hyperschedule twin)
    process = None  # a `NoiseProcess` (likewise)

    def __init__(self, config, mask_id: int) -> None:
        self.config, self.mask_id = config, mask_id

    @staticmethod
    def scored_tokens(tokens: Tensor) -> int:
        """Tokens of each sequence the NELBO scores: all but BOS."""
        return tokens.shape[1] - 1

    def at_step(self, step: int) -> str | None:
        return None

    def denoiser(self, net, eos_id: int | None = None) -> Denoiser:
        """The object every sampler walks: `net` read as this objective trains it."""
        return Denoiser(net, self.mask_id, eos_id, self.layout, self.process)

    @abstractmethod
    def loss(self, net, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        """The training loss of one batch, nats per scored token."""

    @abstractmethod
    def nelbo(self, net, tokens: Tensor, hidden: Tensor | None = None, samples=None) -> Tensor:
        """Per-sequence NELBO [B] in nats."""

    def nelbo_terms(
        self, net, tokens: Tensor, hidden: Tensor | None = None, samples=None
    ) -> dict[str, Tensor]:
        """The NELBO's terms per sequence [B] in nats, summing to `nelbo` (here: one, the NLL)."""
        return {"nll": self.nelbo(net, tokens, hidden=hidden, samples=samples)}
