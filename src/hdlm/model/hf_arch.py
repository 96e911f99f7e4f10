"""The Hugging Face architectures hdlm's backbone computes exactly, and how their weights map.

* `gpt2`: learned positions, LayerNorm, GELU(tanh) MLP, one fused Conv1D qkv ([in, out]).
* `llama`, `mistral`, `qwen2`, `qwen3`: RoPE (with Llama-3's frequency scaling), RMSNorm, SwiGLU,
  grouped-query attention; Qwen2 has biases on q, k, v only, Qwen3 an RMSNorm per head on q and k
  before RoPE. Mistral is Llama with a sliding window, which changes nothing within the window:
  its import keeps the context to the window.

A weight of ours is filled from one or more of theirs (`Piece`): the fused qkv from q_proj,
k_proj, v_proj, the fused SwiGLU in-projection from [gate_proj ; up_proj].

RoPE convention. Hugging Face rotates the two halves of a head (`rotate_half`: dimension k pairs
with k + D/2, at frequency theta^(-2k/D)); hdlm rotates consecutive pairs (2k, 2k + 1) at the same
frequency. Putting their dimension k at 2k and k + D/2 at 2k + 1 (`half_to_pairs`, applied to the
rows of q_proj and k_proj, their biases and the q/k norm weights) turns one rotation into the
other, and q·k, a sum over dimensions, is unchanged when q and k are permuted alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.config import ModelConfig, RopeScaling
from hdlm.errors import CheckpointError
from hdlm.model.transformer import head_dim, kv_heads

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED = ("gpt2", *LLAMA_FAMILY)
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
           "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM"}  # fmt: skip


@dataclass(frozen=True)
class Piece:
    """One of their tensors filling rows [start, end) of one of ours (all rows when None).

    `transpose`: theirs is stored [in, out] (GPT-2's Conv1D). `rope_heads`: theirs holds that
    many heads in the half-split RoPE layout (reordered by `half_to_pairs`). `leading`: the rows
    are token ids or positions; theirs may have more (only the first are read) or fewer.
    """

    theirs: str
    rows: tuple[int, int] | None = None
    transpose: bool = False
    rope_heads: int = 0
    leading: bool = False


def half_to_pairs(heads: int, size: int) -> Tensor:
    """Row order ours <- theirs for `heads` heads of `size` dimensions: our row h·D + 2k is their
    row h·D + k, our row h·D + 2k + 1 their row h·D + D/2 + k."""
    half = torch.arange(size // 2)
    within = torch.stack((half, half + size // 2), dim=-1).flatten()
    return (torch.arange(heads)[:, None] * size + within).flatten()


# ----------------------------------------------------------------------------- configurations


def _require(hf: dict, keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in hf]
    if missing:
        raise CheckpointError(f"{where}/config.json lacks {', '.join(missing)}; it is incomplete")


def rope_settings(hf: dict, where: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from config.json: transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling`; only Llama-3 scaling (or none) computes what hdlm computes."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = params if params.get("rope_type") not in (None, "default") else hf.get("rope_scaling")
    factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor={factor} is not supported (only 1)")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise CheckpointError(
            f"{where}: RoPE scaling '{kind}' is not supported (only llama3 and none)"
        )
    fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return float(theta), RopeScaling(**{k: scaling[k] for k in fields})


def context_length(hf: dict) -> int:
    """max_position_embeddings, or the sliding window when attention slides (exact within it)."""
    length = hf.get("max_position_embeddings", 2048)
    layer_types = hf.get("layer_types") or []
    slides = (hf["model_type"] == "mistral" or hf.get("use_sliding_window", False)
              or "sliding_attention" in layer_types)  # fmt: skip
    window = hf.get("sliding_window")
    return min(length, window) if slides and window else length


def llama_model_config(hf: dict, where: str) -> ModelConfig:
    """Our backbone for a llama / mistral / qwen2 / qwen3 config.json (vocab_size: theirs)."""
    keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size"]  # fmt: skip
    _require(hf, keys, where)
    kind = hf["model_type"]
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise CheckpointError(f"{where}: activation {hf['hidden_act']} is not supported (silu)")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    size = hf.get("head_dim") or d // heads
    bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    qkv_bias = None
    if kind == "qwen2":  # biases on q, k, v only
        bias, qkv_bias, mlp_bias = False, True, False
    theta, scaling = rope_settings(hf, where)
    eps = hf.get("rms_norm_eps", 1e-6)
    return ModelConfig(
        vocab_size=hf["vocab_size"], max_len=context_length(hf), n_layers=hf["num_hidden_layers"],
        n_heads=heads, d_model=d, d_ff=hf["intermediate_size"], mlp="swiglu", norm="rmsnorm",
        position="rope", rope_theta=theta, rope_scaling=scaling,
        tie_weights=bool(hf.get("tie_word_embeddings", False)), bias=bias, qkv_bias=qkv_bias,
        mlp_bias=mlp_bias if mlp_bias != bias else None,
        n_kv_heads=kv if kv != heads else 0,
        head_dim=size if d % heads or size != d // heads else 0,
        norm_eps=eps if eps != 1e-6 else None, qk_norm=kind == "qwen3",
    )  # fmt: skip


def gpt2_model_config(hf: dict, where: str) -> ModelConfig:
    """Our backbone for a GPT-2 config.json (vocab_size: theirs)."""
    _require(hf, ["vocab_size", "n_embd", "n_layer", "n_head", "n_positions"], where)
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{where}: activation {hf['activation_function']} is not GPT-2's")
    d = hf["n_embd"]
    eps = hf.get("layer_norm_epsilon", 1e-5)
    return ModelConfig(
        vocab_size=hf["vocab_size"], max_len=hf["n_positions"], n_layers=hf["n_layer"],
        n_heads=hf["n_head"], d_model=d, mlp_ratio=(hf.get("n_inner") or 4 * d) / d,
        norm="layernorm", position="learned", bias=True, norm_eps=eps if eps != 1e-5 else None,
        tie_weights=hf.get("tie_word_embeddings", True),
    )  # fmt: skip


def model_config(hf: dict, where: str) -> ModelConfig:
    """Our backbone for a supported config.json; an unsupported model_type is a clear error."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise CheckpointError(
            f"{where} holds a '{kind}' model; hdlm imports model_type {', '.join(SUPPORTED)}"
        )
    return gpt2_model_config(hf, where) if kind == "gpt2" else llama_model_config(hf, where)


