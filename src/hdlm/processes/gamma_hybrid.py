"""HDLM's γ-hybrid: a continuous-time Markov chain mixing masking and uniform moves (SEDD-style).

Rate matrix over V ids (MASK = m, N = V - 1 data ids), per unit of total noise σ:

    Q = (1 - γ) Q_absorb + γ Q_uniform,

Q_absorb moves a data id to MASK at rate 1, Q_uniform moves it to each data id at rate 1/N (so at
total rate 1 it is resampled uniformly, possibly onto itself); MASK is absorbing. Masking does not
depend on the token, so over a total noise σ the two parts factorise (docs/math.md §8):

    P_σ(x -> MASK) = 1 - a,   P_σ(x -> j) = a [b δ_xj + (1 - b) / N],   a = e^{-(1-γ)σ}, b = e^{-γσ}

for data ids x, j. Every position i has its own level t_i in [0, 1] mapped to σ(t_i) by a
`SigmaSchedule` (log-linear or geometric, σ(0) = 0), so any hyperschedule applies.

The network gives, per position, a distribution p̃(j) over data ids (`log_probs`, the package's
convention: log_softmax with MASK at -inf). The model's clean-token posterior is the Bayes
combination with the position's own noisy token,

    p_θ(x0 = j | x_t) ∝ p̃(j) q_t(x_t^i | j),

which is exact when p̃ is the posterior given the *other* positions, turns into MDLM's carry-over at
γ = 0, and gives the scores of every reverse move in closed form (`log_score`):

    from MASK to j:      s(j) = P_t(j) / (e^{(1-γ)σ} - 1)
    from visible x to j: s(j) = P_t(j) / P_t(x),       P_t = b p̃ + (1 - b) u   ("noised p̃").

`rate_loss` is SEDD's diffusion-weighted denoising score entropy with these scores in closed form
(O(V) per position, no V x V matrix); `step_loss` the exact KL of a discrete reverse step; both are
NELBO terms, and `prior_loss` completes the bound when σ(1) is finite. `tweedie_step` is the
analytic (Tweedie) τ-leaping step, which is exactly the model's discrete reverse step, and
`euler_step` SEDD's Euler step. Shapes and dtypes follow `hdlm.processes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.errors import ConfigError
from hdlm.processes import base
from hdlm.processes.base import (
    MixtureKL,
    NoiseProcess,
    categorical,
    levels,
    log1mexp,
    random_data_tokens,
    xlogx,
)
from hdlm.schedules import spec_fields

SIGMA_SYNTAX = "loglinear[:EPS] | geometric[:SIGMA_MIN:SIGMA_MAX]"


@dataclass(frozen=True)
class SigmaSchedule:
    """Total noise σ(t) of a level t in [0, 1], with σ(0) = 0 (level 0 is the clean token).

    * ``loglinear:EPS`` (default EPS = 0): σ(t) = -log(1 - (1 - EPS) t). With EPS = 0, σ(1) = ∞:
      level 1 is all MASK, and at γ = 0 a token is masked with probability t (MDLM's linear
      schedule). SEDD and the HDLM code use EPS = 1e-3.
    * ``geometric:SIGMA_MIN:SIGMA_MAX`` (default 1e-4:20): σ(t) = σ_min ((σ_max/σ_min)^t - 1),
      SEDD's geometric schedule shifted down by σ_min so that level 0 is exactly clean.
    """

    kind: str = "loglinear"
    eps: float = 0.0
    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    @classmethod
    def parse(cls, spec: str) -> SigmaSchedule:
        kind, numbers = spec_fields(spec)
        try:
            values = [float(n) for n in numbers]
        except ValueError:
            values = None
        if kind == "loglinear" and values is not None and len(values) <= 1:
            schedule = cls("loglinear", eps=values[0] if values else 0.0)
            if 0 <= schedule.eps < 1:
                return schedule
        if kind == "geometric" and values is not None and len(values) in (0, 2):
            schedule = cls("geometric", *([0.0, *values] if values else []))
            if 0 < schedule.sigma_min < schedule.sigma_max < math.inf:
                return schedule
        raise ConfigError(
            f"bad sigma schedule '{spec}'; use {SIGMA_SYNTAX} "
            "(0 <= EPS < 1, 0 < SIGMA_MIN < SIGMA_MAX)"
        )

    @property
    def spec(self) -> str:
        if self.kind == "loglinear":
            return f"loglinear:{self.eps:g}"
        return f"geometric:{self.sigma_min:g}:{self.sigma_max:g}"

    def sigma(self, t: Tensor) -> Tensor:
        if self.kind == "loglinear":
            return -torch.log1p(-(1 - self.eps) * t)
        return self.sigma_min * torch.expm1(t * math.log(self.sigma_max / self.sigma_min))

    def rate(self, t: Tensor) -> Tensor:
        """dσ/dt."""
        if self.kind == "loglinear":
            return (1 - self.eps) / (1 - (1 - self.eps) * t)
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        return self.sigma_min * log_ratio * torch.exp(t * log_ratio)

    @property
    def sigma_one(self) -> float:
        """σ(1), the total noise of a fully noised position (∞ for log-linear with EPS = 0)."""
        return self.sigma(torch.tensor(1.0, dtype=torch.float64)).item()


@dataclass(frozen=True)
class GammaHybrid(NoiseProcess):
    """The γ-hybrid chain under a σ schedule; γ = 0 is SEDD's absorbing chain (and, with the
    default log-linear schedule, exactly `processes.Absorbing`)."""

    gamma: float
    mask_id: int
    vocab_size: int
    schedule: SigmaSchedule = SigmaSchedule()

    def __post_init__(self) -> None:
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")

    # -- the chain -----------------------------------------------------------------------------

    def rates(self, sigma: Tensor) -> dict[str, Tensor]:
        """Per-position quantities of total noise σ (σ = ∞ allowed): a = P(not masked),
        b = P(not resampled | not masked) and their complements, computed without cancellation,
        and c = a / (1 - a) = 1 / (e^{(1-γ)σ} - 1)."""
        masking = (1 - self.gamma) * sigma
        resampling = self.gamma * sigma if self.gamma > 0 else torch.zeros_like(sigma)
        return {
            "a": torch.exp(-masking),
            "masked": -torch.expm1(-masking),
            "b": torch.exp(-resampling),
            "log_b": -resampling,
            "resampled": -torch.expm1(-resampling),
            "c": 1 / torch.expm1(masking),
        }

    def transition_probs(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Rows of exp(σ Q): P_σ(x -> y) for every y, shape [..., V] (x and σ broadcast)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        x, sigma = torch.broadcast_tensors(x, sigma)
        r = self.rates(sigma)
        a, b = r["a"][..., None], r["b"][..., None]
        probs = a * r["resampled"][..., None] / self.num_data
        probs = probs.expand(*x.shape, self.vocab_size).clone()
        probs[..., self.mask_id] = r["masked"]
        probs += a * b * torch.nn.functional.one_hot(x, self.vocab_size)
        masked = x == self.mask_id
        mask_row = torch.nn.functional.one_hot(torch.full_like(x, self.mask_id), self.vocab_size)
        return torch.where(masked[..., None], mask_row.to(probs.dtype), probs)

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q_t(. | x0): masked with probability 1 - a, else resampled uniformly with
        probability 1 - b. The mask coins come first, so at γ = 0 the draws are `Absorbing`'s."""
        sigma = self.schedule.sigma(torch.as_tensor(t, dtype=torch.float64, device=x0.device))
        r = self.rates(sigma)
        masked = torch.rand(x0.shape, generator=generator, device=x0.device) < r["masked"]
        x_t = x0
        if self.gamma > 0:
            hit = torch.rand(x0.shape, generator=generator, device=x0.device) < r["resampled"]
            x_t = torch.where(
                hit, random_data_tokens(x0, self.mask_id, self.num_data, generator), x0
            )
        return torch.where(masked, torch.full_like(x0, self.mask_id), x_t)

    def sample_prior(self, shape, device, generator: torch.Generator | None = None) -> Tensor:
        """x_1 from the prior p(x_1) = (1 - a_1) e_MASK + a_1 u: all MASK when σ(1) = ∞."""
        r = self.rates(torch.tensor(self.schedule.sigma_one, dtype=torch.float64))
        masked = torch.full(shape, self.mask_id, dtype=torch.long, device=device)
        if r["a"].item() == 0:
            return masked
        coins = torch.rand(shape, generator=generator, device=device)
        fresh = random_data_tokens(masked, self.mask_id, self.num_data, generator)
        return torch.where(coins < r["masked"].item(), masked, fresh)

    # -- the model's view ----------------------------------------------------------------------

    def _clean(self, log_probs: Tensor) -> Tensor:
        """log p̃ over V, MASK dropped and renormalised, its entry set to 0 (a finite dummy)."""
        lp = log_probs - log1mexp(log_probs[..., self.mask_id : self.mask_id + 1])
        index = torch.tensor([self.mask_id], device=lp.device)
        return lp.index_fill(-1, index, 0.0)

    def _noised(self, lp: Tensor, r: dict[str, Tensor]) -> Tensor:
        """log P = log(b p̃ + (1 - b) u) over V (the MASK entry is a dummy)."""
        floor = torch.log(r["resampled"]) - math.log(self.num_data)
        return torch.logaddexp(r["log_b"][..., None] + lp, floor[..., None])

    def _data_rows(self, scores: Tensor, rows: Tensor) -> Tensor:
        """The rows of `scores` [..., V] where the bool `rows` is True, [K, V] in float32, MASK
        at -inf: one copy, written in place (the sampler's hot path passes over [L, V] rarely)."""
        picked = scores[rows].float()  # bool indexing copies, so the fill cannot reach `scores`
        picked[:, self.mask_id] = float("-inf")
        return picked

    def _data_log_softmax(self, scores: Tensor) -> Tensor:
        """log p̃ over V from log-probabilities or unnormalised log-scores [K, V] (a copy the
        caller owns, float32, MASK at -inf: `_data_rows`): the softmax over the data ids, its
        MASK entry set to 0 (a finite dummy)."""
        lp = scores - scores.logsumexp(-1, keepdim=True)
        lp[:, self.mask_id] = 0.0
        return lp

    def _clean_at(self, log_probs: Tensor, x: Tensor, rows: Tensor) -> Tensor:
        """log p̃(x) at the data ids x where the bool `rows` is True (0 elsewhere), normalising
        only those rows of `log_probs` (log-probabilities or unnormalised log-scores, any float
        dtype; the normaliser is computed in float32)."""
        at_x = log_probs.gather(-1, x[..., None])[..., 0].float()
        lse = torch.zeros_like(at_x).masked_scatter(
            rows, self._data_rows(log_probs, rows).logsumexp(-1)
        )
        return torch.where(rows, at_x - lse, 0.0)

    def _noised_at(self, lp_x: Tensor, r: dict[str, Tensor]) -> Tensor:
        """log P(x) = log(b p̃(x) + (1 - b) / N) from log p̃(x) (`_clean_at`)."""
        floor = torch.log(r["resampled"]) - math.log(self.num_data)
        return torch.logaddexp(r["log_b"] + lp_x, floor)

    def _data_sum(self, log_p: Tensor) -> Tensor:
        return log_p.sum(-1) - log_p[..., self.mask_id]

    def _kl_to_noised(self, log_p: Tensor, x0: Tensor, r: dict[str, Tensor]) -> Tensor:
        """KL(π_b(. | x0) || P) with π_b(. | x0) = b e_x0 + (1 - b) u, over the N data ids."""
        n = self.num_data
        floor = r["resampled"] / n
        neg_entropy = xlogx(r["b"] + floor) + (n - 1) * xlogx(floor)
        at_x0 = log_p.gather(-1, x0[..., None])[..., 0]
        return neg_entropy - r["b"] * at_x0 - floor * self._data_sum(log_p)

    def _pi(self, x: Tensor, x0: Tensor, r: dict[str, Tensor]) -> Tensor:
        """π_b(x | x0) = b 1[x = x0] + (1 - b) / N."""
        return torch.where(x == x0, r["b"], 0.0) + r["resampled"] / self.num_data

    def log_score(self, log_probs: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The model's log concrete scores log s(y) = log q_t(x_t with y at i) / q_t(x_t), [.., V]:
        0 at y = x_t, -inf where the forward chain cannot move y -> x_t (MASK from visible)."""
        t = levels(t, x_t, log_probs).clamp(base.T_EPS, 1 - base.T_EPS)
        r = self.rates(self.schedule.sigma(t))
        log_p = self._noised(self._clean(log_probs), r)
        masked = x_t == self.mask_id
        at_x = log_p.gather(-1, torch.where(masked, 0, x_t)[..., None])[..., 0]
        score = log_p - torch.where(masked, -torch.log(r["c"]), at_x)[..., None]
        score[..., self.mask_id] = float("-inf")
        return score.scatter(-1, x_t[..., None], 0.0)

    # -- NELBO terms ---------------------------------------------------------------------------

    def prior_loss(self, x0: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """KL(q_1(. | x0) || p(x_1)) per position, p(x_1) = (1 - a_1) e_MASK + a_1 u:
        a_1 KL(π_{b_1}(. | x0) || u), the same for every x0; 0 when σ(1) = ∞."""
        r = self.rates(torch.tensor(self.schedule.sigma_one, dtype=torch.float64))
        a, b, n = r["a"].item(), r["b"].item(), self.num_data
        top, floor = b + (1 - b) / n, (1 - b) / n
        kl = top * math.log(n * top) + ((n - 1) * floor * math.log(n * floor) if floor else 0.0)
        return torch.full(x0.shape, a * kl, dtype=dtype, device=x0.device)

    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x0) || p_θ(x_s | x_t)) for a reverse step t -> s (docs/math.md §8):

        masked:  (a_s - a_t) / (1 - a_t) KL(π_s(. | x0) || P_s)
        visible: λ log(π_s(x) / P_s(x)) + (r / (N π_t(x))) KL(π_s(. | x0) || P_s)
                 + log(P_t(x) / π_t(x)),   r = 1 - b_t / b_s,  λ = (1 - r) π_s(x) / π_t(x),

        with π_t = b_t e_x0 + (1 - b_t) u and P_t = b_t p̃ + (1 - b_t) u. At s = 0 this is the
        reconstruction -log p_θ(x0 | x_t) of the Bayes-combined posterior.
        """
        t, s = levels(t, x0, log_probs), levels(s, x0, log_probs)
        moving = t > s
        s = torch.where(moving, s, 0.0)  # a finite dummy step where nothing moves
        sigma_t, sigma_s = self.schedule.sigma(t), self.schedule.sigma(s)
        rt, rs = self.rates(sigma_t), self.rates(sigma_s)
        lp = self._clean(log_probs)
        log_ps = self._noised(lp, rs)
        kl = self._kl_to_noised(log_ps, x0, rs)
        masked = x_t == self.mask_id
        # masked: reveal between t and s with probability (a_s - a_t) / (1 - a_t)
        delta = torch.where(moving, sigma_t - sigma_s, 0.0)
        reveal = rs["a"] * -torch.expm1(-(1 - self.gamma) * delta) / rt["masked"].clamp_min(1e-30)
        loss = torch.where(masked, reveal * kl, 0.0)
        if self.gamma > 0:
            x = torch.where(masked, x0, x_t)  # a valid id at masked positions (unused there)
            log_pt_x = self._noised_at(lp.gather(-1, x[..., None])[..., 0], rt)
            log_ps_x = log_ps.gather(-1, x[..., None])[..., 0]
            pi_t, pi_s = self._pi(x, x0, rt), self._pi(x, x0, rs)
            moved = -torch.expm1(-self.gamma * delta)  # r = 1 - b_t / b_s
            keep = (1 - moved) * pi_s / pi_t
            stay = torch.where(keep > 0, keep * (torch.log(pi_s) - log_ps_x), 0.0)
            visible = stay + moved / (self.num_data * pi_t) * kl + log_pt_x - torch.log(pi_t)
            loss = torch.where(masked, loss, visible)
        return torch.where(moving, loss, 0.0)

    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """SEDD's diffusion-weighted denoising score entropy with the scores of `log_score`,
        in closed form; t is clamped to [T_EPS, 1 - T_EPS] (docs/math.md §8):

        masked:  dt σ' (1 - γ) c KL(π(. | x0) || P)
        visible: dt σ' γ / (N π(x)) [φ(log π(x) - log P(x)) + KL(π(. | x0) || P)],
                 φ(y) = e^y - 1 - y,
        with π = b e_x0 + (1 - b) u, P = b p̃ + (1 - b) u at σ(t), c = 1 / (e^{(1-γ)σ} - 1).
        """
        t, speed, r = self._rate_levels(t, dt, x0, log_probs)
        log_p = self._noised(self._clean(log_probs), r)
        kl = self._kl_to_noised(log_p, x0, r)
        x = torch.where(x_t == self.mask_id, x0, x_t)
        return self._score_entropy(kl, log_p.gather(-1, x[..., None])[..., 0], x, x0, x_t, r, speed)

    def rate_loss_of_logits(
        self, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """`rate_loss` straight from the logits, fused (`MixtureKL` with b at σ(t): the KL on
        every row that pays one, log P at the visible token; same values)."""
        like = torch.zeros(x0.shape, device=x0.device)
        t, speed, r = self._rate_levels(t, dt, x0, like)
        masked = x_t == self.mask_id
        rows = torch.ones_like(masked) if self.gamma > 0 else masked
        x = torch.where(masked, x0, x_t)
        kl, log_p_x = MixtureKL.apply(logits, x0, x, rows, r["b"], self.mask_id)
        return self._score_entropy(kl, log_p_x, x, x0, x_t, r, speed)

    def _rate_levels(self, t, dt, x0: Tensor, like: Tensor):
        """(t clamped to [T_EPS, 1 - T_EPS], dt σ'(t), the rates at σ(t)) in `like`'s dtype."""
        t = levels(t, x0, like).clamp(base.T_EPS, 1 - base.T_EPS)
        speed = levels(dt, x0, like) * self.schedule.rate(t)
        return t, speed, self.rates(self.schedule.sigma(t))

    def _score_entropy(self, kl, log_p_x, x, x0: Tensor, x_t: Tensor, r, speed) -> Tensor:
        """`rate_loss` from KL(π || P) per position and log P(x) at x = x0 (masked) or x_t."""
        masked = x_t == self.mask_id
        loss = torch.where(masked, speed * (1 - self.gamma) * r["c"] * kl, 0.0)
        if self.gamma > 0:
            pi_x = self._pi(x, x0, r)
            y = torch.log(pi_x) - log_p_x
            weight = speed * self.gamma / (self.num_data * pi_x)
            loss = torch.where(masked, loss, weight * (torch.expm1(y) - y + kl))
        return loss

    # -- reverse steps ---------------------------------------------------------------------------

    def tweedie_step(
        self,
        log_probs: Tensor,
        x_t: Tensor,
        t: Tensor,
        s: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Analytic (Tweedie) τ-leaping: x_s ~ p_θ(x_s | x_t) = Σ_x0 p_θ(x0 | x_t) q(x_s | x_t, x0)
        per position, exactly (SEDD's analytic sampler with the scores of `log_score`).

        masked:  stays MASK with probability (1 - a_s) / (1 - a_t), else y ~ P_s;
        visible: stays x with probability (1 - r) P_s(x) / P_t(x), else y ~ P_s (possibly x).
        Positions with t == s do not move; at s = 0 every position ends on a data id.
        `log_probs` may be unnormalised log-scores (p̃ is their softmax over the data ids): only
        the rows a step reads (visible tokens, positions that jump) are normalised.
        """
        t, s = levels(t, x_t, log_probs), levels(s, x_t, log_probs)
        moving = t > s
        s = torch.where(moving, s, 0.0)
        sigma_t, sigma_s = self.schedule.sigma(t), self.schedule.sigma(s)
        rt, rs = self.rates(sigma_t), self.rates(sigma_s)
        delta = torch.where(moving, sigma_t - sigma_s, 0.0)
        masked = x_t == self.mask_id
        reveal = rs["a"] * -torch.expm1(-(1 - self.gamma) * delta) / rt["masked"].clamp_min(1e-30)
        x = torch.where(masked, 0, x_t)
        lp_x = self._clean_at(log_probs, x, moving & ~masked)  # only visible tokens need it
        log_ratio = self._noised_at(lp_x, rs) - self._noised_at(lp_x, rt)
        keep = torch.exp(-self.gamma * delta + log_ratio).clamp(max=1.0)
        move = torch.where(masked, reveal, 1 - keep)
        coins = torch.rand(x_t.shape, generator=generator, device=x_t.device)
        jump = moving & (coins < move)
        return torch.where(jump, self._draw_where(jump, log_probs, rs, generator), x_t)

    def _draw_where(
        self,
        jump: Tensor,
        log_probs: Tensor,
        r: dict[str, Tensor],
        generator,
        exclude: Tensor | None = None,
    ) -> Tensor:
        """`_draw_noised` at the positions where `jump` is True, 0 elsewhere: only the rows that
        take a new token are renormalised over V and drawn (the coins are drawn before)."""
        rows = {name: value[jump] for name, value in r.items()}
        excluded = None if exclude is None else exclude[jump]
        lp = self._data_log_softmax(self._data_rows(log_probs, jump))
        drawn = self._draw_noised(lp, rows, generator, excluded)
        return torch.zeros(jump.shape, dtype=drawn.dtype, device=jump.device).masked_scatter(
            jump, drawn
        )

    def _draw_noised(
        self, lp: Tensor, r: dict[str, Tensor], generator, exclude: Tensor | None = None
    ) -> Tensor:
        """y ~ P = b p̃ + (1 - b) u per row of `lp` [K, V] (never MASK); with `exclude`, P
        restricted to y != exclude and renormalised."""
        log_p = self._noised(lp, r)
        log_p[..., self.mask_id] = float("-inf")
        if exclude is not None:
            log_p = log_p.scatter(-1, exclude[..., None], float("-inf"))
        return categorical(log_p.softmax(-1), generator)

    def euler_step(
        self,
        log_probs: Tensor,
        x_t: Tensor,
        t: Tensor,
        s: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """SEDD's Euler step: jump x_t -> y with probability (t - s) σ'(t) Q(y, x_t) s(y), the
        reverse rates frozen at t (clamped to 1 - T_EPS); the total is capped at 1. From MASK the
        jump rate is (1 - γ) σ' c, from visible x it is γ σ' (1 - P(x)) / (N P(x)); the target
        is drawn from P restricted to y != x. Exact at γ = 0 with the log-linear schedule (MDLM's
        (t - s) / t); use `tweedie_step` for the last step to s = 0 (the sampler does)."""
        t, s = levels(t, x_t, log_probs), levels(s, x_t, log_probs)
        moving = t > s
        tc = t.clamp(base.T_EPS, 1 - base.T_EPS)
        r = self.rates(self.schedule.sigma(tc))
        speed = (t - s) * self.schedule.rate(tc)
        masked = x_t == self.mask_id
        x = torch.where(masked, 0, x_t)
        p_x = self._noised_at(self._clean_at(log_probs, x, moving & ~masked), r).exp()
        from_mask = speed * (1 - self.gamma) * r["c"]
        from_visible = speed * self.gamma * (1 - p_x) / (self.num_data * p_x)
        move = torch.where(masked, from_mask, from_visible)
        coins = torch.rand(x_t.shape, generator=generator, device=x_t.device)
        jump = moving & (coins < move)
        exclude = torch.where(masked, self.mask_id, x)
        return torch.where(jump, self._draw_where(jump, log_probs, r, generator, exclude), x_t)


def score_entropy(
    process: GammaHybrid, log_score: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
) -> Tensor:
    """Reference diffusion-weighted denoising score entropy for *any* log-scores [.., V]:

    dt σ'(t) Σ_{y != x_t} Q(y, x_t) [s(y) - r(y) log s(y) + r(y) (log r(y) - 1)],
    r(y) = q_t(y | x0) / q_t(x_t | x0),

    written from the definition with the transition probabilities (O(V) per position, float64).
    `GammaHybrid.rate_loss` is this with the scores of `GammaHybrid.log_score`, in closed form.
    """
    log_score = log_score.double()
    t = torch.as_tensor(t, dtype=torch.float64).clamp(base.T_EPS, 1 - base.T_EPS)
    t = torch.broadcast_to(t, x0.shape)
    dt = torch.broadcast_to(torch.as_tensor(dt, dtype=torch.float64), x0.shape)
    n, mask_id = process.num_data, process.mask_id
    q = process.transition_probs(x0, process.schedule.sigma(t))
    ratio = q / q.gather(-1, x_t[..., None])
    masked = (x_t == mask_id)[..., None]
    into = torch.full_like(q, process.gamma / n)  # Q(y, x_t) for visible x_t, y a data id
    into = torch.where(masked, torch.full_like(q, 1 - process.gamma), into)
    into[..., mask_id] = 0.0
    into = into.scatter(-1, x_t[..., None], 0.0)
    constant = torch.xlogy(ratio, ratio) - ratio
    terms = torch.where(into > 0, into * (log_score.exp() - ratio * log_score + constant), 0.0)
    return dt * process.schedule.rate(t) * terms.sum(-1)
