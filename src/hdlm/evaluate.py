"""Evaluation: NELBO / perplexity of a model on a corpus split.

Perplexity is exp(Σ NELBO / Σ scored tokens). For AR it is exact; for diffusion families the
NELBO upper-bounds the negative log-likelihood, so the reported perplexity upper-bounds the true
one (docs/math.md).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

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
