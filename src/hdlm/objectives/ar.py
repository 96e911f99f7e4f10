"""The AR objective: next-token cross-entropy, the exact negative log-likelihood."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.objectives.base import Objective
from hdlm.objectives.layout import InputLayout
from hdlm.processes import build_process
from hdlm.readout import MaskedCrossEntropy

if TYPE_CHECKING:  # the model package imports the objectives
    from hdlm.model.transformer import Transformer


class AutoregressiveObjective(Objective):
    """-log p(x) = -Σ_{i>=1} log p_θ(x_i | x_<i): next-token cross-entropy under a causal mask.

    `layout` and `process` are those of the model's hyperschedule twin (quenched AR, masking,
    causal, shifted), which the hyperschedule sampler walks."""

    def __init__(self, config, mask_id: int) -> None:
        super().__init__(config, mask_id)
        self.layout = InputLayout(config.diffusion, config.model.time_conditioning, mask_id)
        self.process = build_process(config.diffusion, config.model.vocab_size, mask_id)

    def token_nll(self, net: Transformer, tokens: Tensor) -> Tensor:
        """-log p_θ(x_i | x_<i) for i = 1..L-1, shape [B, L-1]."""
        logits = net(tokens[:, :-1], causal=True)
        return MaskedCrossEntropy.apply(logits, tokens[:, 1:], self.mask_id)

    def loss(self, net: Transformer, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.token_nll(net, tokens).mean()

    def nelbo(
        self, net: Transformer, tokens: Tensor, hidden: Tensor | None = None, samples=None
    ) -> Tensor:
        """Exact -log p(x) [B]; with `hidden` [B, L-1] a suffix of each row (a continuation),
        exact -log p(x_hidden | the prefix) = -Σ_{i hidden} log p_θ(x_i | x_<i). Any other
        hidden set would need the tokens after it as context, which a causal model never sees.
        `samples` is ignored: nothing here is estimated."""
        nll = self.token_nll(net, tokens)
        if hidden is None:
            return nll.sum(-1)
        if not (hidden[:, 1:] >= hidden[:, :-1]).all():
            raise HdlmError(
                "an ar model scores a continuation (hidden positions at the end of the row) "
                "exactly, not a span with text after it; infill with a3 or mdlm"
            )
        return torch.where(hidden, nll, 0.0).sum(-1)
