"""Training losses and evaluation NELBOs, one objective per family.

Every objective sees blocks of tokens [B, L] whose column 0 is BOS (never scored) and exposes:

* `loss(net, tokens, generator)`: a scalar to minimise, in nats per scored token (a Monte Carlo
  estimate of the NELBO for diffusion families);
* `nelbo(net, tokens)`: per-sequence negative log-likelihood bound in nats, the quantity
  perplexity is computed from (exact for AR);
* `scored_tokens(tokens)`: how many tokens of each sequence the NELBO scores (L - 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from hdlm.model.transformer import Transformer


class AutoregressiveObjective:
    """-log p(x) = -Σ_{i>=1} log p_θ(x_i | x_<i): next-token cross-entropy under a causal mask."""

    name = "ar"
    default_sampler = "ar"

    def __init__(self, config) -> None:
        self.config = config

    def token_nll(self, net: Transformer, tokens: Tensor) -> Tensor:
        """-log p_θ(x_i | x_<i) for i = 1..L-1, shape [B, L-1]."""
        logits = net(tokens[:, :-1], causal=True)
        return F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")

    def loss(self, net: Transformer, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.token_nll(net, tokens).mean()

    def nelbo(self, net: Transformer, tokens: Tensor) -> Tensor:
        return self.token_nll(net, tokens).sum(-1)

    @staticmethod
    def scored_tokens(tokens: Tensor) -> int:
        return tokens.shape[1] - 1


FAMILIES = {"ar": AutoregressiveObjective}


def build_objective(config):
    """The objective of `config.family` (config validation has checked the name)."""
    return FAMILIES[config.family](config)
