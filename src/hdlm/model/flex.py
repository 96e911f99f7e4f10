"""FlexAttention with block masks made from the dense boolean masks that SDPA takes.

Each attention mask has one definition: the function (in `hdlm.masks`, the objectives or a
sampler) that builds its boolean tensor, True where a query may attend to a key. `block_mask`
turns that tensor into a FlexAttention `BlockMask` whose `mask_mod` reads it. The kernel then skips
every tile of `BLOCK_SIZE` queries x `BLOCK_SIZE` keys in which no pair is visible, applies no mask
on tiles in which every pair is visible, and reads the mask only on the partial tiles. The dense
tensor costs Lq·Lk bytes, next to the Lq·Lk·heads scores that the kernel no longer computes.

Without `torch.compile`, `flex_attention` materialises every score (a reference
implementation, equal to the compiled kernel); `attend` compiles it on CUDA, where the skipped
tiles are the point.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

BLOCK_SIZE = 128  # queries and keys per tile (FlexAttention's default)


def use_flex(
    choice: str, device: torch.device, dropout: float = 0.0, q_len: int = BLOCK_SIZE
) -> bool:
    """Whether `model.attention` = `choice` runs a masked pass of `q_len` queries through
    FlexAttention on `device`: never with dropout (FlexAttention has none); flex always; auto on
    CUDA for passes of at least one tile of queries (training, evaluation, full recomputation),
    not for the few queries of a cached decoding step, whose shape changes every step (a
    recompilation each) and whose single query tile leaves little to skip."""
    if dropout > 0:
        return False
    return choice == "flex" or (choice == "auto" and device.type == "cuda" and q_len >= BLOCK_SIZE)


def block_mask(mask: Tensor, q_len: int) -> BlockMask:
    """The `BlockMask` of a boolean mask [Lq, Lk], [B, 1, Lq, Lk] or one that broadcasts to it
    over queries ([B, 1, 1, Lk]: the same keys for every query), with Lq = `q_len`."""
    dense = mask.expand(*mask.shape[:-2], q_len, mask.shape[-1])
    dense = dense.reshape(-1, q_len, mask.shape[-1])  # [B or 1, Lq, Lk]
    if dense.shape[0] == 1:

        def visible(b, h, q, k):
            return dense[0, q, k]
    else:

        def visible(b, h, q, k):
            return dense[b, q, k]

    batch = dense.shape[0] if dense.shape[0] > 1 else None
    return create_block_mask(visible, batch, None, q_len, dense.shape[-1], device=dense.device)


@functools.cache
def compiled_flex_attention():
    """`flex_attention` compiled once per process (the fused kernel)."""
    return torch.compile(flex_attention)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: BlockMask, compiled: bool | None = None):
    """softmax(q kᵀ / √d, restricted to `mask`) v over [B, H, L, D] (k, v may have fewer heads:
    grouped-query attention). `compiled` (default: on CUDA) runs the fused kernel."""
    grouped = k.shape[1] != q.shape[1]
    if compiled if compiled is not None else q.is_cuda:
        return compiled_flex_attention()(q, k, v, block_mask=mask, enable_gqa=grouped)
    with warnings.catch_warnings():  # the uncompiled reference path is what we ask for here
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=grouped)


def skipped_fraction(mask: BlockMask) -> float:
    """The fraction of (query tile, key tile) pairs that the kernel skips: tiles in which no
    query may attend to any key."""
    q_len, kv_len = mask.seq_lengths
    q_tile, kv_tile = mask.BLOCK_SIZE
    batch, heads = mask.kv_num_blocks.shape[:2]
    tiles = batch * heads * math.ceil(q_len / q_tile) * math.ceil(kv_len / kv_tile)
    computed = mask.kv_num_blocks.sum().item()
    if mask.full_kv_num_blocks is not None:
        computed += mask.full_kv_num_blocks.sum().item()
    return 1 - computed / tiles