def _biases(m: ModelConfig) -> tuple[bool, bool, bool]:
    """(q/k/v, output projection, MLP) biases of a backbone."""
    qkv = m.bias if m.qkv_bias is None else m.qkv_bias
    return qkv, m.bias, m.bias if m.mlp_bias is None else m.mlp_bias


def export_kind(m: ModelConfig) -> str | None:
    """The architecture an (ar, unconditioned) backbone is exactly, or None: gpt2; qwen3 (q/k
    norm; q, k, v and output biases alike, none in the MLP); qwen2 (biases on q, k, v only);
    llama (q, k, v and output biases alike, MLP biases either way)."""
    qkv, out, mlp = _biases(m)
    if m.adaln != "none" or m.head_bias or m.input_mix_gamma:
        return None
    default_heads = not m.n_kv_heads or m.n_kv_heads == m.n_heads
    if m.position == "learned":
        full_width = head_dim(m) * m.n_heads == m.d_model
        gpt2 = (m.norm == "layernorm" and qkv and out and mlp and m.mlp == "gelu"
                and not m.qk_norm and default_heads and full_width)  # fmt: skip
        return "gpt2" if gpt2 else None
    if m.norm != "rmsnorm" or m.mlp != "swiglu":
        return None
    if m.qk_norm:
        return "qwen3" if qkv == out and not mlp else None
    if qkv and not (out or mlp):
        return "qwen2"
    return "llama" if qkv == out else None


