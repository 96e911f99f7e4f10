"""Masking (MDLM): each token is MASK with probability t, itself otherwise; and its reverse step,
with HDLM's Adaptive Correction Sampler and ReMDM remasking as options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.processes import base
from hdlm.processes.base import NoiseProcess, clean_log_prob, levels, reveal_fraction

CORRECTIONS = ("none", "acs", "remask")


def step_coins(current: Tensor, probs, generator: torch.Generator | None) -> Tensor:
    """One uniform coin per entry of `current` [n, A], or zeros (no draw) when every
    probability of `probs` is 0 or 1, so deterministic steps leave the generator untouched."""
    if any(((p > 0) & (p < 1)).any() for p in probs):
        return torch.rand(current.shape, generator=generator, device=current.device)
    return torch.zeros(current.shape, device=current.device)


@dataclass(frozen=True)
class Absorbing(NoiseProcess):
    """Masking (MDLM): q(x_t | x0) = alpha(t) e_x0 + (1 - alpha(t)) e_MASK."""

    mask_id: int
    vocab_size: int = 0  # unused: masking needs no vocabulary

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t = MASK with probability t, x0 otherwise."""
        masked = torch.rand(x0.shape, generator=generator, device=x0.device) < t
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0)

    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """1[x_t = MASK] (t - s) / t (-log p_theta(x0 | x_t)).

        A masked token is revealed between t and s with probability (t - s) / t, as x0 in truth
        and as a draw from p_theta in the model; visible tokens are carried over on both sides.
        """
        return self.step_loss_of_nll(-clean_log_prob(log_probs, x0, self.mask_id), x_t, t, s)

    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """1[x_t = MASK] (dt / t) (-log p_theta(x0 | x_t)) (MDLM's 1/t weight); t >= T_EPS."""
        return self.rate_loss_of_nll(-clean_log_prob(log_probs, x0, self.mask_id), x_t, t, dt)

    # Only -log p_theta(x0 | x_t) enters: these take it directly ([B, L]), so that a caller can
    # compute it with a fused cross-entropy instead of full log-probabilities.

    def step_loss_of_nll(self, nll: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        t, s = levels(t, x_t, nll), levels(s, x_t, nll)
        return torch.where(x_t == self.mask_id, reveal_fraction(t, s) * nll, 0.0)

    def rate_loss_of_nll(self, nll: Tensor, x_t: Tensor, t: Tensor, dt: Tensor) -> Tensor:
        t, dt = levels(t, x_t, nll), levels(dt, x_t, nll)
        return torch.where(x_t == self.mask_id, dt / t.clamp_min(base.T_EPS) * nll, 0.0)

    def reverse_step(
        self,
        current: Tensor,
        t: Tensor,
        s: Tensor,
        propose: Callable[[Tensor], Tensor],
        generator: torch.Generator | None = None,
        correction: str = "none",
        eta: float = 0.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One reverse step t -> s for tokens `current` [n, A] at levels t, s [A] (t > 0).

        A masked token is revealed with probability p = (t - s) / t, its token taken from
        `propose(needed)`: draws from p_θ(x0 | x_t) [K] for the K entries where the bool [n, A]
        `needed` is True, in row-major order (the coins are drawn first, so only the tokens that
        change are ever proposed). Corrections of visible tokens:
        * `acs` (HDLM's Adaptive Correction Sampler): re-drawn from a proposal with probability
          η (1 - p);
        * `remask` (ReMDM, "cap" schedule): masked again with probability σ = min(η, s / (1 - t)),
          and masked tokens revealed with ((1 - s) - (1 - σ)(1 - t)) / t instead of p.
        Random coins are drawn only where a probability lies strictly between 0 and 1, so a
        quenched-AR walk consumes the generator exactly as the AR sampler does. Returns the new
        tokens and which positions were revealed, corrected (changed by a re-draw; `acs` only),
        remasked (`remask` only).
        """
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown correction '{correction}'; use one of {CORRECTIONS}")
        masked = current == self.mask_id
        probs = {"reveal": reveal_fraction(t, s)}  # only the events this correction has
        if correction == "acs":
            probs["redraw"] = eta * (1 - probs["reveal"])
        elif correction == "remask":
            remask_prob = torch.minimum(torch.full_like(s, eta), s / (1 - t).clamp_min(base.T_EPS))
            probs["remask"] = remask_prob
            probs["reveal"] = ((1 - s) - (1 - remask_prob) * (1 - t)) / t
        coins = step_coins(current, probs.values(), generator)
        reveal = masked & (coins < probs["reveal"])
        needed, events = reveal, {"revealed": reveal}
        if "redraw" in probs:
            redraw = ~masked & (coins < probs["redraw"])
            needed = reveal | redraw
        updated = current.masked_scatter(needed, propose(needed))
        if "redraw" in probs:
            events["corrected"] = redraw & (updated != current)
        if "remask" in probs:
            remask = ~masked & (coins < probs["remask"])
            updated = torch.where(remask, torch.full_like(current, self.mask_id), updated)
            events["remasked"] = remask
        return updated, events
