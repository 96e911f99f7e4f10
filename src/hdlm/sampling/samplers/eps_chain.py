"""The `eps-chain` sampler: the reverse chain whose distribution the ε-hybrid NELBO bounds.

The ε-hybrid's continuous-time NELBO (docs/math.md) is the bound of a chain that reveals each
masked token from (1 - ε) p_θ(x0 | x_t) + ε u and, once every position is visible at t = 0+,
re-decodes every position from p_θ(x0 | x_{0+}) (the reconstruction term). This sampler walks
the hyperschedule sampler's loop with `EpsHybrid.chain_step` as its reverse step (the last step
to level 0 is read as a step to 0+), then takes `EpsHybrid.final_step` with one more forward
pass on the fully visible sequence at level 0 (the input `DiffusionObjective.reconstruction`
trains). Options: `reveal="model"` reveals from p_θ alone; `final="greedy"` replaces the
reconstruction draw by its argmax (MDLM's final denoising), `"none"` skips it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hdlm.denoiser import ChainReverse, Denoiser
from hdlm.errors import HdlmError
from hdlm.processes import FINALS, REVEALS
from hdlm.sampling.hyperschedule import ScheduleWalker, sample_hyperschedule
from hdlm.sampling.options import SCHEDULE, STEPS, TRACE, USE_CACHE, Option
from hdlm.sampling.registry import register
from hdlm.sampling.tokens import pick_tokens
from hdlm.sampling.trace import Trace
from hdlm.schedules import Hyperschedule

REVEAL = Option(
    "reveal", "mixture", "reveal from (1-eps) p + eps u (mixture) or from p alone (model)",
    choices=REVEALS,
)  # fmt: skip
FINAL = Option(
    "final", "sample", "last step re-decodes every position: a draw (sample), its argmax "
    "(greedy, MDLM's final denoise), or none", choices=FINALS,
)  # fmt: skip


@register
class EpsChain(ScheduleWalker):
    name = "eps-chain"
    summary = "the ε-hybrid's own reverse chain, the one its NELBO bounds"
    objectives = ("diffusion",)
    processes = ("eps-hybrid",)
    needs = ChainReverse
    options = (SCHEDULE, STEPS, REVEAL, FINAL, USE_CACHE, TRACE)

    def check(self, denoiser: Denoiser) -> None:
        """Refuse models the ε-chain has no meaning for."""
        super().check(denoiser)
        if denoiser.layout.options.time == "discrete":
            raise HdlmError(
                "the eps-chain sampler follows the continuous-time chain (diffusion.time=count "
                "or continuous); this model was trained with time=discrete: use --sampler "
                "ancestral"
            )

    def run(self, denoiser, tokens, known, generator, options, pick, trace) -> Tensor:
        return sample_eps_chain(
            denoiser, tokens, known, generator, self.walk(options, tokens), options["reveal"],
            options["final"], options["use_cache"], trace, **pick,
        )  # fmt: skip


@torch.no_grad()
def reconstruction_log_probs(denoiser: Denoiser, tokens: Tensor) -> Tensor:
    """log p_θ(x0 | x_{0+}) [n, L-1, V] for a fully visible `tokens` [n, L] at level 0, laid out
    as in training (`DiffusionObjective.reconstruction`)."""
    layout = denoiser.layout
    x_t = tokens[:, 1:]
    levels = torch.zeros(x_t.shape, device=tokens.device)
    step = torch.full_like(x_t, layout.schedule(x_t.shape[1]).num_steps)
    return layout.log_probs(denoiser.net, tokens, x_t, levels, step)


@torch.no_grad()
def sample_eps_chain(
    denoiser: Denoiser,
    tokens: Tensor,
    known: Tensor,
    generator: torch.Generator | None,
    schedule: Hyperschedule,
    reveal: str = "mixture",
    final: str = "sample",
    use_cache: bool = True,
    trace: Trace | None = None,
    **pick,
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] is False with the ε-hybrid chain:
    reveal along `schedule` (`ChainReverse.chain_step`), then the final reconstruction step."""
    process = denoiser.process
    step = functools.partial(process.chain_step, reveal=reveal)
    visible = sample_hyperschedule(
        denoiser, tokens, known, generator, schedule, use_cache=use_cache, trace=trace,
        reverse_step=step, **pick,
    )  # fmt: skip
    if final == "none":
        return visible
    greedy = pick | {"temperature": 0.0} if final == "greedy" else pick

    def propose() -> Tensor:
        return pick_tokens(reconstruction_log_probs(denoiser, visible), generator, **greedy)

    decoded = process.final_step(visible[:, 1:], propose, final)
    out = visible.clone()
    out[:, 1:] = torch.where(known[1:], visible[:, 1:], decoded)
    if trace is not None:
        trace.add(out, corrected=out[:, 1:] != visible[:, 1:])
    return out
