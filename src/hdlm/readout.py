"""Reading the network's output as clean-token distributions: MASK is never a clean token.

* `clean_log_probs`: log p_θ(x0 = v) over the vocabulary in float32, MASK at -inf;
* `MaskedCrossEntropy`: -log p_θ(x0 = target) per row, the fused, memory-light form of
  `clean_log_probs` followed by a gather (same values), for training.
"""

from __future__ import annotations

import torch
from torch import Tensor


def clean_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """log p_θ(x0 = v) over the vocabulary in float32, MASK excluded (it is never a clean token)."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")
    return logits.log_softmax(-1)


class MaskedCrossEntropy(torch.autograd.Function):
    """-log softmax(logits)[target] per row, MASK's logit at -inf, computed in float32 by chunks
    of rows: the gradient softmax - onehot is formed chunk by chunk in the logits' dtype, so no
    [N, V] float32 tensor is stored or swept more than once (the fused form of `clean_log_probs`
    followed by a gather; same values)."""

    CHUNK = 128  # rows per chunk: a [128, V] float32 block stays in cache for V up to ~8k

    @staticmethod
    def chunks(logits: Tensor, mask_id: int):
        for start in range(0, len(logits), MaskedCrossEntropy.CHUNK):
            rows = slice(start, start + MaskedCrossEntropy.CHUNK)
            block = logits[rows].to(torch.float32, copy=True)
            block[:, mask_id] = float("-inf")
            yield rows, block

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, mask_id: int) -> Tensor:
        flat, target = logits.flatten(0, -2), target.flatten()
        lse = torch.empty(target.shape, device=logits.device)
        nll = torch.empty_like(lse)
        for rows, block in MaskedCrossEntropy.chunks(flat, mask_id):
            lse[rows] = block.logsumexp(-1)
            nll[rows] = lse[rows] - block.gather(1, target[rows, None]).squeeze(1)
        ctx.save_for_backward(logits, target, lse)
        ctx.mask_id = mask_id
        return nll.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, target, lse = ctx.saved_tensors
        flat, grad = logits.flatten(0, -2), grad.flatten()
        out = torch.empty_like(flat)
        for rows, block in MaskedCrossEntropy.chunks(flat, ctx.mask_id):
            block.sub_(lse[rows, None]).exp_()
            block[torch.arange(len(block)), target[rows]] -= 1
            out[rows] = block.mul_(grad[rows, None])
        return out.view_as(logits), None, None
