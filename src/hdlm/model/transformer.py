"""The one backbone every family shares: a pre-norm transformer with RoPE (or GPT-2's learned
absolute positions), SDPA and a KV cache.

Families differ only in what they feed it (noised tokens, per-position noise levels, an attention
mask) and how they read its output; the network itself is the same function everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdlm.config import ModelConfig
from hdlm.errors import HdlmError
from hdlm.model import conditioning


@dataclass
class KVCache:
    """Keys and values of committed positions, per layer, preallocated to the model's context.

    `keys[l]` and `values[l]` are [B, H, max_len, head_dim]; entries `[:length]` are valid. A
    forward pass with `commit=True` appends its positions; with `commit=False` it only reads, so a
    sampler can compute in-flight positions against the cache without changing it.
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device, dtype) -> KVCache:
        head_dim = config.d_model // config.n_heads
        shape = (batch, config.n_heads, config.max_len, head_dim)
        make = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return cls(
            [make() for _ in range(config.n_layers)], [make() for _ in range(config.n_layers)]
        )


def rope_tables(max_len: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotation tables for consecutive pairs, each [max_len, head_dim]: cos(a) repeated per pair
    and (-sin(a), sin(a)) per pair, with the angles a = pos * theta^(-2k/head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().float(), angles.sin().float()
    return cos.repeat_interleave(2, -1), torch.stack((-sin, sin), -1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
    """Rotate consecutive pairs (x1, x2) of x [B, H, L, D] by each position's angles:
    (x1 cos - x2 sin, x2 cos + x1 sin) = x * cos + swap_pairs(x) * sin with the tables of
    `rope_tables`, in x's dtype (no float32 round trip under autocast). No tables, no rotation:
    learned positions are in the embeddings."""
    if cos is None:
        return x
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


MATERIALISED_SCORES = 2**26  # B·H·Lq·Lk up to which bf16 attention on CPU uses plain matmuls


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask, causal: bool, dropout: float) -> Tensor:
    """softmax(q kᵀ / √d + mask) v over [B, H, L, D]; a bool mask (True = may attend) or an
    additive float mask, or `causal` (top-left aligned) when there is none.

    SDPA, except in bf16 on CPU for square attention (as many queries as keys: training, full
    recomputation) of up to `MATERIALISED_SCORES` scores without dropout: there
    two batched matmuls with an additive mask measured 1.5-1.7x faster than the CPU flash
    kernel (which computes masked blocks too) at L = 255 and 511, at the price of storing the
    probabilities for the backward pass.
    """
    batch, heads, length, _ = q.shape
    small = batch * heads * length * k.shape[2] <= MATERIALISED_SCORES
    # decoding against a KV cache (few queries, many keys) stays on SDPA: there the matmul path
    # gains nothing and its growing per-step buffers raised the sampler's peak memory 2-4x
    square = length == k.shape[2]
    matmuls = q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout == 0
    if not (matmuls and small and square):
        is_causal = causal and attn_mask is None
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout
        )
    if attn_mask is None and causal:
        attn_mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).tril()
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        blocked = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
        attn_mask = blocked.masked_fill_(~attn_mask, float("-inf"))
    if attn_mask is not None:
        scores = scores + attn_mask.to(q.dtype)
    return scores.softmax(-1) @ v


