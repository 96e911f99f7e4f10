"""τ-leaping samplers for the γ-hybrid (SEDD): analytic (Tweedie) and Euler reverse steps.

The hyperschedule decides every position's noise: at step k each position moves from its level
T[k-1, i] to T[k, i] (positions with equal levels stay put), so a flat schedule is SEDD's sampler
and block or slide schedules denoise left to right. Prompt positions sit at level 0 throughout:
they are clean context and never change. Generation starts from the prior (all MASK when
σ(1) = ∞) and every step runs the network on the whole sequence (no KV cache: under the γ-hybrid
a visible token may still change until its level reaches 0).

* `tweedie`: x_s ~ Σ_x0 p_θ(x0 | x_t) q(x_s | x_t, x0) per position (`GammaHybrid.tweedie_step`),
  the reverse step that the discrete-time NELBO scores;
* `euler`: SEDD's Euler step with the reverse rates frozen at t (`GammaHybrid.euler_step`); a
  position's final step to level 0 is a Tweedie step (SEDD's `denoise`).

Temperature, top-k and top-p reshape the network's clean-token distribution p̃ before the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from hdlm.denoiser import Denoiser, LeapingReverse
from hdlm.errors import HdlmError
from hdlm.sampling.hyperschedule import ScheduleWalker, check_schedule_length
from hdlm.sampling.options import SCHEDULE, STEPS, TRACE
from hdlm.sampling.tokens import filter_logits
from hdlm.sampling.trace import Trace, step_events

TAU_LEAPING = ("tweedie", "euler")


class LeapingSampler(ScheduleWalker):
    """The τ-leaping samplers (`tweedie`, `euler` in `sampling.samplers`): `method`'s step of
    a `LeapingReverse` process along the schedule; no KV cache; the trace records what each
    step changed."""

    objectives = ("score-entropy",)
    processes = ("gamma-hybrid",)
    needs = LeapingReverse
    options = (SCHEDULE, STEPS, TRACE)
    method: ClassVar[str]

    def run(self, denoiser, tokens, known, generator, options, pick, trace) -> Tensor:
        walk = self.walk(options, tokens)
        return sample_tau_leaping(
            denoiser, tokens, known, generator, walk, self.method, trace, **pick
        )


def reshape_distribution(
    log_probs: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """log p̃ after temperature (0: greedy, a point mass on the argmax), top-k and top-p (those
    in float32; unchanged log-scores keep the network's dtype)."""
    if temperature == 0:
        best = log_probs.argmax(-1, keepdim=True)
        return torch.full_like(log_probs, float("-inf")).scatter(-1, best, 0.0)
    if temperature == 1 and top_k is None and top_p is None:
        return log_probs
    return filter_logits(log_probs.float() / temperature, top_k, top_p).log_softmax(-1)


def tau_leaping(
    denoise: Callable[[Tensor, Tensor, int], Tensor],
    process: LeapingReverse,
    x: Tensor,
    table: Tensor,
    generator: torch.Generator | None,
    method: str = "tweedie",
    conditioned: bool = True,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Walk `table` [S+1, L] from the tokens `x` [n, L] at levels table[0] down to table[S].

    `denoise(x_t, levels [n, L], step)` returns log p̃ [n, L, V] up to a constant per position,
    the network's clean-token distribution at every position (MASK at -inf). Unless the network
    is `conditioned` on the levels, a step whose tokens equal those of the last network call
    reuses its output. `on_step(before, after)` sees the tokens around every step that moves.
    """
    if method not in TAU_LEAPING:
        raise HdlmError(f"unknown τ-leaping method '{method}'; choose one of tweedie, euler")
    n, seen, log_probs = x.shape[0], None, None
    for k in range(1, table.shape[0]):
        t, s = table[k - 1].expand(n, -1), table[k].expand(n, -1)
        moving = t > s
        if not moving.any():
            continue
        # MDLM's trick, exact for a model that does not see the levels: same input, same output
        if conditioned or seen is None or not torch.equal(x, seen):
            log_probs, seen = denoise(x, t, k), x
        before = x
        if method == "tweedie":
            x = process.tweedie_step(log_probs, x, t, s, generator)
        else:
            x = _euler_step(process, log_probs, x, t, s, moving, generator)
        if on_step is not None:
            on_step(before, x)
    return x


def _euler_step(process, log_probs, x, t, s, moving, generator) -> Tensor:
    """SEDD's Euler step; a position's final step to level 0 is a Tweedie step."""
    final = moving & (s == 0)
    stepped = process.euler_step(log_probs, x, t, torch.where(final, t, s), generator)
    if final.any():
        denoised = process.tweedie_step(log_probs, x, torch.where(final, t, 0.0), s, generator)
        stepped = torch.where(final, denoised, stepped)
    return stepped


@torch.no_grad()
def sample_tau_leaping(
    denoiser: Denoiser,
    tokens: Tensor,
    known: Tensor,
    generator: torch.Generator | None,
    schedule,
    method: str = "tweedie",
    trace: Trace | None = None,
    **pick,
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] is False (BOS, a prompt or the
    text around blanks are known) by walking `schedule` (a `Hyperschedule` over the L - 1
    positions after BOS); `trace` records what every step changed."""
    layout, process = denoiser.layout, denoiser.process
    if layout.options.attention == "two-copy":
        raise HdlmError(
            "τ-leaping cannot run the two-copy training layout; train with "
            "diffusion.attention=schedule for block schedules"
        )
    (n, length), device = tokens.shape, tokens.device
    check_schedule_length(schedule, length)
    fixed = known[1:]
    table = schedule.table.to(device).masked_fill(fixed, 0.0)
    x = process.sample_prior((n, length - 1), device, generator)
    x = torch.where(fixed, tokens[:, 1:], x)
    bos = tokens[:, :1]

    def denoise(x_t: Tensor, levels: Tensor, step: int) -> Tensor:
        # unnormalised log-scores (MASK at -inf) in the network's dtype: the steps normalise,
        # in float32, only the rows they read (a float copy of all [n, L, V] would cost more
        # than a tenth of the step on CPU)
        tokens = torch.cat((bos, x_t), 1)
        steps = torch.full_like(x_t, step)
        scores = layout.logits(denoiser.net, tokens, x_t, levels, steps)
        scores[..., denoiser.mask_id] = float("-inf")  # in place: the head's fresh output
        return reshape_distribution(scores, **pick)

    def record(before: Tensor, after: Tensor) -> None:
        trace.add(torch.cat((bos, after), 1), **step_events(before, after, denoiser.mask_id))

    on_step = record if trace is not None else None
    x = tau_leaping(denoise, process, x, table, generator, method, layout.conditioned, on_step)
    return torch.cat((bos, x), 1)
