"""Noise-level conditioning of the DDiT networks (SEDD, MDLM, BD3-LM, HDLM): adaptive LayerNorm.

With `model.adaln` set, the backbone is conditioned as in the released diffusion checkpoints
(docs/reproduce.md; design.md §5):

* `SigmaEmbedding`: c = SiLU(MLP(φ(σ))), φ(σ) = [cos(σ f_k) ; sin(σ f_k)], f_k = 10000^(-k/128),
  k < 128, MLP = Linear(256, C) -> SiLU -> Linear(C, C), with σ = σ(t) of the configured
  `SigmaSchedule` (`model.cond_sigma`) at each position's level t, or σ = 0 everywhere when the
  model is not time-conditioned (MDLM / BD3-LM releases: c is then a constant vector);
* `Modulation`: Linear(C, k D) split into k chunks; a block uses six, in the order (shift, scale,
  gate) for attention then for the MLP, and the final layer two (shift, scale);
* `modulate(h, shift, scale)` = h (1 + scale) + shift, applied after each LayerNorm;
* `mix_input`: HDLM-γ's noisy-input embedding w E[x_i] + (1 - w) E[MASK], w = e^{-γ σ_i}.

c is per position ([B, L, C]) when noise levels are per position, so every position has its own
shift/scale/gate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdlm.processes.gamma_hybrid import SigmaSchedule

SINUSOID_FEATURES = 256


def sinusoid(x: Tensor, n_features: int) -> Tensor:
    """[cos(x f_k) ; sin(x f_k)] for k < n/2, f_k = exp(-ln(10000) k / (n/2)): [..., n]."""
    half = n_features // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    angles = x.float()[..., None] * freqs
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: h (1 + scale) + shift."""
    return h * (1 + scale) + shift


class SigmaEmbedding(nn.Module):
    """c = SiLU(MLP(sinusoid(σ(t)))) [..., C] of noise levels t (None: σ = 0, a constant c)."""

    def __init__(self, cond_dim: int, sigma: str):
        super().__init__()
        self.schedule = SigmaSchedule.parse(sigma)
        self.mlp = nn.Sequential(
            nn.Linear(SINUSOID_FEATURES, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def sigma(self, t: Tensor) -> Tensor:
        """σ(t), computed in float64 (t near 1 is steep), returned in float32."""
        return self.schedule.sigma(t.double()).float()

    def forward(self, t: Tensor | None) -> Tensor:
        device = self.mlp[0].weight.device
        sigma = torch.zeros((), device=device) if t is None else self.sigma(t)
        features = sinusoid(sigma, SINUSOID_FEATURES).to(self.mlp[0].weight.dtype)
        return F.silu(self.mlp(features))


class Modulation(nn.Module):
    """Linear(C, chunks · D) of the conditioning, split into `chunks` tensors [..., D]; starts at
    zero (DiT's initialisation: gates closed, shift and scale 0)."""

    def __init__(self, cond_dim: int, d_model: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * d_model)
        self.zero()

    def zero(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, cond: Tensor) -> tuple[Tensor, ...]:
        return self.linear(cond).chunk(self.chunks, dim=-1)


def with_batch_axes(cond: Tensor, x: Tensor) -> Tensor:
    """c as [B, L, C] or broadcastable to it ([C] constant, [B, L, C] per position)."""
    return cond if cond.dim() == 3 else cond.view(*[1] * (x.dim() - 1), -1)


def mix_input(
    embed: nn.Embedding, tokens: Tensor, sigma: Tensor, gamma: float, mask_id: int
) -> Tensor:
    """HDLM-γ's input: w E[x_i] + (1 - w) E[MASK] with w = e^{-γ σ_i} per position."""
    w = torch.exp(-gamma * sigma)[..., None].to(embed.weight.dtype)
    return w * embed(tokens) + (1 - w) * embed.weight[mask_id]
