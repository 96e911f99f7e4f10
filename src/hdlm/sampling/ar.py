"""Left-to-right sampling with a KV cache: each step computes one new position."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hdlm.readout import clean_log_probs
from hdlm.sampling.tokens import pick_tokens

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
    **pick_options,
) -> Tensor:
    """Extend `prefix` [n, P] (BOS and prompt) to [n, length] one token at a time.

    With the cache the prefix is committed once and every step feeds only the newest token;
    `use_cache=False` recomputes the whole sequence each step (same tokens, slower). MASK is
    never drawn.
    """
    cache = net.new_cache(len(prefix), prefix.device) if use_cache else None
    logits = net(prefix, cache=cache, commit=True)[:, -1]
    tokens = prefix
    while tokens.shape[1] < length:
        new = pick_tokens(clean_log_probs(logits, mask_id), generator, **pick_options)
        tokens = torch.cat((tokens, new[:, None]), dim=1)
        if tokens.shape[1] < length:
            step_logits = net(new[:, None], cache=cache, commit=True) if use_cache else net(tokens)
            logits = step_logits[:, -1]
    return tokens
