"""Forward noising processes and their exact NELBO terms, one noise level per position.

Every position i carries its own level t_i in [0, 1] (0 clean, 1 fully noised) and the schedule is
linear: a token is untouched with probability alpha(t) = 1 - t. Three processes over a vocabulary
of V ids, one of which is MASK; the N = V - 1 other ids are the "data ids" (special tokens such as
BOS/EOS included):

* `Absorbing`: x_t = MASK with probability t, x0 otherwise (MDLM).
* `Uniform`:   x_t = a uniform draw over the N data ids with probability t, x0 otherwise.
* `EpsHybrid`: masked with probability t; a token that stays visible at t > 0 is a uniform draw
  with probability eps (HDLM's eps-hybrid). Its Markov chain jumps once at t = 0+ (the eps
  resampling) and is absorbing afterwards; eps = 0 is `Absorbing`.

Each process gives `corrupt` (sample q(x_t | x0)), `step_loss` (the exact discrete-time NELBO term
KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) of a reverse step t -> s, the reconstruction term
included when s = 0) and `rate_loss` (the continuous-time integrand). The derivations are in
docs/math.md.

Conventions shared by every loss:

* `log_probs` [B, L, V] are the network's log-probabilities of the clean token (x0
  parametrisation, aligned read-out), normalised over V (a log_softmax output). The model's reverse
  step is p_theta(x_s | x_t) = sum_{x0'} q(x_s | x_t, x0') p_theta(x0' | x_t), where
  p_theta(x0' | x_t) is `log_probs` restricted to the x0' that could have produced x_t and
  renormalised: MASK is never a clean token, so its probability is always dropped (a no-op when
  the MASK logit is -inf), and under `Absorbing` a visible x_t can only come from x0' = x_t, so
  visible positions are carried over (SUBS) whatever the network says there.
* `log_probs` must be finite on the data ids (a log_softmax output is); `Absorbing` only reads
  the entries at x0 and at MASK.
* Levels t, s and rates dt are tensors broadcastable to x0's shape. Losses are computed in
  log_probs' dtype (use float32 or float64) and returned as [B, L] tensors, 0 where t == s or
  dt == 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

T_EPS = 1e-6
"""Levels are clamped to [T_EPS, 1 - T_EPS] where a formula divides by t or by 1 - t."""


def alpha(t: Tensor) -> Tensor:
    """Linear schedule: probability that a token is untouched at level t, alpha(t) = 1 - t."""
    return 1 - t


def reveal_fraction(t: Tensor, s: Tensor) -> Tensor:
    """q(x_s != MASK | x_t = MASK) = (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t."""
    return (t - s) / t.clamp_min(T_EPS)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (log1mexp(-inf) = 0)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def clean_log_prob(log_probs: Tensor, x0: Tensor, mask_id: int) -> Tensor:
    """log p_theta(x0 | x_t) with the MASK entry dropped and the rest renormalised: [B, L]."""
    at = log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return at - log1mexp(log_probs[..., mask_id])


def data_log_probs(log_probs: Tensor, mask_id: int) -> Tensor:
    """log p_theta(x0 = j | x_t) over the N data ids (MASK removed, renormalised): [B, L, N]."""
    data = torch.cat((log_probs[..., :mask_id], log_probs[..., mask_id + 1 :]), dim=-1)
    return data - log1mexp(log_probs[..., mask_id : mask_id + 1])


def data_index(x: Tensor, mask_id: int) -> Tensor:
    """Position of token ids among the data ids (the ids with MASK removed)."""
    return x - (x > mask_id).long()


def random_data_tokens(
    like: Tensor, mask_id: int, num_data: int, generator: torch.Generator | None = None
) -> Tensor:
    """Token ids drawn uniformly from the num_data ids other than MASK, shaped like `like`."""
    r = torch.randint(num_data, like.shape, generator=generator, device=like.device)
    return r + (r >= mask_id).long()


def resample(
    x: Tensor,
    prob: Tensor | float,
    mask_id: int,
    num_data: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Replace each non-MASK token by a uniform data id with probability `prob`; MASK stays."""
    hit = torch.rand(x.shape, generator=generator, device=x.device) < prob
    fresh = random_data_tokens(x, mask_id, num_data, generator)
    return torch.where(hit & (x != mask_id), fresh, x)


def step_resample_prob(t: Tensor, s: Tensor) -> Tensor:
    """Probability that the uniform chain resamples a token between levels s < t:
    1 - alpha_t / alpha_s = (t - s) / (1 - s)."""
    return (t - s) / alpha(s)


def uniform_marginal(x: Tensor, r: Tensor, num_data: int) -> Tensor:
    """(1 - r) e_x + r u over the data ids (u uniform): [B, L, N].

    As a function of its last index j this is q(j | x) for the kernel that resamples its input
    uniformly with probability r; the kernel is symmetric, so it is also q(x | j).
    """
    one_hot = torch.nn.functional.one_hot(x, num_data).to(r.dtype)
    r = r.unsqueeze(-1)
    return (1 - r) * one_hot + r / num_data


def log_push_forward(log_w: Tensor, r: Tensor) -> Tensor:
    """log sum_i w_i q(j | i) for the uniform kernel q(j | i) = (1 - r) e_i(j) + r / N."""
    num_data = log_w.shape[-1]
    spread = torch.log(r) - math.log(num_data) + torch.logsumexp(log_w, dim=-1)
    return torch.logaddexp(torch.log1p(-r).unsqueeze(-1) + log_w, spread.unsqueeze(-1))


def poisson_divergence(log_rate: Tensor, log_model_rate: Tensor) -> Tensor:
    """r_hat - r + r log(r / r_hat) = r phi(log r_hat - log r), phi(y) = e^y - 1 - y >= 0.

    The KL rate between two jump processes per target state; written with phi so that it stays
    accurate when r_hat is close to r.
    """
    y = log_model_rate - log_rate
    return log_rate.exp() * (torch.expm1(y) - y)


def revealed_token_kl(data_lp: Tensor, x0_index: Tensor, eps: float) -> Tensor:
    """KL(pi_eps(. | x0) || (1 - eps) p_theta + eps u), pi_eps(. | x0) = (1 - eps) e_x0 + eps u.

    The distribution of a token when it is revealed under the eps-hybrid (true and modelled), over
    the N data ids; `data_lp` is `data_log_probs(...)`. At eps = 0 it is -log p_theta(x0).
    """
    num_data = data_lp.shape[-1]
    floor = eps / num_data
    top = 1 - eps + floor
    neg_entropy = _xlogx(top) + (num_data - 1) * _xlogx(floor)
    log_model = torch.logaddexp(data_lp + math.log1p(-eps), _log_tensor(floor, data_lp))
    at_x0 = log_model.gather(-1, x0_index.unsqueeze(-1)).squeeze(-1)
    cross_entropy = -(1 - eps) * at_x0 - floor * log_model.sum(-1)
    return neg_entropy + cross_entropy


def _xlogx(p: float) -> float:
    return p * math.log(p) if p > 0 else 0.0


def _log_tensor(p: float, like: Tensor) -> Tensor:
    return torch.tensor(p, dtype=like.dtype, device=like.device).log()


def _levels(t: Tensor | float, x0: Tensor, like: Tensor) -> Tensor:
    return torch.broadcast_to(torch.as_tensor(t, dtype=like.dtype, device=like.device), x0.shape)


class NoiseProcess(ABC):
    """A forward process q(x_t | x0), independent across positions, with its NELBO terms."""

    mask_id: int

    @property
    def has_reconstruction(self) -> bool:
        """Whether the continuous-time NELBO has a term at t = 0+ besides the integral of
        `rate_loss` (a jump of the forward chain at t = 0+, see `EpsHybrid`)."""
        return False

    @abstractmethod
    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x0) independently per position at its own level t."""

    @abstractmethod
    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) per position, for a reverse step t -> s <= t.

        At s = 0 the true posterior is the point mass on x0 and the term is the reconstruction
        -log p_theta(x_s = x0 | x_t). Summed over a hyperschedule's steps (and positions) it is the
        discrete-time NELBO; no process here has a prior term (q(x_1 | x0) is the prior).
        """

    @abstractmethod
    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """lim_{h -> 0} step_loss(t, t - dt h) / h: the continuous-time NELBO integrand, dt >= 0."""


