"""HDLM's ε-hybrid: masking plus, once at t = 0+, a uniform resampling with probability ε."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.processes import base
from hdlm.processes.absorbing import Absorbing
from hdlm.processes.base import (
    MixtureKL,
    NoiseProcess,
    clean_log_prob,
    data_index,
    data_log_probs,
    levels,
    resample,
    reveal_fraction,
    xlogx,
)

REVEALS = ("mixture", "model")  # what `chain_step` reveals a token from
FINALS = ("sample", "greedy", "none")  # `final_step`: reconstruction, its argmax, or nothing


def revealed_token_kl(data_lp: Tensor, x0_index: Tensor, eps: float) -> Tensor:
    """KL(pi_eps(. | x0) || (1 - eps) p_theta + eps u), pi_eps(. | x0) = (1 - eps) e_x0 + eps u.

    The distribution of a token when it is revealed under the eps-hybrid (true and modelled), over
    the N data ids; `data_lp` is `data_log_probs(...)`. At eps = 0 it is -log p_theta(x0).
    """
    num_data = data_lp.shape[-1]
    floor = eps / num_data
    top = 1 - eps + floor
    neg_entropy = xlogx(top) + (num_data - 1) * xlogx(floor)
    log_model = torch.logaddexp(data_lp + math.log1p(-eps), _log_tensor(floor, data_lp))
    at_x0 = log_model.gather(-1, x0_index.unsqueeze(-1)).squeeze(-1)
    cross_entropy = -(1 - eps) * at_x0 - floor * log_model.sum(-1)
    return neg_entropy + cross_entropy


def _log_tensor(p: float, like: Tensor) -> Tensor:
    return torch.tensor(p, dtype=like.dtype, device=like.device).log()


@dataclass(frozen=True)
class EpsHybrid(NoiseProcess):
    """HDLM's eps-hybrid: q(x_t | x0) = t e_MASK + (1 - t) pi_eps(. | x0) for t > 0, where
    pi_eps(. | x0) = (1 - eps) e_x0 + eps u (u uniform on data ids), and x_0 = x0.

    The Markov chain with these marginals resamples each token with probability eps once, at
    t = 0+, then masks like `Absorbing`. Its NELBO (docs/math.md): a masked token revealed between
    t and s > 0 costs (t - s) / t KL(pi_eps(. | x0) || (1 - eps) p_theta + eps u); visible tokens
    cost nothing for s > 0; the final step to s = 0 costs -log p_theta(x0 | x_t) at every position
    (the reconstruction that undoes the jump). eps = 0 gives `Absorbing` exactly.
    """

    eps: float
    mask_id: int
    vocab_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {self.eps}")

    @property
    def has_reconstruction(self) -> bool:
        return self.eps > 0

    # the masking samplers (ancestral, ACS, remasking) reveal tokens from p_θ as under masking:
    # the paper's heuristic, not the chain the NELBO bounds (`chain_step`, `final_step`)
    reverse_step = Absorbing.reverse_step

    def chain_step(
        self,
        current: Tensor,
        t: Tensor,
        s: Tensor,
        propose: Callable[[Tensor], Tensor],
        generator: torch.Generator | None = None,
        reveal: str = "mixture",
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One reverse step t -> s of the chain the continuous-time NELBO bounds (s >= 0 is
        read as 0+): a masked token is revealed with probability (t - s) / t as a draw from
        (1 - ε) p_θ(x0 | x_t) + ε u (`reveal="mixture"`; `"model"`: from p_θ alone), visible
        tokens are kept. `propose(needed)` draws from p_θ(x0 | x_t) where `needed` (as in
        `Absorbing.reverse_step`). Returns what `reverse_step` does.
        """
        if reveal not in REVEALS:
            raise ValueError(f"unknown reveal '{reveal}'; use one of {REVEALS}")

        def mixture(needed: Tensor) -> Tensor:
            proposal = propose(needed)
            if reveal == "model" or self.eps == 0:
                return proposal
            return resample(proposal, self.eps, self.mask_id, self.num_data, generator)

        return Absorbing.reverse_step(self, current, t, s, mixture, generator)

    def final_step(self, visible: Tensor, propose: Callable[[], Tensor], final: str) -> Tensor:
        """The chain's last step 0+ -> 0: every position re-decoded from p_θ(x0 | x_{0+}), the
        reconstruction the NELBO pays -log p_θ(x0 | x_{0+}) for (`final="sample"`), or its
        argmax (`"greedy"`, MDLM's final denoising), or kept (`"none"`). `propose()` draws
        from (`"greedy"`: argmax of) p_θ(x0 | x_{0+}) at every position of `visible`."""
        if final not in FINALS:
            raise ValueError(f"unknown final step '{final}'; use one of {FINALS}")
        return visible if final == "none" else propose()

    def corrupt_visible(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The jump at t = 0+: each non-MASK token is resampled uniformly with probability eps.

        At eps = 0 nothing is drawn, so the generator advances exactly as under `Absorbing`."""
        if self.eps == 0:
            return x
        return resample(x, self.eps, self.mask_id, self.num_data, generator)

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mask with probability t (the same draws as `Absorbing`), then `corrupt_visible` where
        t > 0 (the state at level 0 is x0 itself)."""
        x_t = Absorbing(self.mask_id).corrupt(x0, t, generator)
        return torch.where(torch.as_tensor(t) > 0, self.corrupt_visible(x_t, generator), x_t)

    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """For t > s > 0: 1[x_t = MASK] (t - s) / t KL(pi_eps(. | x0) || (1 - eps) p_theta + eps u).
        For t > s = 0: -log p_theta(x0 | x_t) at every position (masked or visible; at eps = 0 a
        visible token is carried over and costs 0, as in `Absorbing`)."""
        t, s = levels(t, x0, log_probs), levels(s, x0, log_probs)
        masked = x_t == self.mask_id
        nll = -clean_log_prob(log_probs, x0, self.mask_id)
        reveal = revealed_token_kl(
            data_log_probs(log_probs, self.mask_id), data_index(x0, self.mask_id), self.eps
        )
        reconstruct = masked | self.has_reconstruction
        loss = torch.where(
            s == 0,
            torch.where(reconstruct, nll, 0.0),
            torch.where(masked, reveal_fraction(t, s) * reveal, 0.0),
        )
        return torch.where(t > s, loss, 0.0)

    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """1[x_t = MASK] (dt / t) KL(pi_eps(. | x0) || (1 - eps) p_theta + eps u); t >= T_EPS.

        Visible tokens have rate 0; the continuous-time NELBO adds the reconstruction
        -log p_theta(x0 | x_{0+}) at t = 0+ (`objectives.diffusion`).
        """
        t, dt = levels(t, x0, log_probs), levels(dt, x0, log_probs)
        reveal = revealed_token_kl(
            data_log_probs(log_probs, self.mask_id), data_index(x0, self.mask_id), self.eps
        )
        return torch.where(x_t == self.mask_id, dt / t.clamp_min(base.T_EPS) * reveal, 0.0)

    def rate_loss_of_logits(
        self, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """`rate_loss` straight from the logits: the reveal KL of the masked rows only, fused
        (`MixtureKL` with b = 1 - ε; same values)."""
        masked = x_t == self.mask_id
        b = torch.full(x0.shape, 1 - self.eps, device=x0.device)
        kl, _ = MixtureKL.apply(logits, x0, x0, masked, b, self.mask_id)
        t, dt = levels(t, x0, kl), levels(dt, x0, kl)
        return torch.where(masked, dt / t.clamp_min(base.T_EPS) * kl, 0.0)

    def official_rate_loss(
        self,
        log_probs: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        dt: Tensor,
        lam: float = 1.0,
        visible_over_one_minus_t: bool = True,
    ) -> Tensor:
        """The HDLM reference code's weighted cross-entropy, a training heuristic, not a NELBO.

        dt (-log p_theta(x0 | x_t)) times: 1 / t on masked positions, lam (1 - eps) on visible
        corrupted ones (x_t != x0), lam eps on visible clean ones, the two visible weights divided
        by (1 - t) when `visible_over_one_minus_t` (the reference code has both variants). The
        reference marks a token corrupted when it was resampled, even onto x0; here x_t != x0.
        docs/math.md compares it with the exact NELBO. t is clamped to [T_EPS, 1 - T_EPS].
        """
        t = levels(t, x0, log_probs).clamp(base.T_EPS, 1 - base.T_EPS)
        dt = levels(dt, x0, log_probs)
        nll = -clean_log_prob(log_probs, x0, self.mask_id)
        visible = self.visible_weights(x0, x_t, t if visible_over_one_minus_t else 0 * t, lam)
        weight = torch.where(x_t == self.mask_id, 1 / t, visible)
        return dt * weight * nll

    def visible_weights(self, x0: Tensor, x_t: Tensor, t: Tensor, lam: float) -> Tensor:
        """The reference code's weight of -log p_θ(x0 | x_t) at visible positions: λ (1 - ε)
        where x_t is corrupted (x_t != x0), λ ε where it is clean, divided by (1 - t); 0 at
        masked positions. It trains the output of visible tokens at every level t (the
        proposals ACS re-draws from), which the NELBO trains only at t = 0+."""
        weight = torch.where(x_t == x0, lam * self.eps, lam * (1 - self.eps))
        weight = weight / (1 - t).clamp_min(base.T_EPS)
        return torch.where(x_t == self.mask_id, 0.0, weight)
