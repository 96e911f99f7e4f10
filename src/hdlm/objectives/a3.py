"""The A3 objective: the exact likelihood of any-order, any-subset autoregression (`hdlm.a3`)."""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm import a3
from hdlm.objectives.base import Objective


class A3Objective(Objective):
    """Any-order, any-subset autoregression (`hdlm.a3`): -log p(x) = -Σ_k log p(x_{G_k} | x_{G_<k}).

    Training draws a grouping per sequence from the current curriculum stage (`at_step`, called
    by the trainer) and scores every position; `nelbo` is the exact NLL under `a3.eval_order` in
    groups of `a3.eval_group_size`. The network is `hdlm.model.a3.A3Transformer`.
    """

    def __init__(self, config, mask_id: int) -> None:
        super().__init__(config, mask_id)
        self.options = config.a3
        self.stages = a3.stages(config.a3)
        self.current = self.stages[0]

    def at_step(self, step: int) -> str:
        """Switch to the curriculum stage of training step `step`; return its label."""
        self.current = a3.stage_at(self.stages, step)
        return self.current.label

    def loss(self, net, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        stage = self.current
        groups = a3.draw_groups(
            stage.grouping, *tokens.shape, stage.group_size, generator, tokens.device,
            self.options.mean_span,
        )  # fmt: skip
        return -a3.token_log_likelihood(net, tokens, groups, self.mask_id).mean()

    def nelbo(self, net, tokens: Tensor, hidden: Tensor | None = None, samples=None) -> Tensor:
        """Exact -log p(x) [B]; with `hidden` [B, L-1] (bool), exact -log p(x_hidden | the rest):
        the other positions first (left to right), then the hidden ones in `eval_order`.
        `samples` is ignored: nothing here is estimated."""
        groups = a3.eval_groups(self.options, tokens, hidden)
        per_token = a3.token_log_likelihood(net, tokens, groups, self.mask_id)
        return -(per_token if hidden is None else torch.where(hidden, per_token, 0.0)).sum(-1)
