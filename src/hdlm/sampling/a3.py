"""A3 decoding: fill any set of positions in any order, `group_size` tokens per step; infilling.

The given tokens (BOS, a prompt, the text around blanks) are committed first, left to right in
groups of `group_size` (as the training groupings present a context); then each step predicts
the next group from everything committed so far and commits it. Orders:

* `left-to-right`: the unknown positions in order;
* `random`: a random order of the unknown positions (per sample);
* `confidence`: every unknown position is predicted and the `group_size` most confident ones
  (highest probability of their most likely token) form the next group (A3's dynamic resampling).

Committed tokens never change. With the cache, the content-stream keys/values of committed
positions are computed once (they only see committed groups, so they are final) and each step runs
one forward pass over [the group just committed ; the queries of the candidates]; `use_cache=False`
recomputes the whole block each step and gives the same result.

Infilling templates (syntax in `sampling.prompt`): a free blank's length n in 1..`blank_max` is
the one under which the text right after it (up to the next blank) is most likely,
log p(text | everything before, n unknown positions between) — an exact A3 marginal; a free blank
with no text after it gets `blank_max` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm import a3
from hdlm.errors import HdlmError
from hdlm.model.transformer import KVCache
from hdlm.objectives import clean_log_probs
from hdlm.sampling.prompt import check_length, layout, parse_infill
from hdlm.sampling.tokens import pick_tokens

ORDERS = ("left-to-right", "random", "confidence")


def given_groups(known: Tensor, size: int) -> Tensor:
    """Group ids [L] of the known positions (BOS 0, the others left to right in groups of `size`)
    and `unknown_group(L)` elsewhere."""
    rank = known.long().cumsum(0) - 2  # BOS has rank -1
    return torch.where(known, torch.where(rank < 0, 0, rank // size + 1), unknown_group(len(known)))


def unknown_group(length: int) -> int:
    """The group id of positions not decided yet: after every real group."""
    return length + 1


def _query_inputs(tokens: Tensor, groups: Tensor, targets: Tensor, mask_id: int):
    """Query tokens, RoPE positions and gaps for target positions `targets` [n, R]."""
    length = tokens.shape[1]
    committed = groups < unknown_group(length)
    previous = targets - 1
    visible = committed.gather(1, previous)
    query_tokens = torch.where(visible, tokens.gather(1, previous), mask_id)
    columns = torch.arange(length, device=tokens.device)
    last = torch.where(committed, columns, 0).cummax(1).values  # last committed position <= j
    return query_tokens, previous, previous - last.gather(1, previous)


def _rows(mask: Tensor) -> Tensor:
    """Column indices [n, R] of the True entries of `mask` [n, L] (R per row, in order)."""
    return mask.nonzero()[:, 1].view(len(mask), -1)


@torch.no_grad()
def decode(
    net,
    tokens: Tensor,
    known: Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    order: str = "left-to-right",
    group_size: int = 1,
    use_cache: bool = True,
    **pick,
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] (bool, BOS included) is False.

    `net` is an `A3Transformer`; `pick` holds temperature / top_k / top_p (`pick_tokens`).
    """
    if order not in ORDERS:
        raise HdlmError(f"unknown A3 order '{order}'; choose one of {', '.join(ORDERS)}")
    if group_size < 1:
        raise HdlmError(f"group size {group_size} must be at least 1")
    n, length = tokens.shape
    device = tokens.device
    known = known.to(device)
    if not known[0]:
        raise HdlmError("position 0 (BOS) must be given")
    groups = given_groups(known, group_size).expand(n, -1).clone()
    tokens = torch.where(known, tokens, mask_id)
    unknown = (~known).expand(n, -1).clone()
    plan = _rows(unknown)  # the unknown positions, in the order they are to be filled
    if order == "random":
        plan = plan.gather(1, torch.rand(plan.shape, generator=generator, device=device).argsort(1))
    next_group = int(groups[0, known].max()) + 1
    cache = None
    if use_cache:
        cache = KVCache.empty(net.config, n, device, net.embed.weight.dtype)
    pending = _rows(known.expand(n, -1))  # content rows to commit in the next forward pass
    done = 0
    while done < plan.shape[1]:
        # the positions predicted this step: all unknown ones, or the plan's next group
        step_plan = plan[:, done : done + group_size]
        candidates = _rows(unknown) if order == "confidence" else step_plan
        if cache is not None:
            log_probs = _cached_step(net, tokens, groups, pending, candidates, cache, mask_id)
        else:
            stream = a3.stream_inputs(tokens, groups, mask_id)
            all_targets = clean_log_probs(net.two_stream(**stream), mask_id)
            log_probs = all_targets.gather(
                1, (candidates - 1)[..., None].expand(-1, -1, all_targets.shape[-1])
            )
        take = min(group_size, plan.shape[1] - done)
        if order == "confidence":
            best = log_probs.max(-1).values.topk(take, dim=1).indices
            chosen = candidates.gather(1, best)
            log_probs = log_probs.gather(1, best[..., None].expand(-1, -1, log_probs.shape[-1]))
        else:
            chosen = candidates
        new = pick_tokens(log_probs, generator, **pick)
        tokens.scatter_(1, chosen, new)
        groups.scatter_(1, chosen, next_group)
        unknown.scatter_(1, chosen, False)
        pending, next_group, done = chosen, next_group + 1, done + take
    return tokens


