"""Hugging Face interop: GPT-2 directories in (as an AR starting point) and out.

A GPT-2 directory is what `GPT2LMHeadModel.save_pretrained` + a fast tokenizer write:
config.json, model.safetensors (or pytorch_model.bin, read with `weights_only=True`) and
tokenizer.json. Our backbone with `position: learned`, `norm: layernorm`, `bias: true` computes
exactly GPT-2's function; the one difference is the vocabulary, which gets our MASK token
appended (id = GPT-2's vocab_size) with its embedding row set to the mean of the others.

Export writes the same layout. An `ar` model of GPT-2's shape becomes a `GPT2LMHeadModel`
(MASK kept as the last id); anything else (RoPE, RMSNorm, diffusion and A3 families) is not a
stock transformers architecture and is written as an hdlm checkpoint whose config.json says
`"model_type": "hdlm"`, which `hdlm.load` reads back bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from hdlm.config import ModelConfig, RunConfig, complete
from hdlm.errors import CheckpointError
from hdlm.model.checkpoint import read_checkpoint, save_checkpoint
from hdlm.tokenizer import EOS, MASK, Tokenizer


def gpt2_names(n_layers: int) -> list[tuple[str, str, bool]]:
    """(hdlm name, GPT2LMHeadModel name, transposed?) of every weight; GPT-2's Conv1D stores
    [in, out], nn.Linear [out, in]."""
    names = [("embed.weight", "transformer.wte.weight", False),
             ("pos_embed.weight", "transformer.wpe.weight", False),
             ("norm.weight", "transformer.ln_f.weight", False),
             ("norm.bias", "transformer.ln_f.bias", False)]  # fmt: skip
    layer = [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
             ("attn.out", "attn.c_proj", True), ("norm2", "ln_2", False),
             ("mlp.0", "mlp.c_fc", True), ("mlp.2", "mlp.c_proj", True)]  # fmt: skip
    for i in range(n_layers):
        for ours, theirs, transposed in layer:
            for kind in ("weight", "bias"):
                names.append((f"blocks.{i}.{ours}.{kind}", f"transformer.h.{i}.{theirs}.{kind}",
                              transposed and kind == "weight"))  # fmt: skip
    return names


def is_gpt2_shaped(config: RunConfig) -> bool:
    """Whether `config` is a model `GPT2LMHeadModel` computes exactly (causal next-token AR)."""
    m = config.model
    return (config.family == "ar" and m.position == "learned" and m.norm == "layernorm"
            and m.bias and not m.time_conditioning)  # fmt: skip


# ----------------------------------------------------------------------------- import


def _read_gpt2_weights(directory: Path) -> dict[str, Tensor]:
    if (directory / "model.safetensors").is_file():
        weights = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        weights = torch.load(directory / "pytorch_model.bin", weights_only=True, map_location="cpu")
    else:
        raise CheckpointError(f"{directory} has no model.safetensors or pytorch_model.bin")
    # GPT2Model checkpoints name the weights without the "transformer." prefix
    return {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
            for k, v in weights.items()}  # fmt: skip


def import_gpt2(
    path: str | Path, max_len: int | None = None
) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """(model config, hdlm weights, tokenizer with MASK appended) of a local GPT-2 directory;
    `max_len` keeps the first position embeddings only (a shorter context to fine-tune in)."""
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json; pass a GPT-2 model directory")
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(
            f"{directory} holds a '{hf.get('model_type')}' model; only GPT-2 (model_type gpt2) "
            "checkpoints can be imported"
        )
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{directory}: activation {hf['activation_function']} is not GPT-2's")
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{directory} has no tokenizer.json; write one with transformers: "
            f"AutoTokenizer.from_pretrained(PATH).save_pretrained(PATH)"
        )
    tokenizer = Tokenizer.load(directory)
    vocab = hf["vocab_size"]
    if tokenizer.mask_id != vocab or tokenizer.vocab_size != vocab + 1:
        raise CheckpointError(
            f"{directory}: config.json has vocab_size={vocab} but tokenizer.json holds "
            f"{tokenizer.mask_id} ids before {MASK}; the files belong to different models"
        )
    d, positions = hf["n_embd"], hf["n_positions"]
    if max_len is not None and max_len > positions:
        raise CheckpointError(
            f"{directory} has {positions} positions, fewer than model.max_len={max_len}; "
            f"set model.max_len <= {positions}"
        )
    config = ModelConfig(
        vocab_size=vocab + 1, max_len=max_len or positions, n_layers=hf["n_layer"],
        n_heads=hf["n_head"], d_model=d, mlp_ratio=(hf.get("n_inner") or 4 * d) / d,
        norm="layernorm", position="learned", bias=True,
        tie_weights=hf.get("tie_word_embeddings", True),
    )  # fmt: skip
    theirs = _read_gpt2_weights(directory)
    names = gpt2_names(config.n_layers)
    if not config.tie_weights:
        names.append(("head.weight", "lm_head.weight", False))
    missing = [name for _, name, _ in names if name not in theirs]
    if missing:
        raise CheckpointError(f"{directory}: weights {', '.join(missing[:3])} are missing")
    weights = {ours: theirs[name].t() if t else theirs[name] for ours, name, t in names}
    weights["pos_embed.weight"] = weights["pos_embed.weight"][: config.max_len]
    weights = {k: v.float().contiguous() for k, v in weights.items()}
    for name in ("embed.weight", "head.weight"):  # MASK: a new last row, the mean of the others
        if name in weights:
            rows = weights[name]
            weights[name] = torch.cat((rows, rows.mean(0, keepdim=True)))
    if config.tie_weights:
        weights["head.weight"] = weights["embed.weight"]
    return config, weights, tokenizer


def import_run_config(path: str | Path) -> tuple[RunConfig, dict[str, Tensor], Tokenizer]:
    """An `ar` run configuration around an imported GPT-2 (its tokenizer as data.tokenizer)."""
    model, weights, tokenizer = import_gpt2(path)
    config = RunConfig(name=Path(path).name, family="ar", model=model)
    config.data.tokenizer.path = str(Path(path).expanduser())
    config.data.seq_len = min(config.data.seq_len, model.max_len)
    return complete(config), weights, tokenizer


# ----------------------------------------------------------------------------- export


def _tokenizer_files(tokenizer: Tokenizer, max_len: int) -> dict[str, str]:
    specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "mask_token": MASK}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "add_prefix_space": False, **specials}  # fmt: skip
    return {"tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(specials, indent=2)}  # fmt: skip


def _gpt2_config(config: RunConfig, tokenizer: Tokenizer) -> dict:
    m = config.model
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": m.vocab_size, "n_positions": m.max_len, "n_embd": m.d_model,
        "n_layer": m.n_layers, "n_head": m.n_heads, "n_inner": int(m.mlp_ratio * m.d_model),
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "tie_word_embeddings": m.tie_weights, "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32",
    }  # fmt: skip


def export(checkpoint: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write a checkpoint (or a run's newest) as a Hugging Face-style directory; return it and
    its kind: "gpt2" (a GPT2LMHeadModel) or "hdlm" (an hdlm checkpoint, model_type hdlm)."""
    _, config, weights, tokenizer = read_checkpoint(checkpoint)
    out = Path(out)
    files = _tokenizer_files(tokenizer, config.model.max_len)
    if not is_gpt2_shaped(config):
        save_checkpoint(out, weights, config, tokenizer, extra_files=files)
        return out, "hdlm"
    names = gpt2_names(config.model.n_layers)
    if not config.model.tie_weights:
        names.append(("head.weight", "lm_head.weight", False))
    theirs = {name: (weights[ours].t() if t else weights[ours]).contiguous()
              for ours, name, t in names}  # fmt: skip
    files["config.json"] = json.dumps(_gpt2_config(config, tokenizer), indent=2)
    out.mkdir(parents=True, exist_ok=True)
    save_file(theirs, out / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save(out)
    for name, text in files.items():
        (out / name).write_text(text)
    return out, "gpt2"
