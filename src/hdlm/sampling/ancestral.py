"""MDLM-style ancestral sampling for masked (absorbing / ε-hybrid) diffusion with full attention.

Start from all-MASK after the prompt; walking a flat time grid 1 = t_0 > t_1 > ... > t_S = 0,
each still-masked position is revealed with probability (t - s) / t, its token drawn from
p_θ(x0 | x_t). Visible tokens never change. The network is skipped when the previous step
revealed nothing (nothing it sees has changed), MDLM's caching trick.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.sampling.tokens import pick_tokens


@torch.no_grad()
def sample_ancestral(
    lm, prefix: Tensor, length: int, generator: torch.Generator | None, steps: int = 128, **pick
) -> Tensor:
    """Fill positions len(prefix)..length-1 of each row in `steps` reverse steps."""
    objective = lm.objective
    options = getattr(objective, "options", None)
    if options is None or options.attention != "full":
        raise HdlmError(
            f"the ancestral sampler serves full-attention diffusion families (mdlm, eps-hybrid); "
            f"family '{lm.config.family}' needs a sampler that follows its schedule "
            "(ar for ar; the hyperschedule sampler for block and slide is not in this version)"
        )
    n, device = prefix.shape[0], prefix.device
    mask_id = lm.tokenizer.mask_id
    tokens = torch.cat(
        (prefix, torch.full((n, length - prefix.shape[1]), mask_id, device=device)), 1
    )
    grid = torch.linspace(1, 0, steps + 1, device=device)
    log_probs = None
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        masked = tokens[:, 1:] == mask_id
        if log_probs is None:  # recompute only after something changed
            level = torch.full(masked.shape, float(t), device=device)  # as in training
            step = torch.ones_like(tokens[:, 1:])  # only schedule-masked attention reads it
            log_probs = objective.log_probs(lm.net, tokens, tokens[:, 1:], level, step)
        reveal = masked & (
            torch.rand(masked.shape, generator=generator, device=device) < (t - s) / t
        )
        if reveal.any():
            proposal = pick_tokens(log_probs, generator, **pick)
            tokens[:, 1:] = torch.where(reveal, proposal, tokens[:, 1:])
            log_probs = None
    return tokens
