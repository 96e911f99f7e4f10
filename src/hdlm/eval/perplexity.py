"""Likelihood on held-out data (docs/metrics.md).

* `perplexity`: exp(Σ NELBO / Σ scored tokens) of held-out blocks. Exact for AR; for diffusion
  families the NELBO upper-bounds the negative log-likelihood, so the perplexity upper-bounds the
  true one (docs/math.md).
* `middle_span`, `infill_metrics`: hide the middle of held-out blocks and score how a model
  fills it (span NLL: exact for A3, a bound for masked diffusion; greedy-fill accuracy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hdlm import sampling
from hdlm.errors import HdlmError
from hdlm.hardware import autocast
from hdlm.model import LanguageModel
from hdlm.schedules import parse_spec


@torch.no_grad()
def perplexity(
    lm: LanguageModel,
    blocks: torch.Tensor,
    batch_size: int = 32,
    precision: str = "fp32",
    max_blocks: int | None = None,
    progress: bool = True,
    mc_samples: int | None = None,
) -> dict:
    """NELBO per token and perplexity over `blocks` [N, L] (each starting with BOS);
    `mc_samples`: Monte Carlo draws per block of a diffusion bound (default
    `diffusion.eval_steps`, reported as `mc_samples`)."""
    blocks = blocks[:max_blocks] if max_blocks else blocks
    terms, total_tokens = nelbo_term_sums(lm, blocks, batch_size, precision, progress, mc_samples)
    nats = sum(terms.values()) / total_tokens
    exact = lm.family.objective in ("ar", "a3")
    return {
        "nelbo_per_token": nats,
        "nelbo_terms_per_token": {name: value / total_tokens for name, value in terms.items()},
        "bits_per_token": nats / math.log(2),
        "perplexity": math.exp(nats),
        "tokens": total_tokens,
        "blocks": len(blocks),
        "mc_samples": None if exact else mc_samples or lm.config.diffusion.eval_steps,
    }


@torch.no_grad()
def nelbo_term_sums(
    lm: LanguageModel,
    blocks: torch.Tensor,
    batch_size: int,
    precision: str = "fp32",
    progress: bool = False,
    mc_samples: int | None = None,
) -> tuple[dict[str, float], int]:
    """({term: Σ nats}, Σ scored tokens) over `blocks` for each of the objective's
    `nelbo_terms` (diffusion, reconstruction, prior; the NLL for ar and a3): sums, so that
    shards add up."""
    totals: dict[str, float] = {}
    total_tokens = 0
    for start in tqdm(range(0, len(blocks), batch_size), desc="eval", disable=not progress):
        batch = blocks[start : start + batch_size].to(lm.device)
        with autocast(lm.device, precision):
            terms = lm.nelbo_terms(batch, samples=mc_samples)
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value.double().sum().item()
        total_tokens += len(batch) * lm.objective.scored_tokens(batch)
    return totals, total_tokens


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


def one_step_per_blank(lm: LanguageModel, fill_options: dict, blanks: int) -> dict:
    """`fill_options` for filling `blanks` positions: greedy (temperature 0) unless they say
    otherwise, and when the sampler walks the model's own flat schedule (no `steps`, no
    `schedule` given), `blanks` steps: one revealed token per step on average."""
    options = {"temperature": 0.0, **fill_options}
    walks = sampling.settings(lm, **options).get("schedule")
    own_flat = walks is not None and parse_spec(walks).kind == "flat"
    if own_flat and not {"steps", "schedule"} & set(options):
        options["steps"] = blanks
    return options


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
    * accuracy: share of hidden tokens a fill (`sampling.fill` with `fill_options`; greedy,
      temperature 0, unless they say otherwise) gets exactly right; diffusion samplers walking
      their flat schedule take as many steps as there are hidden tokens (one per step on average)
      unless `steps` or `schedule` is given; A3 decodes left to right, one token per step,
      unless `order` / `group_size` / `groups` say otherwise.

    `fill` reports every setting the fill used, defaults resolved (`sampling.settings`).
    """
    fill_options = one_step_per_blank(lm, fill_options, int(hidden.sum()))
    used = sampling.settings(lm, **fill_options)
    known = F.pad(hidden, (1, 0), value=False).logical_not().to(lm.device)
    nats, correct = 0.0, 0
    for start in tqdm(range(0, len(tokens), batch_size), desc="infill", disable=not progress):
        batch = tokens[start : start + batch_size].to(lm.device)
        rows = hidden.to(lm.device).expand(len(batch), -1)
        nats += lm.nelbo(batch, rows).double().sum().item()
        filled = sampling.fill(lm, batch, known, **fill_options)
        correct += (filled == batch)[:, ~known].sum().item()
    scored = len(tokens) * int(hidden.sum())
    return {
        "span_nll_per_token": nats / scored,
        "span_perplexity": math.exp(nats / scored),
        "accuracy": correct / scored,
        "spans": len(tokens),
        "span_tokens": int(hidden.sum()),
        "fill": used,
    }
