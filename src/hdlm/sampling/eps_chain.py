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

from hdlm.errors import HdlmError
from hdlm.processes import FINALS, REVEALS, EpsHybrid
from hdlm.sampling.hyperschedule import sample_hyperschedule
from hdlm.sampling.tokens import pick_tokens
from hdlm.sampling.trace import Trace
from hdlm.schedules import Hyperschedule


def check_chain_options(lm, reveal: str, final: str) -> None:
    """Refuse models and options the ε-chain sampler has no meaning for."""
    objective = lm.objective
    if not isinstance(getattr(objective, "process", None), EpsHybrid):
        raise HdlmError("the eps-chain sampler walks eps-hybrid models; use --sampler ancestral")
    if objective.options.time == "discrete":
        raise HdlmError(
            "the eps-chain sampler follows the continuous-time chain (diffusion.time=count or "
            "continuous); this model was trained with time=discrete: use --sampler ancestral"
        )
    if reveal not in REVEALS:
        raise HdlmError(f"--reveal {reveal}: choose one of {', '.join(REVEALS)}")
    if final not in FINALS:
        raise HdlmError(f"--final {final}: choose one of {', '.join(FINALS)}")


@torch.no_grad()
def reconstruction_log_probs(lm, tokens: Tensor) -> Tensor:
    """log p_θ(x0 | x_{0+}) [n, L-1, V] for a fully visible `tokens` [n, L] at level 0, laid out
    as in training (`DiffusionObjective.reconstruction`)."""
    layout = lm.objective.layout
    x_t = tokens[:, 1:]
    levels = torch.zeros(x_t.shape, device=tokens.device)
    step = torch.full_like(x_t, layout.schedule(x_t.shape[1]).num_steps)
    return layout.log_probs(lm.net, tokens, x_t, levels, step)


@torch.no_grad()
def sample_eps_chain(
    lm,
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
    reveal along `schedule` (`EpsHybrid.chain_step`), then the final reconstruction step."""
    check_chain_options(lm, reveal, final)
    process = lm.objective.process
    step = functools.partial(process.chain_step, reveal=reveal)
    visible = sample_hyperschedule(
        lm, tokens, known, generator, schedule, use_cache=use_cache, trace=trace,
        reverse_step=step, **pick,
    )  # fmt: skip
    if final == "none":
        return visible
    greedy = pick | {"temperature": 0.0} if final == "greedy" else pick

    def propose() -> Tensor:
        return pick_tokens(reconstruction_log_probs(lm, visible), generator, **greedy)

    decoded = process.final_step(visible[:, 1:], propose, final)
    out = visible.clone()
    out[:, 1:] = torch.where(known[1:], visible[:, 1:], decoded)
    if trace is not None:
        trace.add(out, corrected=out[:, 1:] != visible[:, 1:])
    return out
