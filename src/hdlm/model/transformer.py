"""The one backbone every family shares: a pre-norm transformer with RoPE (or GPT-2's learned
absolute positions), SDPA and a KV cache.

Families differ only in what they feed it (noised tokens, per-position noise levels, an attention
mask) and how they read its output; the network itself is the same function everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from hdlm.config import ModelConfig, RopeScaling
from hdlm.errors import HdlmError
from hdlm.model import conditioning, flex


def head_dim(config: ModelConfig) -> int:
    """The size of one attention head: `model.head_dim`, else d_model / n_heads."""
    return config.head_dim or config.d_model // config.n_heads


def kv_heads(config: ModelConfig) -> int:
    """Key/value heads: `model.n_kv_heads` (grouped-query attention), else one per query head."""
    return config.n_kv_heads or config.n_heads


@dataclass
class KVCache:
    """Keys and values of committed positions, per layer, grown on demand up to the context.

    `keys[l]` and `values[l]` are [B, n_kv_heads, capacity, head_dim]; entries `[:length]` are
    valid. Every forward pass writes its positions after `length` (`store`); only a pass with
    `commit=True` moves `length` past them, so with `commit=False` the next pass overwrites them
    and a sampler can compute in-flight positions against the cache without changing it.
    """

    keys: list[Tensor]
    values: list[Tensor]
    max_len: int
    length: int = 0

    INITIAL = 256  # positions allocated at first; doubled as needed up to max_len

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device, dtype) -> KVCache:
        shape = (batch, kv_heads(config), min(config.max_len, cls.INITIAL), head_dim(config))
        make = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        layers = range(config.n_layers)
        return cls([make() for _ in layers], [make() for _ in layers], config.max_len)

    def store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, n_kv_heads, n, head_dim] at positions length..length + n of `layer`
        and return that layer's keys and values up to there (the caller checked the context)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            self._grow(layer, min(max(end, 2 * self.keys[layer].shape[2]), self.max_len))
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _grow(self, layer: int, capacity: int) -> None:
        for buffers in (self.keys, self.values):
            old = buffers[layer]
            buffers[layer] = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
            buffers[layer][:, :, : old.shape[2]] = old


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> Tensor:
    """Angular frequencies theta^(-2k/head_dim), k < head_dim / 2 (float64), with Llama-3's
    scaling: wavelength λ = 2π/f; λ > N/low: f/factor; λ < N/high: f; in between the blend
    (1 - a) f/factor + a f with a = (N/λ - low) / (high - low), N the original context."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq
    context, low, high = (scaling.original_max_position_embeddings, scaling.low_freq_factor,
                          scaling.high_freq_factor)  # fmt: skip
    wavelength = 2 * math.pi / inv_freq
    blend = ((context / wavelength - low) / (high - low)).clamp(0, 1)
    return (1 - blend) * inv_freq / scaling.factor + blend * inv_freq