@dataclass(frozen=True)
class Absorbing(NoiseProcess):
    """Masking (MDLM): q(x_t | x0) = alpha(t) e_x0 + (1 - alpha(t)) e_MASK."""

    mask_id: int

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
        t, s = _levels(t, x_t, nll), _levels(s, x_t, nll)
        return torch.where(x_t == self.mask_id, reveal_fraction(t, s) * nll, 0.0)

    def rate_loss_of_nll(self, nll: Tensor, x_t: Tensor, t: Tensor, dt: Tensor) -> Tensor:
        t, dt = _levels(t, x_t, nll), _levels(dt, x_t, nll)
        return torch.where(x_t == self.mask_id, dt / t.clamp_min(T_EPS) * nll, 0.0)


@dataclass(frozen=True)
class Uniform(NoiseProcess):
    """Uniform resampling: q(x_t | x0) = alpha(t) e_x0 + (1 - alpha(t)) u, u uniform on data ids.

    The chain: between levels s < t a token is kept with probability alpha_t / alpha_s and
    resampled uniformly otherwise. MASK is never produced (x0 and x_t are data ids).
    """

    vocab_size: int
    mask_id: int

    @property
    def num_data(self) -> int:
        return self.vocab_size - 1

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t = a uniform data id with probability t (possibly x0 again), x0 otherwise."""
        return resample(x0, t, self.mask_id, self.num_data, generator)

    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Exact KL of the posterior against the model's reverse, over the N data ids:

        q(x_s = j | x_t, x0) = q(x_t | j) q_s(j | x0) / q_t(x_t | x0),
        p_theta(x_s = j | x_t) = q(x_t | j) sum_i w_i q_s(j | i),
        w_i = p_theta(i | x_t) / q_t(x_t | i), with q(x_t | j) the step kernel (it resamples with
        probability 1 - alpha_t / alpha_s).
        """
        moving = _levels(t, x0, log_probs) > _levels(s, x0, log_probs)
        # Positions that do not move are evaluated as a dummy step t -> 0 (finite) and zeroed.
        t = _levels(t, x0, log_probs).clamp_min(T_EPS)
        s = torch.where(moving, _levels(s, x0, log_probs), 0.0)
        lp = data_log_probs(log_probs, self.mask_id)
        i0, it = data_index(x0, self.mask_id), data_index(x_t, self.mask_id)
        n = self.num_data
        step_kernel = uniform_marginal(it, step_resample_prob(t, s), n)  # q(x_t | x_s = j)
        likelihood = uniform_marginal(it, t, n)  # q_t(x_t | x0 = i)
        evidence = likelihood.gather(-1, i0.unsqueeze(-1))  # q_t(x_t | x0)
        posterior = step_kernel * uniform_marginal(i0, s, n) / evidence
        log_model = step_kernel.log() + log_push_forward(lp - likelihood.log(), s)
        kl = (torch.xlogy(posterior, posterior) - posterior * log_model).sum(-1)
        return torch.where(moving, kl, 0.0)

    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """dt (beta_t / N) sum_j [r_hat_j - r_j + r_j log(r_j / r_hat_j)], beta_t = 1 / alpha_t,

        with the reverse jump rates to j (in units of beta_t / N)
        r_j = q_t(j | x0) / q_t(x_t | x0)  (truth) and  r_hat_j = sum_i w_i q_t(j | i)  (model),
        w_i = p_theta(i | x_t) / q_t(x_t | i). t is clamped to [T_EPS, 1 - T_EPS].
        """
        t = _levels(t, x0, log_probs).clamp(T_EPS, 1 - T_EPS)
        dt = _levels(dt, x0, log_probs)
        lp = data_log_probs(log_probs, self.mask_id)
        i0, it = data_index(x0, self.mask_id), data_index(x_t, self.mask_id)
        likelihood = uniform_marginal(it, t, self.num_data)  # q_t(x_t | i)
        log_evidence = likelihood.gather(-1, i0.unsqueeze(-1)).log()
        log_rate = uniform_marginal(i0, t, self.num_data).log() - log_evidence
        log_model_rate = log_push_forward(lp - likelihood.log(), t)
        divergence = poisson_divergence(log_rate, log_model_rate).sum(-1)
        return dt / (alpha(t) * self.num_data) * divergence


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
    def num_data(self) -> int:
        return self.vocab_size - 1

    @property
    def has_reconstruction(self) -> bool:
        return self.eps > 0

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
        t, s = _levels(t, x0, log_probs), _levels(s, x0, log_probs)
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

        Visible tokens have rate 0; the continuous-time NELBO adds `reconstruction_loss` at t = 0+.
        """
        t, dt = _levels(t, x0, log_probs), _levels(dt, x0, log_probs)
        reveal = revealed_token_kl(
            data_log_probs(log_probs, self.mask_id), data_index(x0, self.mask_id), self.eps
        )
        return torch.where(x_t == self.mask_id, dt / t.clamp_min(T_EPS) * reveal, 0.0)

    def reconstruction_loss(self, log_probs: Tensor, x0: Tensor) -> Tensor:
        """-log p_theta(x0 | x_{0+}): the continuous-time NELBO's term at t = 0+, per position.

        `log_probs` must be the network's output on x_{0+}, where the position being scored is at
        level 0+ (`corrupt_visible(x0)` there: visible, resampled with probability eps) and the
        others at their own levels. Zero in expectation only if the network undoes the jump.
        """
        return -clean_log_prob(log_probs, x0, self.mask_id)

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
        t = _levels(t, x0, log_probs).clamp(T_EPS, 1 - T_EPS)
        dt = _levels(dt, x0, log_probs)
        nll = -clean_log_prob(log_probs, x0, self.mask_id)
        visible = torch.where(x_t == x0, lam * self.eps, lam * (1 - self.eps))
        if visible_over_one_minus_t:
            visible = visible / (1 - t)
        weight = torch.where(x_t == self.mask_id, 1 / t, visible)
        return dt * weight * nll