def norm_layer(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=1e-6)
    return nn.LayerNorm(config.d_model, bias=config.bias)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, attn_mask, causal, cache: KVCache | None, layer: int, commit):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            start, end = cache.length, cache.length + x.shape[1]
            if commit:
                cache.keys[layer][:, :, start:end] = k
                cache.values[layer][:, :, start:end] = v
                k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            else:
                k = torch.cat((cache.keys[layer][:, :, :start], k), dim=2)
                v = torch.cat((cache.values[layer][:, :, :start], v), dim=2)
        y = attention(q, k, v, attn_mask, causal, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(-2))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = int(config.mlp_ratio * config.d_model)
        self.norm1, self.norm2 = norm_layer(config), norm_layer(config)
        self.attn = Attention(config)
        mlp_bias = config.bias if config.mlp_bias is None else config.mlp_bias
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, hidden, bias=mlp_bias),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, config.d_model, bias=mlp_bias),
        )
        self.drop = nn.Dropout(config.dropout)
        if config.adaln != "none":  # DDiT: shift/scale/gate of both sublayers from c
            self.modulation = conditioning.Modulation(config.cond_dim, config.d_model, 6)

    def forward(self, x, cos, sin, attn_mask, causal, cache, layer, commit, cond=None):
        if cond is not None:
            return self.modulated(x, cos, sin, attn_mask, causal, cache, layer, commit, cond)
        x = x + self.drop(
            self.attn(self.norm1(x), cos, sin, attn_mask, causal, cache, layer, commit)
        )
        return x + self.drop(self.mlp(self.norm2(x)))

    def modulated(self, x, cos, sin, attn_mask, causal, cache, layer, commit, cond):
        """adaLN block: x += gate_a attn(modulate(norm1 x)); x += gate_m mlp(modulate(norm2 x))."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(cond)
        h = conditioning.modulate(self.norm1(x), shift_a, scale_a)
        x = x + gate_a * self.drop(self.attn(h, cos, sin, attn_mask, causal, cache, layer, commit))
        h = conditioning.modulate(self.norm2(x), shift_m, scale_m)
        return x + gate_m * self.drop(self.mlp(h))


class NoiseLevelEmbedding(nn.Module):
    """e(t) = MLP(sinusoidal features of 1000·t), added to each position's input embedding.

    The last layer starts at zero, so enabling conditioning does not change the initial function.
    """

    def __init__(self, d_model: int, n_features: int = 128):
        super().__init__()
        self.n_features = n_features
        self.mlp = nn.Sequential(
            nn.Linear(n_features, d_model), nn.SiLU(), nn.Linear(d_model, d_model)
        )

    def zero_output(self) -> None:
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(conditioning.sinusoid(1000.0 * t.float(), self.n_features))


class Transformer(nn.Module):
    """Pre-norm transformer language model.

    forward(tokens [B, L]) -> logits [B, L, V]. Options:
    * `attn_mask`: bool (True = may attend) or additive float mask, [Lq, Lk] or [B, 1, Lq, Lk],
      where Lk counts cached positions first. Every row must allow at least one key.
    * `causal`: used when no mask is given (True: causal, False: full attention).
    * `positions`: positions [L] or [B, L] (RoPE or learned); default continues after the cache.
    * `cache` / `commit`: read a `KVCache`, and with `commit=True` append these positions to it.
    * `noise_level`: per-position t [B, L] when `config.time_conditioning` is on.
    """

    # parameters a parent checkpoint may lack: they start at their zero initialisation
    zero_init_prefixes: tuple[str, ...] = ("time_embed.",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise HdlmError("model.vocab_size is unset; build the tokenizer first")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        learned = config.position == "learned"
        self.pos_embed = nn.Embedding(config.max_len, config.d_model) if learned else None
        additive = config.time_conditioning and config.adaln == "none"
        self.time_embed = NoiseLevelEmbedding(config.d_model) if additive else None
        self.cond_embed = self.final_modulation = None
        if config.adaln != "none":
            self.cond_embed = conditioning.SigmaEmbedding(config.cond_dim, config.cond_sigma)
        if config.adaln == "blocks+final":
            self.final_modulation = conditioning.Modulation(config.cond_dim, config.d_model, 2)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = norm_layer(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=config.head_bias)
        if config.tie_weights:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(config.max_len, config.d_model // config.n_heads, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.out.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))
        if self.time_embed is not None:
            self.time_embed.zero_output()
        for module in self.modules():  # DiT: adaLN starts at zero (after the generic init)
            if isinstance(module, conditioning.Modulation):
                module.zero()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed.weight.numel()

    def check_context(self, cache: KVCache | None, length: int) -> int:
        """The cache length, after checking that `length` more positions fit the context."""
        offset = cache.length if cache is not None else 0
        if offset + length > self.config.max_len:
            raise HdlmError(
                f"sequence of {offset + length} tokens is longer than the model's context "
                f"({self.config.max_len}); shorten the input or train with a larger model.max_len"
            )
        return offset

    def rotation(self, positions: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """RoPE cos/sin of `positions` ([L] or [B, L], broadcast over heads); None when learned."""
        if self.pos_embed is not None:
            return None, None
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if cos.dim() == 3:  # per-sequence positions [B, L, D] -> broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def embed_at(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Token embeddings, plus the learned embeddings of `positions` when there are some."""
        x = self.embed(tokens)
        return x if self.pos_embed is None else x + self.pos_embed(positions)

    def forward(
        self,
        tokens: Tensor,
        *,
        attn_mask: Tensor | None = None,
        causal: bool = True,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        commit: bool = False,
        noise_level: Tensor | None = None,
        return_hidden: bool = False,
    ) -> Tensor:
        offset = self.check_context(cache, tokens.shape[1])
        length = tokens.shape[1]
        if positions is None:
            positions = torch.arange(offset, offset + length, device=tokens.device)
        if offset > 0 and attn_mask is None and causal:
            # SDPA's is_causal aligns top-left; after a cache, row i sees the cache + new j <= i
            if length > 1:
                attn_mask = torch.ones(
                    length, offset + length, dtype=torch.bool, device=tokens.device
                ).tril(offset)
            causal = False
        cos, sin = self.rotation(positions)
        if self.config.time_conditioning and noise_level is None:
            raise HdlmError("this model is noise-level conditioned: pass noise_level [B, L]")
        if not self.config.time_conditioning:
            noise_level = None
        if self.config.input_mix_gamma > 0:  # HDLM-γ's noisy-input embedding
            x = self.mixed_input(tokens, positions, noise_level)
        else:
            x = self.embed_at(tokens, positions)
        if self.time_embed is not None:
            x = x + self.time_embed(noise_level).to(x.dtype)
        cond = None
        if self.cond_embed is not None:
            cond = conditioning.with_batch_axes(self.cond_embed(noise_level), x)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, causal, cache, layer, commit, cond)
        if cache is not None and commit:
            cache.length = offset + length
        x = self.norm(x)
        if self.final_modulation is not None:
            x = conditioning.modulate(x, *self.final_modulation(cond))
        return x if return_hidden else self.head(x)

    def mixed_input(self, tokens: Tensor, positions: Tensor, noise_level: Tensor | None) -> Tensor:
        """`embed_at` with the token embeddings replaced by `conditioning.mix_input` at σ(t) per
        position (σ = 0 without noise levels: the plain embedding); MASK is the last id."""
        if noise_level is None:
            return self.embed_at(tokens, positions)
        sigma = self.cond_embed.sigma(noise_level)
        gamma, mask_id = self.config.input_mix_gamma, self.config.vocab_size - 1
        x = conditioning.mix_input(self.embed, tokens, sigma, gamma, mask_id)
        return x if self.pos_embed is None else x + self.pos_embed(positions)