def rope_tables(
    max_len: int, head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[Tensor, Tensor]:
    """Rotation tables for consecutive pairs, each [max_len, head_dim]: cos(a) repeated per pair
    and (-sin(a), sin(a)) per pair, with the angles a = pos * `rope_frequencies`."""
    inv_freq = rope_frequencies(head_dim, theta, scaling)
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


def expand_heads(x: Tensor, heads: int) -> Tensor:
    """[B, H_kv, L, D] -> [B, heads, L, D], each key/value head repeated for its query heads."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


MATERIALISED_SCORES = 2**26  # B·H·Lq·Lk up to which bf16 attention on CPU uses plain matmuls


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask, causal: bool, dropout: float) -> Tensor:
    """softmax(q kᵀ / √d + mask) v over [B, H, L, D]; a bool mask (True = may attend), an
    additive float mask or a FlexAttention `BlockMask` (`flex.attend`), or `causal` (top-left
    aligned) when there is none.

    SDPA, except in bf16 on CPU for square attention (as many queries as keys: training, full
    recomputation) of up to `MATERIALISED_SCORES` scores without dropout: there
    two batched matmuls with an additive mask measured 1.5-1.7x faster than the CPU flash
    kernel (which computes masked blocks too) at L = 255 and 511, at the price of storing the
    probabilities for the backward pass.
    """
    if isinstance(attn_mask, BlockMask):
        return flex.attend(q, k, v, attn_mask)
    batch, heads, length, _ = q.shape
    grouped = k.shape[1] != heads  # grouped-query attention: query head h reads k/v head h // g
    small = batch * heads * length * k.shape[2] <= MATERIALISED_SCORES
    # decoding against a KV cache (few queries, many keys) stays on SDPA: there the matmul path
    # gains nothing and its growing per-step buffers raised the sampler's peak memory 2-4x
    square = length == k.shape[2]
    matmuls = q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout == 0
    if not (matmuls and small and square):
        is_causal = causal and attn_mask is None
        if grouped and q.device.type != "cpu" and attn_mask is not None:
            # on GPUs only the flash kernel (no masks) and the math one (every score stored)
            # take grouped heads: with a mask, expanded heads keep the memory-efficient kernel
            k, v = expand_heads(k, heads), expand_heads(v, heads)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout,
            enable_gqa=k.shape[1] != heads,
        )  # fmt: skip
    k, v = expand_heads(k, heads), expand_heads(v, heads)
    if attn_mask is None and causal:
        attn_mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).tril()
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        blocked = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
        attn_mask = blocked.masked_fill_(~attn_mask, float("-inf"))
    if attn_mask is not None:
        scores = scores + attn_mask.to(q.dtype)
    return scores.softmax(-1) @ v


def norm_layer(config: ModelConfig, size: int | None = None) -> nn.Module:
    """RMSNorm or LayerNorm over `size` features (default d_model), eps `model.norm_eps`."""
    size = size or config.d_model
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=config.norm_eps or 1e-6)
    return nn.LayerNorm(size, eps=config.norm_eps or 1e-5, bias=config.bias)


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads (n_kv_heads <= n_heads), optional
    per-head RMSNorm of queries and keys (Qwen3) and RoPE. `qkv` projects to
    [q (n_heads heads) ; k (n_kv_heads) ; v (n_kv_heads)]; RoPE rotates consecutive pairs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads,
            kv_heads(config),
            head_dim(config),
        )
        self.q_width = self.n_heads * self.head_dim
        width = self.q_width + 2 * self.n_kv_heads * self.head_dim
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        self.qkv = nn.Linear(config.d_model, width, bias=qkv_bias)
        self.out = nn.Linear(self.q_width, config.d_model, bias=config.bias)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            rms = dataclasses.replace(config, norm="rmsnorm")
            self.q_norm, self.k_norm = (
                norm_layer(rms, self.head_dim),
                norm_layer(rms, self.head_dim),
            )
        self.dropout = config.dropout

    def heads(self, y: Tensor, n: int) -> Tensor:
        """[B, L, n * head_dim] -> [B, n, L, head_dim]."""
        return y.unflatten(-1, (n, self.head_dim)).transpose(1, 2)

    def project(self, x: Tensor, kv_rows: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries of every row of x, keys and values of its first `kv_rows` rows (all when None);
        rows after them need no keys or values, so only their query projection is computed."""
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x[:, :kv_rows]).split((self.q_width, kv_width, kv_width), dim=-1)
        if kv_rows is not None and kv_rows < x.shape[1]:
            bias = self.qkv.bias[: self.q_width] if self.qkv.bias is not None else None
            rows = x[:, kv_rows:]
            # as one 2-D matmul: a 3-D input with the sliced weight goes through bmm, 2x slower
            queries_only = F.linear(
                rows.reshape(-1, rows.shape[-1]), self.qkv.weight[: self.q_width], bias
            )
            q = torch.cat((q, queries_only.view(*rows.shape[:2], -1)), dim=1)
        q, k, v = (
            self.heads(q, self.n_heads),
            self.heads(k, self.n_kv_heads),
            self.heads(v, self.n_kv_heads),
        )
        if self.q_norm is not None:  # in float32, as the weights (bf16 inputs under autocast)
            q, k = self.q_norm(q.float()).to(q.dtype), self.k_norm(k.float()).to(k.dtype)
        return q, k, v

    def forward(
        self, x, cos, sin, attn_mask, causal, cache: KVCache | None, layer: int, kv_rows=None
    ):
        """Attention output of every row of x [B, L, d_model]; keys and values come from its first
        `kv_rows` rows (A3's content stream; all rows when None), after the cache's, and are
        written to the cache (`KVCache.store`)."""
        q, k, v = self.project(x, kv_rows)
        q = apply_rope(q, cos, sin)
        if cos is not None:
            cos, sin = cos[..., : k.shape[2], :], sin[..., : k.shape[2], :]
        k = apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.store(layer, k, v)
        y = attention(q, k, v, attn_mask, causal, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(-2))


