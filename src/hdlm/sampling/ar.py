"""Left-to-right sampling with a KV cache: each step computes one new position."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hdlm.readout import clean_log_probs
from hdlm.sampling.tokens import pick_tokens
from hdlm.sampling.trace import Trace

if TYPE_CHECKING:  # the sampler reaches the network only through what the denoiser hands it
    from hdlm.model.transformer import Transformer


@torch.no_grad()
def sample_ar(
    net: Transformer,
    prefix: Tensor,
    length: int,
    generator: torch.Generator | None,
    mask_id: int,
    use_cache: bool = True,
    trace: Trace | None = None,
    **pick_options,
) -> Tensor:
    """Extend `prefix` [n, P] (BOS and prompt) to [n, length] one token at a time.

    With the cache the prefix is committed once and every step feeds only the newest token;
    `use_cache=False` recomputes the whole sequence each step (same tokens, slower). MASK is
    never drawn. `trace` records every step: the tokens so far (MASK after them) and the one
    position revealed.
    """
    cache = net.new_cache(len(prefix), prefix.device) if use_cache else None
    logits = net(prefix, cache=cache, commit=True)[:, -1]
    tokens = prefix
    while tokens.shape[1] < length:
        new = pick_tokens(clean_log_probs(logits, mask_id), generator, **pick_options)
        tokens = torch.cat((tokens, new[:, None]), dim=1)
        if trace is not None:
            record_growth(trace, tokens, length, mask_id)
        if tokens.shape[1] < length:
            step_logits = net(new[:, None], cache=cache, commit=True) if use_cache else net(tokens)
            logits = step_logits[:, -1]
    return tokens


def record_growth(trace: Trace, tokens: Tensor, length: int, mask_id: int) -> None:
    """Add a step to `trace`: `tokens` [n, P] padded with MASK to `length`, position P - 1 new."""
    n, grown = tokens.shape
    padded = torch.cat((tokens, tokens.new_full((n, length - grown), mask_id)), dim=1)
    revealed = torch.zeros(n, length - 1, dtype=torch.bool)
    revealed[:, grown - 2] = True
    trace.add(padded, revealed=revealed)