def _cached_step(net, tokens, groups, pending, candidates, cache, mask_id) -> Tensor:
    """Commit the content of `pending` [n, P] and predict `candidates` [n, R] in one pass."""
    pending_groups = groups.gather(1, pending)
    within = pending_groups[:, None, :] <= pending_groups[:, :, None]  # [n, P, P]
    n, n_pending, n_query = len(pending), pending.shape[1], candidates.shape[1]
    cached = torch.ones(
        n, n_pending + n_query, cache.length, dtype=torch.bool, device=within.device
    )
    rows = torch.cat((within, within.new_ones(n, n_query, n_pending)), dim=1)
    query_tokens, query_positions, gaps = _query_inputs(tokens, groups, candidates, mask_id)
    logits = net.two_stream(
        tokens.gather(1, pending), pending, query_tokens, query_positions, gaps,
        torch.cat((cached, rows), dim=2), cache=cache, commit=True,
    )  # fmt: skip
    return clean_log_probs(logits, mask_id)


# -- infilling ------------------------------------------------------------------------------------


@torch.no_grad()
def blank_length_scores(
    lm, texts: list[list[int]], lengths: list[int], blank: int, blank_max: int, group_size: int = 1
) -> Tensor:
    """log p(text after blank `blank` | everything before it, n unknown positions between) for
    n = 1..`blank_max`, [blank_max] (exact A3 marginals, one batched forward pass).

    The scored text is `texts[blank + 1]` (up to the next blank); the earlier blanks have
    `lengths`. Only scored positions enter the sum: blanks and padding have log-probability -inf
    (MASK is never a clean token), so they are selected out, never multiplied by 0 (-inf * 0 is
    NaN, and argmax over NaN scores returned length 1 whatever the model said).
    """
    tokenizer, mask_id, device = lm.tokenizer, lm.tokenizer.mask_id, lm.device
    after = len(texts[blank + 1])
    rows = [layout(tokenizer.bos_id, mask_id, texts[: blank + 2], [*lengths[:blank], k])
            for k in range(1, blank_max + 1)]  # fmt: skip
    longest = max(len(row_tokens) for row_tokens, _ in rows)
    batch = torch.full((len(rows), longest), mask_id)
    groups = torch.full((len(rows), longest), unknown_group(longest))
    scored = torch.zeros((len(rows), longest), dtype=torch.bool)
    for r, (row_tokens, row_known) in enumerate(rows):
        size = len(row_tokens)
        is_scored = torch.arange(size) >= size - after
        context = row_known & ~is_scored
        row_groups = given_groups(context, group_size).clamp(max=unknown_group(longest))
        first = -(-(int(context.sum()) - 1) // group_size) + 1  # after the context's groups
        row_groups[is_scored] = first + torch.arange(after) // group_size
        batch[r, :size], groups[r, :size], scored[r, :size] = row_tokens, row_groups, is_scored
    per_token = a3.token_log_likelihood(lm.net, batch.to(device), groups.to(device), mask_id)
    return torch.where(scored[:, 1:].to(device), per_token, 0.0).sum(1)


@torch.no_grad()
def infill_template(
    lm, text: str, blank_max: int = 8, group_size: int = 1
) -> tuple[Tensor, Tensor]:
    """(tokens [L], known [L]) of an infilling template, free blank lengths chosen by the model
    (`blank_length_scores`, the most likely length; a free blank with no text after it gets
    `blank_max`)."""
    tokenizer, mask_id, device = lm.tokenizer, lm.tokenizer.mask_id, lm.device
    pieces = parse_infill(text)
    texts = [tokenizer.encode(p) if p else [] for p in pieces[0::2]]
    blanks: list[int | None] = pieces[1::2]
    if blank_max < 1:
        raise HdlmError(f"--blank-max {blank_max} must be at least 1")
    lengths = [size if size is not None else blank_max for size in blanks]
    for b, size in enumerate(blanks):
        if size is None and texts[b + 1]:
            scores = blank_length_scores(lm, texts, lengths, b, blank_max, group_size)
            lengths[b] = 1 + int(scores.argmax())
    tokens, known = layout(tokenizer.bos_id, mask_id, texts, lengths)
    check_length(lm, len(tokens), "the infilled text (lower --blank-max?)")
    return tokens.to(device), known.to(device)
