"""Turning logits into tokens: temperature, top-k, top-p (nucleus) and greedy choice; and how
certain such a distribution is (A3's dynamic orders rank positions by it)."""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.processes.base import categorical

CRITERIA = ("confidence", "entropy")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set of mass >= top_p."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop_sorted = mass_before >= top_p  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def shape_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Float32 logits of the distribution `pick_tokens` draws from: logits / temperature, then
    top-k and top-p. Temperature 0 (greedy: the draw is the argmax, a point mass) is shaped as
    temperature 1, the distribution whose mode greedy decoding takes. Float32 `logits` that
    nothing reshapes are returned as they are (x / 1 == x exactly, so nothing changes)."""
    logits = logits.float()
    if temperature not in (0, 1):
        logits = logits / temperature
    return filter_logits(logits, top_k, top_p)


def draw(shaped: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of the shaped logits [..., V] (`shape_logits`), by inversion
    (`categorical`)."""
    return categorical(shaped.softmax(-1), generator)


def pick_tokens(
    logits: Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Draw one token per row of `logits` [..., V]; temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    return draw(shape_logits(logits, temperature, top_k, top_p), generator)


def certainty(log_probs: Tensor, criterion: str, **pick) -> Tensor:
    """How sure the distribution that `pick_tokens(log_probs, **pick)` draws from is, higher =
    surer, [...] for normalised `log_probs` [..., V]; with p that distribution (`shape_logits`):

    * `confidence`: log max_v p(v);
    * `entropy`: -H(p) = Σ_v p(v) log p(v), with 0 log 0 = 0 (filtered-out tokens have p = 0;
      multiplying their log p = -inf by 0 would give NaN).
    """
    shaped = shape_logits(log_probs, **pick)
    if shaped is not log_probs:  # reshaped: normalise again
        shaped = shaped.log_softmax(-1)
    if criterion == "confidence":
        return shaped.amax(-1)
    if criterion == "entropy":
        return -torch.special.entr(shaped.exp()).sum(-1)
    raise ValueError(f"unknown criterion {criterion!r}; one of {CRITERIA}")