def hf_config(kind: str, m: ModelConfig, bos_id: int, eos_id: int, dtype: str) -> dict:
    """config.json of architecture `kind` for our backbone `m` (`export_kind(m) == kind`)."""
    common = {"model_type": kind, "architectures": [CLASSES[kind]], "vocab_size": m.vocab_size,
              "tie_word_embeddings": m.tie_weights, "bos_token_id": bos_id,
              "eos_token_id": eos_id, "torch_dtype": dtype}  # fmt: skip
    hidden = m.d_ff or int(m.mlp_ratio * m.d_model)
    if kind == "gpt2":
        return {**common, "n_positions": m.max_len, "n_embd": m.d_model, "n_layer": m.n_layers,
                "n_head": m.n_heads, "n_inner": hidden, "activation_function": "gelu_new",
                "layer_norm_epsilon": m.norm_eps or 1e-5, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip
    config = {**common, "hidden_size": m.d_model, "intermediate_size": hidden,
              "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
              "num_key_value_heads": kv_heads(m), "head_dim": head_dim(m), "hidden_act": "silu",
              "max_position_embeddings": m.max_len, "rms_norm_eps": m.norm_eps or 1e-6,
              "rope_theta": m.rope_theta, "attention_dropout": 0.0}  # fmt: skip
    if m.rope_scaling is not None:
        config["rope_scaling"] = {"rope_type": "llama3", **vars(m.rope_scaling)}
    if kind in ("llama", "qwen3"):
        _, out, mlp = _biases(m)
        config.update(attention_bias=out, mlp_bias=mlp)
    return config


# ----------------------------------------------------------------------------- weight maps


def gpt2_pieces(m: ModelConfig) -> dict[str, list[Piece]]:
    """Our GPT-2-shaped weights from GPT2LMHeadModel's (Conv1D weights transposed)."""
    pieces = {"embed.weight": [Piece("transformer.wte.weight", leading=True)],
              "pos_embed.weight": [Piece("transformer.wpe.weight", leading=True)],
              "norm.weight": [Piece("transformer.ln_f.weight")],
              "norm.bias": [Piece("transformer.ln_f.bias")]}  # fmt: skip
    layer = [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
             ("attn.out", "attn.c_proj", True), ("norm2", "ln_2", False),
             ("mlp.0", "mlp.c_fc", True), ("mlp.2", "mlp.c_proj", True)]  # fmt: skip
    for i in range(m.n_layers):
        for ours, theirs, transposed in layer:
            for kind in ("weight", "bias"):
                piece = Piece(
                    f"transformer.h.{i}.{theirs}.{kind}", transpose=transposed and kind == "weight"
                )
                pieces[f"blocks.{i}.{ours}.{kind}"] = [piece]
    if not m.tie_weights:
        pieces["head.weight"] = [Piece("lm_head.weight", leading=True)]
    return pieces


def _split(prefix: str, names: list[str], sizes: list[int], kind: str, heads: list[int]):
    """Pieces filling consecutive row ranges of one fused weight from `names` in order."""
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [Piece(f"{prefix}{name}.{kind}", (starts[i], starts[i + 1]), rope_heads=heads[i])
            for i, name in enumerate(names)]  # fmt: skip


def llama_pieces(m: ModelConfig) -> dict[str, list[Piece]]:
    """Our weights from a Llama-family checkpoint (LlamaForCausalLM's names, shared by Mistral,
    Qwen2 and Qwen3)."""
    q, kv = m.n_heads * head_dim(m), kv_heads(m) * head_dim(m)
    hidden = m.d_ff or int(m.mlp_ratio * m.d_model)
    qkv_bias, out_bias, mlp_bias = _biases(m)
    pieces = {"embed.weight": [Piece("model.embed_tokens.weight", leading=True)],
              "norm.weight": [Piece("model.norm.weight")]}  # fmt: skip
    if not m.tie_weights:
        pieces["head.weight"] = [Piece("lm_head.weight", leading=True)]
    for i in range(m.n_layers):
        theirs, ours = f"model.layers.{i}.", f"blocks.{i}."
        pieces[ours + "norm1.weight"] = [Piece(theirs + "input_layernorm.weight")]
        pieces[ours + "norm2.weight"] = [Piece(theirs + "post_attention_layernorm.weight")]
        attn, heads = theirs + "self_attn.", [m.n_heads, kv_heads(m), 0]
        for kind in ("weight", "bias") if qkv_bias else ("weight",):
            projections = ["q_proj", "k_proj", "v_proj"]
            pieces[ours + f"attn.qkv.{kind}"] = _split(attn, projections, [q, kv, kv], kind, heads)
        for kind in ("weight", "bias") if out_bias else ("weight",):
            pieces[ours + f"attn.out.{kind}"] = [Piece(f"{attn}o_proj.{kind}")]
        for kind in ("weight", "bias") if mlp_bias else ("weight",):
            gate_up = _split(theirs + "mlp.", ["gate_proj", "up_proj"], [hidden] * 2, kind, [0, 0])
            pieces[ours + f"mlp.0.{kind}"] = gate_up
            pieces[ours + f"mlp.2.{kind}"] = [Piece(f"{theirs}mlp.down_proj.{kind}")]
        if m.qk_norm:
            for name in ("q_norm", "k_norm"):
                pieces[ours + f"attn.{name}.weight"] = [Piece(f"{attn}{name}.weight", rope_heads=1)]
    return pieces


def weight_pieces(kind: str, m: ModelConfig) -> dict[str, list[Piece]]:
    return gpt2_pieces(m) if kind == "gpt2" else llama_pieces(m)