class SwiGLU(nn.Module):
    """silu(a) * b for the halves [a ; b] of the input: the gate and up projections (Llama)."""

    def forward(self, x: Tensor) -> Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def mlp_layer(config: ModelConfig) -> nn.Sequential:
    """[in-projection, activation, out-projection] with d_ff (or mlp_ratio * d_model) hidden
    units: GELU(tanh) (GPT-2), or SwiGLU with one fused [gate ; up] in-projection."""
    hidden = config.d_ff or int(config.mlp_ratio * config.d_model)
    bias = config.bias if config.mlp_bias is None else config.mlp_bias
    if config.mlp == "swiglu":
        inner, activation = 2 * hidden, SwiGLU()
    else:
        inner, activation = hidden, nn.GELU(approximate="tanh")
    return nn.Sequential(
        nn.Linear(config.d_model, inner, bias=bias),
        activation,
        nn.Linear(hidden, config.d_model, bias=bias),
    )


class Block(nn.Module):
    """One pre-norm residual block: attention, then the MLP (adaLN-modulated under `cond`)."""

    checkpointed = False  # recompute activations in backward (`Transformer.set_checkpointing`)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1, self.norm2 = norm_layer(config), norm_layer(config)
        self.attn = Attention(config)
        self.mlp = mlp_layer(config)
        self.drop = nn.Dropout(config.dropout)
        if config.adaln != "none":  # DDiT: shift/scale/gate of both sublayers from c
            self.modulation = conditioning.Modulation(config.cond_dim, config.d_model, 6)

    def forward(self, *args, **kwargs) -> Tensor:
        """`compute(...)`; when `checkpointed`, in training, only the block's inputs are kept for
        the backward pass, which recomputes its activations (same values: dropout's random state
        is replayed). Module hooks (FSDP2's gathers) stay outside the recomputed part."""
        if self.checkpointed and self.training and torch.is_grad_enabled():
            return checkpoint(self.compute, *args, use_reentrant=False, **kwargs)
        return self.compute(*args, **kwargs)

    def compute(self, x, cos, sin, attn_mask, causal, cache, layer, kv_rows=None, cond=None):
        """Pre-norm residual block (adaLN-modulated with `cond`); `kv_rows` as in
        `Attention.forward`."""
        if cond is not None:
            return self.modulated(x, cos, sin, attn_mask, causal, cache, layer, kv_rows, cond)
        y = self.attn(self.norm1(x), cos, sin, attn_mask, causal, cache, layer, kv_rows)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x)))

    def modulated(self, x, cos, sin, attn_mask, causal, cache, layer, kv_rows, cond):
        """adaLN block: x += gate_a attn(modulate(norm1 x)); x += gate_m mlp(modulate(norm2 x))."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(cond)
        h = conditioning.modulate(self.norm1(x), shift_a, scale_a)
        y = self.attn(h, cos, sin, attn_mask, causal, cache, layer, kv_rows)
        x = x + gate_a * self.drop(y)
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
        features = conditioning.sinusoid(1000.0 * t.float(), self.n_features)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # float32 or the cast weights


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
        cos, sin = rope_tables(
            config.max_len, head_dim(config), config.rope_theta, config.rope_scaling
        )
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

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of every block (`train.activation_checkpointing`)."""
        for block in self.blocks:
            block.checkpointed = on

    def kernel_mask(self, mask: Tensor | None, q_len: int) -> Tensor | BlockMask | None:
        """`mask` as the attention kernel takes it: a FlexAttention `BlockMask` of a boolean mask
        when `model.attention` picks flex on this device (`flex.use_flex`), else unchanged."""
        dropout = self.config.dropout if self.training else 0.0
        device = self.embed.weight.device
        if mask is None or mask.dtype != torch.bool:
            return mask
        if not flex.use_flex(self.config.attention, device, dropout, q_len):
            return mask
        if device.type == "cpu" and torch.is_grad_enabled():
            raise HdlmError(
                "model.attention=flex has no backward pass on CPU (torch's FlexAttention); "
                "train on CPU with model.attention=auto or sdpa"
            )
        return flex.block_mask(mask, q_len)

    def new_cache(self, batch: int, device) -> KVCache:
        """An empty KV cache for `batch` sequences, in the network's dtype."""
        return KVCache.empty(self.config, batch, device, self.embed.weight.dtype)

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
        attn_mask = self.kernel_mask(attn_mask, length)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, causal, cache, layer, cond=cond)
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
