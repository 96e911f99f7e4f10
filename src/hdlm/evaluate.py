"""Evaluation: NELBO / perplexity of a model on a corpus split, and infilling of held-out spans.

Perplexity is exp(Σ NELBO / Σ scored tokens). For AR it is exact; for diffusion families the
NELBO upper-bounds the negative log-likelihood, so the reported perplexity upper-bounds the true
one (docs/math.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hdlm.errors import HdlmError
from hdlm.hardware import autocast
from hdlm.model import LanguageModel


@torch.no_grad()
def perplexity(
    lm: LanguageModel,
    blocks: torch.Tensor,
    batch_size: int = 32,
    precision: str = "fp32",
    max_blocks: int | None = None,
    progress: bool = True,
) -> dict:
    """NELBO per token and perplexity over `blocks` [N, L] (each starting with BOS)."""
    blocks = blocks[:max_blocks] if max_blocks else blocks
    total_nats, total_tokens = nelbo_sums(lm, blocks, batch_size, precision, progress)
    nats = total_nats / total_tokens
    return {
        "nelbo_per_token": nats,
        "bits_per_token": nats / math.log(2),
        "perplexity": math.exp(nats),
        "tokens": total_tokens,
        "blocks": len(blocks),
    }


@torch.no_grad()
def nelbo_sums(
    lm: LanguageModel,
    blocks: torch.Tensor,
    batch_size: int,
    precision: str = "fp32",
    progress: bool = False,
) -> tuple[float, int]:
    """(Σ NELBO in nats, Σ scored tokens) over `blocks`: sums, so that shards add up."""
    total_nats, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(blocks), batch_size), desc="eval", disable=not progress):
        batch = blocks[start : start + batch_size].to(lm.device)
        with autocast(lm.device, precision):
            total_nats += lm.nelbo(batch).double().sum().item()
        total_tokens += len(batch) * lm.objective.scored_tokens(batch)
    return total_nats, total_tokens


def middle_span(blocks: torch.Tensor, length: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The infilling task on held-out blocks: (tokens [N, length], hidden [length - 1]) with the
    `span` tokens in the middle of each block's first `length` tokens hidden."""
    if not 0 < span < length - 1 or length > blocks.shape[1]:
        raise HdlmError(
            f"infilling needs 0 < span ({span}) < length - 1 and length ({length}) <= the block "
            f"length ({blocks.shape[1]})"
        )
    start = (length - 1 - span) // 2
    hidden = torch.zeros(length - 1, dtype=torch.bool)
    hidden[start : start + span] = True
    return blocks[:, :length], hidden


@torch.no_grad()
def infill_metrics(
    lm: LanguageModel,
    tokens: torch.Tensor,
    hidden: torch.Tensor,
    batch_size: int = 32,
    progress: bool = True,
    **fill_options,
) -> dict:
    """How well `lm` fills the `hidden` [L-1] positions of `tokens` [N, L] from the rest.

    * span NLL per token: -log p(x_hidden | rest) / |hidden|, exact for A3, the conditional
      NELBO (an upper bound) for masked diffusion (`LanguageModel.nelbo(tokens, hidden)`);
    * accuracy: share of hidden tokens a greedy fill (`sampling.fill`, temperature 0 unless
      `fill_options` say otherwise) gets exactly right.
    """
    from hdlm.sampling import fill

    fill_options = {"temperature": 0.0, **fill_options}
    known = F.pad(hidden, (1, 0), value=False).logical_not().to(lm.device)
    nats, correct = 0.0, 0
    for start in tqdm(range(0, len(tokens), batch_size), desc="infill", disable=not progress):
        batch = tokens[start : start + batch_size].to(lm.device)
        rows = hidden.to(lm.device).expand(len(batch), -1)
        nats += lm.nelbo(batch, rows).double().sum().item()
        filled = fill(lm, batch.clone(), known, **fill_options)
        correct += (filled == batch)[:, ~known].sum().item()
    scored = len(tokens) * int(hidden.sum())
    return {
        "span_nll_per_token": nats / scored,
        "span_perplexity": math.exp(nats / scored),
        "accuracy": correct / scored,
        "spans": len(tokens),
        "span_tokens": int(hidden.sum()),
        "fill": {k: v for k, v in fill_options.items() if v is not None},
    }
