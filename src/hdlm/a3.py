"""A3: any-order, any-subset autoregression over groups of positions (design.md §2).

A grouping is a per-position group id g [B, L] (long). Position 0 is BOS, in group 0; g_i = 0 also
marks other given, unscored positions (a prompt). Groups 1, 2, ... are predicted in that order,
the positions of one group in parallel:

    log p(x) = Σ_k log p(x_{G_k} | x_{G_0}, ..., x_{G_{k-1}}).

Masks (`stream_inputs`): content row i sees content j iff g_j <= g_i; the query for target i sees
content j iff g_j < g_i. Groupings for training (`draw_groups`):

* `left-to-right`: consecutive runs of `size` positions, in order (size 1 = AR);
* `random`: a random permutation of the positions cut into groups of `size`;
* `spans`: random spans are the blanks; the other positions come first, left to right in groups
  of `size`, then the blanks in random order in groups of `size` (infilling);
* `prompt-first`: a random-length prefix first, left to right in groups of `size`, then the rest
  in random order in groups of `size` (prompted generation in any order);
* `mixed`: each sequence left-to-right or random with probability 1/2.

Every training grouping scores every position after BOS, so the loss is an unbiased estimate of
the expected NLL over the grouping distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.config import A3Config, A3Stage
from hdlm.errors import ConfigError
from hdlm.readout import clean_log_probs

GROUPINGS = ("left-to-right", "random", "spans", "prompt-first", "mixed")
BLANK_SHARE = (0.1, 0.9)  # `spans`: the share of a sequence that is blank, drawn uniformly here
MIXED_IN_ORDER = 0.5  # `mixed`: probability that a sequence is grouped left to right


# -- groupings ------------------------------------------------------------------------------------


def _ranks(keys: Tensor) -> Tensor:
    """Rank (0-based) of every entry along the last dimension."""
    return keys.argsort(-1).argsort(-1)


def _with_bos(inner: Tensor) -> Tensor:
    return torch.nn.functional.pad(inner, (1, 0), value=0)


def left_to_right(batch: int, length: int, size: int = 1, device=None) -> Tensor:
    """[batch, length]: BOS in group 0, then runs of `size` positions in order."""
    inner = torch.arange(length - 1, device=device) // size + 1
    return _with_bos(inner).expand(batch, -1).clone()


def random_order(batch: int, length: int, size: int = 1, generator=None, device=None) -> Tensor:
    """[batch, length]: a uniformly random order of the positions after BOS, groups of `size`."""
    keys = torch.rand(batch, length - 1, generator=generator, device=device)
    return _with_bos(_ranks(keys) // size + 1)


def context_first(context: Tensor, size: int, generator=None, in_order: bool = False) -> Tensor:
    """Groups for `context` [B, L-1] (bool) positions first, left to right in groups of `size`,
    then the others in random order (or left to right) in groups of `size`."""
    context_rank = context.long().cumsum(-1) - 1
    n_context_groups = -(-context.sum(-1, keepdim=True) // size)
    if in_order:
        keys = torch.arange(context.shape[-1], device=context.device).float().expand_as(context)
    else:
        keys = torch.rand(context.shape, generator=generator, device=context.device)
    rest_rank = _ranks(torch.where(context, 2.0, keys))  # the others take ranks 0, 1, ...
    inner = torch.where(context, context_rank // size + 1, n_context_groups + rest_rank // size + 1)
    return _with_bos(inner)


def random_spans(
    batch: int, length: int, size: int = 1, generator=None, device=None, mean_span: float = 8.0
) -> Tensor:
    """Blanks are random spans (lengths uniform on 1..2·mean_span - 1, covering a share of the
    sequence drawn uniformly in `BLANK_SHARE`); the rest is the context, predicted first
    (`context_first`)."""
    n = length - 1
    low, high = BLANK_SHARE
    share = low + (high - low) * torch.rand(batch, 1, generator=generator, device=device)
    starts = torch.rand(batch, n, generator=generator, device=device) < share / mean_span
    longest = max(1, round(2 * mean_span - 1))
    lengths = 1 + (torch.rand(batch, n, generator=generator, device=device) * longest).long()
    pos = torch.arange(n, device=device)
    inside = (pos[None, None, :] >= pos[None, :, None]) & (
        pos[None, None, :] < pos[None, :, None] + lengths[:, :, None]
    )
    blank = (starts[:, :, None] & inside).any(1)
    # at least one blank per sequence: the position of the largest start key otherwise
    fallback = torch.zeros_like(blank).scatter_(
        1, torch.rand(batch, n, generator=generator, device=device).argmax(-1, keepdim=True), True
    )
    blank = torch.where(blank.any(-1, keepdim=True), blank, fallback)
    return context_first(~blank, size, generator)


def prompt_first(batch: int, length: int, size: int = 1, generator=None, device=None) -> Tensor:
    """A prefix of uniformly random length 0..L-2 first (left to right), then the rest."""
    n = length - 1
    prefix = (torch.rand(batch, 1, generator=generator, device=device) * n).long()
    return context_first(torch.arange(n, device=device) < prefix, size, generator)


def draw_groups(
    kind: str,
    batch: int,
    length: int,
    size: int = 1,
    generator=None,
    device=None,
    mean_span: float = 8.0,
) -> Tensor:
    """Group ids [batch, length] from the grouping `kind` (one of `GROUPINGS`)."""
    if kind == "left-to-right":
        return left_to_right(batch, length, size, device)
    if kind == "random":
        return random_order(batch, length, size, generator, device)
    if kind == "spans":
        return random_spans(batch, length, size, generator, device, mean_span)
    if kind == "prompt-first":
        return prompt_first(batch, length, size, generator, device)
    if kind == "mixed":
        coin = torch.rand(batch, 1, generator=generator, device=device) < MIXED_IN_ORDER
        ordered = left_to_right(batch, length, size, device)
        return torch.where(coin, ordered, random_order(batch, length, size, generator, device))
    raise ConfigError(f"unknown A3 grouping '{kind}'; choose one of {', '.join(GROUPINGS)}")


# -- curriculum -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    index: int  # 1-based
    count: int
    start: int  # first training step of the stage
    grouping: str
    group_size: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count} {self.grouping}:{self.group_size}"


def stages(options: A3Config) -> list[Stage]:
    """The curriculum as stages with their first step (one stage when there is no curriculum)."""
    specs = options.curriculum or [A3Stage(0, options.grouping, options.group_size)]
    starts = [0]
    for spec in specs[:-1]:
        starts.append(starts[-1] + spec.steps)
    return [
        Stage(i + 1, len(specs), start, spec.grouping, spec.group_size)
        for i, (spec, start) in enumerate(zip(specs, starts, strict=True))
    ]


def stage_at(all_stages: list[Stage], step: int) -> Stage:
    """The stage training step `step` belongs to (the last one lasts until the end)."""
    return [s for s in all_stages if s.start <= step][-1]


# -- the two-stream forward pass ------------------------------------------------------------------


def stream_inputs(tokens: Tensor, groups: Tensor, mask_id: int) -> dict[str, Tensor]:
    """Arguments of `A3Transformer.two_stream` for the whole block at once (training layout):
    content rows 0..L-1, query rows for targets 1..L-1. Queries of given positions (g = 0) are
    computed against group 0 and never read."""
    batch, length = tokens.shape
    device = tokens.device
    content_mask = groups[:, None, :] <= groups[:, :, None]  # [B, L, L]
    target = groups[:, 1:].clamp(min=1)
    query_mask = groups[:, None, :] < target[:, :, None]  # [B, L-1, L]
    query_tokens = torch.where(groups[:, :-1] < target, tokens[:, :-1], mask_id)
    columns = torch.arange(length, device=device)
    targets = torch.arange(1, length, device=device)
    left = query_mask & (columns[None, None, :] < targets[None, :, None])
    nearest = torch.where(left, columns, 0).amax(-1)  # nearest known position left of i (BOS)
    positions = columns.expand(batch, -1)
    return {
        "content_tokens": tokens,
        "content_positions": positions,
        "query_tokens": query_tokens,
        "query_positions": positions[:, :-1],
        "query_gaps": targets - 1 - nearest,
        "attn_mask": torch.cat((content_mask, query_mask), dim=1),
    }


def target_log_probs(net, tokens: Tensor, groups: Tensor, mask_id: int) -> Tensor:
    """log p_θ(x_i = v | x_{g_j < g_i}) for the targets i = 1..L-1, [B, L-1, V], MASK excluded."""
    logits = net.two_stream(**stream_inputs(tokens, groups, mask_id))
    return clean_log_probs(logits, mask_id)


def token_log_likelihood(net, tokens: Tensor, groups: Tensor, mask_id: int) -> Tensor:
    """log p_θ(x_i | earlier groups) [B, L-1]; zero at given positions (g = 0)."""
    log_probs = target_log_probs(net, tokens, groups, mask_id)
    picked = log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return torch.where(groups[:, 1:] > 0, picked, 0.0)


def log_likelihood(net, tokens: Tensor, groups: Tensor, mask_id: int) -> Tensor:
    """Exact log p_θ(x) [B] under the grouping `groups`: Σ_k log p(x_{G_k} | x_{G_<k}), over the
    scored positions (g > 0), conditioned on the given ones (g = 0)."""
    return token_log_likelihood(net, tokens, groups, mask_id).sum(-1)


def eval_groups(options: A3Config, tokens: Tensor, hidden: Tensor | None = None) -> Tensor:
    """The evaluation grouping of `options` for `tokens` (random orders from `eval_seed`); with
    `hidden` [B, L-1], the other positions come first (`context_first`)."""
    batch, length = tokens.shape
    size, in_order = options.eval_group_size, options.eval_order == "left-to-right"
    generator = torch.Generator(tokens.device).manual_seed(options.eval_seed)
    if hidden is not None:
        return context_first(~hidden, size, generator, in_order)
    if in_order:
        return left_to_right(batch, length, size, tokens.device)
    return random_order(batch, length, size, generator, tokens.device)
