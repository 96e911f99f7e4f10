"""A3 decoding: fill any set of positions in any order, any number of tokens per step; infilling.

The given tokens (BOS, a prompt, the text around blanks) are committed first, left to right in
groups of `group_size` (as the training groupings present a context); then each step predicts
the next group from everything committed so far and commits it. The next group is

* `groups`: an explicit grouping (`sampling.a3_groups`: groups of positions in order, or a group
  id per position), any order, any sizes;
* `order="left-to-right"`: the next `group_size` positions to fill;
* `order="random"`: `group_size` positions to fill uniformly at random (a random priority per
  position, drawn once: a random permutation cut into groups);
* `order="confidence"` / `"entropy"` (A3's dynamic resampling): every position still to fill is
  predicted and the `group_size` ones whose distribution is surest are committed: the highest
  probability of the most likely token, or the lowest entropy (`tokens.certainty`). Positions
  are ranked by the distribution that is actually sampled from: the model's, after temperature,
  top-k and top-p (`tokens.shape_logits`; at temperature 0, greedy, the temperature-1 one).

Committed tokens never change. With the cache, the content-stream keys/values of committed
positions are computed once (they only see committed groups, so they are final) and each step runs
one forward pass over [the group just committed ; the queries of the candidates]; `use_cache=False`
recomputes the whole block each step and gives the same result.

End of text (`stop_id`, the EOS id; `fill` passes it unless `eos_stop=False`): the positions
after the last given token form the open tail. Once a row has committed EOS in its tail, the
text ends at its leftmost committed EOS: the tail positions to its right that are still unknown
are never decoded (nor attended to), and every tail position right of it comes out as EOS —
including tokens drawn with or before the EOS in other orders than left to right (they stay in
the context of the steps that follow, which already conditioned on them). Left to right this is
the usual "stop at EOS"; a blank followed by given text has no tail, so EOS there is a token.
Decoding ends when every row has nothing left to fill.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm import a3
from hdlm.errors import HdlmError
from hdlm.readout import clean_log_probs
from hdlm.sampling.a3_groups import explicit_steps
from hdlm.sampling.prompt import check_length, layout, parse_infill
from hdlm.sampling.tokens import CRITERIA, certainty, pick_tokens
from hdlm.sampling.trace import Trace

ORDERS = ("left-to-right", "random", *CRITERIA)


def given_groups(known: Tensor, size: int) -> Tensor:
    """Group ids [L] of the known positions (BOS 0, the others left to right in groups of `size`)
    and `unknown_group(L)` elsewhere."""
    rank = known.long().cumsum(0) - 2  # BOS has rank -1
    return torch.where(known, torch.where(rank < 0, 0, rank // size + 1), unknown_group(len(known)))


def unknown_group(length: int) -> int:
    """The group id of positions not decided yet: after every real group."""
    return length + 1


def query_rows(targets: Tensor) -> Tensor:
    """The row i - 1 that queries target i. A pick at BOS (i = 0: a row with nothing left to
    commit this step, `commit` writes nothing there) is queried at row 0, a harmless dummy."""
    return (targets - 1).clamp_min(0)


def _query_inputs(tokens: Tensor, committed: Tensor, targets: Tensor, mask_id: int):
    """Query tokens, RoPE positions and gaps for target positions `targets` [n, R], given which
    positions are `committed` [n, L] (`model.a3`: the content input of i - 1, at i - 1, and the
    number of uncommitted positions between the nearest committed one and i)."""
    previous = query_rows(targets)
    visible = committed.gather(1, previous)
    query_tokens = torch.where(visible, tokens.gather(1, previous), mask_id)
    columns = torch.arange(tokens.shape[1], device=tokens.device)
    last = torch.where(committed, columns, 0).cummax(1).values  # last committed position <= j
    return query_tokens, previous, previous - last.gather(1, previous)


class Decoding:
    """A batch being decoded: its tokens, group ids, which positions are committed and which are
    still open (to fill), and the KV cache of the committed content rows."""

    def __init__(self, net, tokens, known, mask_id, group_size, use_cache, stop_id):
        n, length = tokens.shape
        device = tokens.device
        self.net, self.mask_id, self.stop_id = net, mask_id, stop_id
        self.tokens = torch.where(known, tokens, mask_id)
        self.groups = given_groups(known, group_size).expand(n, -1).clone()
        self.committed = known.expand(n, -1).clone()
        self.open = ~self.committed
        self.columns = torch.arange(length, device=device)
        self.next_group = int(self.groups[0, known].max()) + 1
        self.tail = self.columns > int(self.columns[known].max())  # after the last given token
        self.pending = self.columns[known].expand(n, -1)  # content rows the next pass commits
        self.cache = self.visible = None
        if use_cache:
            self.cache = net.new_cache(n, device)
            if stop_id is not None:  # cache slots later rows may attend to (see `commit`)
                self.visible = torch.ones(n, net.config.max_len, dtype=torch.bool, device=device)

    def log_probs(self, targets: Tensor) -> Tensor:
        """log p_θ(x_i | committed) at the positions `targets` [n, R], [n, R, V], MASK excluded;
        with the cache, this pass also commits the pending content rows."""
        if self.cache is not None:
            logits = self._cached_logits(targets)
        else:
            logits = self.net.two_stream(**a3.stream_inputs(self.tokens, self.groups, self.mask_id))
            rows = query_rows(targets)[..., None].expand(-1, -1, logits.shape[-1])
            logits = logits.gather(1, rows)
        return clean_log_probs(logits, self.mask_id)

    def _cached_logits(self, targets: Tensor) -> Tensor:
        """One pass over [pending content rows ; queries of `targets`] against the cache."""
        pending = self.pending
        query_tokens, query_positions, gaps = _query_inputs(
            self.tokens, self.committed, targets, self.mask_id
        )
        start, end = self.cache.length, self.cache.length + pending.shape[1]
        if start == 0:  # the given tokens: within their groups; the queries see all of them
            pending_groups = self.groups.gather(1, pending)
            within = pending_groups[:, None, :] <= pending_groups[:, :, None]
            mask = torch.cat((within, within.new_ones(len(targets), targets.shape[1], end)), 1)
        elif self.visible is not None:  # every row sees the visible slots (one row, broadcast)
            mask = self.visible[:, None, :end]
        else:  # everything committed is visible to everything computed now
            mask = None
        return self.net.two_stream(
            self.tokens.gather(1, pending), pending, query_tokens, query_positions, gaps, mask,
            cache=self.cache, commit=True,
        )  # fmt: skip

    def commit(self, chosen: Tensor, new: Tensor) -> Tensor:
        """Commit the tokens `new` at the positions `chosen` [n, k] that are still open, as the
        next group; return which were (the others: closed by an EOS, or padding of a row with
        fewer than k open positions, are not written and never attended to)."""
        valid = self.open.gather(1, chosen)
        self.tokens.scatter_(1, chosen, torch.where(valid, new, self.tokens.gather(1, chosen)))
        group = torch.where(valid, self.next_group, self.groups.gather(1, chosen))
        self.groups.scatter_(1, chosen, group)
        self.committed.scatter_(1, chosen, valid | self.committed.gather(1, chosen))
        self.open.scatter_(1, chosen, False)
        if self.visible is not None:  # the pass that computes them writes these cache slots
            start = self.cache.length
            self.visible[:, start : start + chosen.shape[1]] = valid
        self.pending, self.next_group = chosen, self.next_group + 1
        if self.stop_id is not None:
            self.open &= self.columns <= self._end()
        return valid

    def _end(self) -> Tensor:
        """[n, 1]: each row's leftmost committed EOS in the tail (L when it has none)."""
        eos = self.committed & self.tail & (self.tokens == self.stop_id)
        return torch.where(eos, self.columns, len(self.columns)).amin(1, keepdim=True)

    def result(self) -> Tensor:
        """The tokens; with an end of text, EOS at every position right of each row's end."""
        if self.stop_id is None:
            return self.tokens
        return torch.where(self.columns > self._end(), self.stop_id, self.tokens)


