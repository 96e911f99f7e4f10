"""A3's two-stream network: the shared backbone run as a content stream and a query stream.

Both streams use the backbone's weights (`Transformer`); the only new parameter is
`query_gap`, a zero-initialised embedding added to the query inputs, so a network loaded from an
AR checkpoint starts as exactly that AR model (design.md §2, "Starting exactly at the AR parent").

* Content rows carry a token at its position; their keys and values are the only ones anybody
  attends to (and the only ones a `KVCache` stores).
* Query rows predict token i (shifted read-out): they start from the embedding of token i - 1 when
  i - 1 is already known (MASK's embedding otherwise) plus `query_gap[gap]`, where gap is the
  number of unknown positions between the nearest known position left of i and i, and they are
  rotated at RoPE position i - 1. With groups of one token left to right a query then computes,
  layer by layer, what the causal content row i - 1 computes: the AR model.

Both streams go through each layer as one sequence [content ; queries] with one SDPA call whose
keys are the content rows only (mask [Nc + Nq, cached + Nc]); no Python loop over positions.
Each layer is the backbone's own `Block.forward` (with `kv_rows`), so FSDP's hooks gather its
weights, and grouped-query attention and the cache work as in the plain forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hdlm.config import ModelConfig
from hdlm.errors import HdlmError
from hdlm.model.transformer import KVCache, Transformer


class A3Transformer(Transformer):
    """The backbone plus `query_gap`; `two_stream(...)` is the A3 forward pass."""

    # parameters a parent checkpoint may lack: they start at their zero initialisation
    zero_init_prefixes = ("time_embed.", "query_gap.")

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.query_gap = nn.Embedding(config.max_len, config.d_model)
        nn.init.zeros_(self.query_gap.weight)

    def two_stream(
        self,
        content_tokens: Tensor,
        content_positions: Tensor,
        query_tokens: Tensor,
        query_positions: Tensor,
        query_gaps: Tensor,
        attn_mask: Tensor,
        cache: KVCache | None = None,
        commit: bool = False,
        return_hidden: bool = False,
    ) -> Tensor:
        """Logits [B, Nq, V] of the query rows.

        `content_*` are [B, Nc], `query_*` [B, Nq] (positions are RoPE positions; a query for
        target i sits at i - 1). `attn_mask` is bool [B, Nc + Nq, C + Nc] (True = may attend),
        over the C cached content rows first, then the new content rows, or any shape that
        broadcasts to it ([B, 1, C + Nc]: the same keys for every row); None: every row sees
        every key. With `commit=True` the new content rows are appended to `cache`.
        """
        offset = self.check_context(cache, content_tokens.shape[1])
        n_content = content_tokens.shape[1]
        if self.time_embed is not None:
            raise HdlmError("A3 models are not noise-level conditioned (model.time_conditioning)")
        positions = torch.cat((content_positions, query_positions), dim=1)
        cos, sin = self.rotation(positions)
        queries = self.embed_at(query_tokens, query_positions) + self.query_gap(query_gaps)
        x = torch.cat((self.embed_at(content_tokens, content_positions), queries), dim=1)
        x = self.drop(x)
        mask = attn_mask[:, None] if attn_mask is not None else None  # None: all visible
        mask = self.kernel_mask(mask, x.shape[1])
        for layer, block in enumerate(self.blocks):  # through each block's forward (FSDP hooks)
            x = block(x, cos, sin, mask, False, cache, layer, kv_rows=n_content)
        if cache is not None and commit:
            cache.length = offset + n_content
        x = self.norm(x[:, n_content:])
        return x if return_hidden else self.head(x)
