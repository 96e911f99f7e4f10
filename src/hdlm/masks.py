"""Boolean attention masks: mask[q, k] = True when query position q may attend to key position k.

Masks are [Lq, Lk] and broadcast over batch and heads in torch's scaled_dot_product_attention.
Invariant: every row allows at least one key, because SDPA returns NaN for a fully masked row.
Rows whose output is ignored (fully noised positions) therefore still attend to themselves.
"""

from __future__ import annotations

import torch

from hdlm.errors import ConfigError
from hdlm.schedules import Hyperschedule


def _group_causal(group: torch.Tensor) -> torch.Tensor:
    """mask[q, k] = group[k] <= group[q]: full inside a group, causal across groups."""
    return group[None, :] <= group[:, None]


def _blocks(length: int, width: int, offset: int = 0) -> torch.Tensor:
    """LongTensor [L]: the block (i + offset) // width of every position (floor division, so
    offset -1 puts position 0 alone in block -1)."""
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"block width must be a positive integer, got {width!r}")
    return (torch.arange(length) + offset) // width


def causal(length: int) -> torch.Tensor:
    """[L, L]: q attends to k iff k <= q."""
    return _group_causal(torch.arange(length))


def full(length: int) -> torch.Tensor:
    """[L, L]: every position attends to every position."""
    return torch.ones(length, length, dtype=torch.bool)


def block_causal(length: int, width: int, offset: int = 0) -> torch.Tensor:
    """[L, L]: q attends to k iff b(k) <= b(q), b(i) = (i + offset) // width (full in a block,
    causal across).

    What inference with a KV cache over settled blocks sees.
    """
    return _group_causal(_blocks(length, width, offset))


def from_schedule(schedule: Hyperschedule, step: int | torch.Tensor) -> torch.Tensor:
    """[L, L]: the mask for training on step s of a hyperschedule, equal to cached inference.

    A LongTensor of steps [B] (one per sequence) gives the masks [B, L, L] in one go.

    With settled = schedule.settled(s - 1), active = schedule.active(s),
    untouched = schedule.untouched(s) (a partition of the positions) and
    settle_step[i] = the step that makes position i clean:

        settled q    attends to k iff k is settled and settle_step[k] <= settle_step[q]
        active q     attends to k iff k is settled or active
        untouched q  attends to k iff k == q      (not computed at inference; output ignored)

    Settled positions see exactly the positions that were clean when they themselves became
    clean, so their keys/values are the ones a KV cache committed at that time: inference
    commits each step's newly settled positions together, attending to the cache and to each
    other. This is causal for quenched AR (one position settles per step, left to right),
    block-causal for block schedules (the clean copy of `two_copy_block_diffusion`), and
    cache-exact for any order of settling, where "causal by index" would not be.
    """
    # The states come from two [L] tables by comparison, on the steps' device (no table lookup
    # and no host sync): settled(s-1) iff settle_step <= s - 1, untouched(s) iff start_step > s.
    step = torch.as_tensor(step)
    settle_step = schedule.settle_step.to(step.device)
    settled = settle_step <= step[..., None] - 1
    untouched = schedule.start_step.to(step.device) > step[..., None]
    active = ~settled & ~untouched
    # settle_step[k] <= settle_step[q] < s already makes k settled when q is.
    settled_rows = settled[..., :, None] & _group_causal(settle_step)
    active_rows = active[..., :, None] & ~untouched[..., None, :]
    eye = torch.eye(schedule.length, dtype=torch.bool, device=step.device)
    return settled_rows | active_rows | (untouched[..., :, None] & eye)


def two_copy_block_diffusion(length: int, width: int, offset: int = 0) -> torch.Tensor:
    """[2L, 2L] mask over [noisy copy ; clean copy] for vectorised block-diffusion training.

    With b(i) = (i + offset) // width: noisy q attends to noisy k iff b(k) == b(q) and to clean
    k iff b(k) < b(q); clean q attends to clean k iff b(k) <= b(q) and never to a noisy token. One
    forward pass thus trains every block at once, each seeing what cached inference shows it.
    """
    block = _blocks(length, width, offset)
    same = block[None, :] == block[:, None]
    earlier = block[None, :] < block[:, None]
    noisy_rows = torch.cat([same, earlier], dim=1)
    clean_rows = torch.cat([torch.zeros_like(same), _group_causal(block)], dim=1)
    return torch.cat([noisy_rows, clean_rows])


def positions_for_two_copy(length: int) -> torch.Tensor:
    """LongTensor [2L]: the RoPE positions of the two-copy layout, arange(L) twice."""
    return torch.arange(length).repeat(2)