@torch.no_grad()
def decode(
    net,
    tokens: Tensor,
    known: Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    order: str | None = None,
    group_size: int = 1,
    use_cache: bool = True,
    *,
    groups=None,
    stop_id: int | None = None,
    trace: Trace | None = None,
    **pick,
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] (bool, BOS included) is False.

    `net` is an `A3Transformer`; `order` (default left-to-right) or `groups` (an explicit
    grouping) sets the order, `group_size` the tokens per step (and the grouping of the given
    tokens); `stop_id` ends each row at its first EOS in the tail (module docstring); `trace`
    records the group committed at each step; `pick` holds temperature / top_k / top_p.
    """
    _check(order, group_size, groups)
    order = order or "left-to-right"
    known = known.to(tokens.device)
    if not known[0]:
        raise HdlmError("position 0 (BOS) must be given")
    net.check_context(None, tokens.shape[1])  # (the uncached passes index RoPE tables by position)
    plan = explicit_steps(groups, known) if groups is not None else None
    state = Decoding(net, tokens, known, mask_id, group_size, use_cache, stop_id)
    remaining = int((~known).sum())
    steps = len(plan) if plan is not None else -(-remaining // group_size)
    candidates, live = _padded(state.columns[~known]).expand(len(tokens), -1), remaining
    priority = _priority(order, tokens.shape, state.columns, generator)
    for step in range(steps):
        if stop_id is not None and step > 0 and not state.open.any():
            break  # every row has ended
        if plan is not None:
            chosen = plan[step].expand(len(tokens), -1)
            log_probs = state.log_probs(chosen)
        elif order in CRITERIA:
            take = min(group_size, live)
            chosen, log_probs, candidates = _surest(state, candidates, live, take, order, pick)
            live -= take
        else:
            take = min(group_size, remaining - step * group_size)
            top = torch.where(state.open, priority, float("-inf")).topk(take, 1)
            # a row with fewer open positions than `take` (it has ended) gets picks scored
            # -inf, at arbitrary positions (topk's order among ties; index 0 for long rows):
            # point them all at BOS, never open, as `_surest` does
            chosen = torch.where(top.values > float("-inf"), top.indices, 0)
            log_probs = state.log_probs(chosen)
        committed = state.commit(chosen, pick_tokens(log_probs, generator, **pick))
        if trace is not None:
            revealed = torch.zeros_like(state.open).scatter_(1, chosen, committed)
            trace.add(state.tokens, revealed=revealed[:, 1:])
    return state.result()


def _check(order: str | None, group_size: int, groups) -> None:
    """One-line errors for an unknown order, an order with a grouping, a group size below 1."""
    if order is not None and order not in ORDERS:
        raise HdlmError(f"unknown A3 order '{order}'; choose one of {', '.join(ORDERS)}")
    if order is not None and groups is not None:
        raise HdlmError("give an A3 order (--order) or an explicit grouping (--groups), not both")
    if group_size < 1:
        raise HdlmError(f"group size {group_size} must be at least 1")


def _priority(order: str, shape, columns: Tensor, generator) -> Tensor | None:
    """Static orders: [n, L] priorities, the highest open ones are committed next."""
    if order == "left-to-right":
        return -columns.float().expand(shape)
    if order == "random":
        return torch.rand(shape, generator=generator, device=columns.device)
    return None


# Candidate lists of the dynamic orders are padded to a multiple of this many rows: the bf16 CPU
# matmuls cache one primitive per shape, and a list one shorter every step grew the process by
# ~3 MB a step (L = 256: 970 MiB peak instead of 290); padding costs at most 15 query rows.
BUCKET = 16


def _padded(positions: Tensor) -> Tensor:
    """`positions` [R] padded to a multiple of `BUCKET` by repeating the last one (the padding
    is never ranked: `_surest` looks at the first `live` entries only)."""
    width = -(-len(positions) // BUCKET) * BUCKET
    return torch.cat((positions, positions[-1:].expand(width - len(positions))))


def _surest(state: Decoding, candidates: Tensor, live: int, take: int, criterion: str, pick):
    """Dynamic orders: predict the candidates [n, W] (the first `live` are real, the rest
    padding), choose the `take` surest open ones.

    Returns (chosen positions [n, take], their log-probabilities, the candidates left: the
    others in order, then padding to a multiple of `BUCKET`)."""
    log_probs = state.log_probs(candidates)
    scores = certainty(log_probs, criterion, **pick)
    real = torch.arange(candidates.shape[1], device=candidates.device) < live
    scores = torch.where(state.open.gather(1, candidates) & real, scores, float("-inf"))
    top = scores.topk(take, 1)
    best = top.indices
    # a row with fewer open positions than `take` (it has ended) also gets picks scored -inf;
    # point those at BOS, never open, so that no pick can repeat an open position (padding
    # repeats the last unknown position, which an ended row has closed, but do not rely on it)
    chosen = torch.where(top.values > float("-inf"), candidates.gather(1, best), 0)
    log_probs = log_probs.gather(1, best[..., None].expand(-1, -1, log_probs.shape[-1]))
    # stable sort: the real entries left come first, in order, then padding and the chosen ones
    chosen_mask = torch.zeros_like(candidates, dtype=torch.uint8).scatter_(1, best, 1)
    width = min(candidates.shape[1], -(-(live - take) // BUCKET) * BUCKET)
    stay = chosen_mask.argsort(dim=1, stable=True)[:, :width]
    return chosen, log_probs, candidates.gather(1, stay)


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
