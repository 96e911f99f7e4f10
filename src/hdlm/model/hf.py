"""Hugging Face interop: local model directories in (as AR starting points) and out.

Import (`hdlm import HF_DIR OUT`, `train.init_from: hf:HF_DIR`, `model.from_hf: HF_DIR`) reads a
directory as `save_pretrained` writes it: config.json, model.safetensors (or the shards of
model.safetensors.index.json, or pytorch_model.bin) and tokenizer.json, for the model types of
`hf_arch.SUPPORTED` (gpt2, llama, mistral, qwen2, qwen3). Our backbone then computes exactly
their function. Weights are read one tensor at a time (`hf_io.WeightFiles`) into tensors
preallocated in the checkpoint's own dtype, so an import holds about one copy of the model.

The vocabulary: the tokenizer keeps the directory's special tokens (`hdlm.data.tokenizer`); MASK
is a reserved special token of the vocabulary when there is one (Llama-3), else appended. Embedding
rows past the checkpoint's, and rows of tokens hdlm added (an appended MASK), start at the mean
of the others; rows the checkpoint pads its embeddings with beyond the tokenizer are dropped.

Export writes an `ar` model of one of these shapes as that architecture (`hf_arch.export_kind`:
loads in `AutoModelForCausalLM` with the same logits, MASK kept in the vocabulary); anything
else (diffusion and A3 families, noise-level conditioning, other shapes) is written as an hdlm
checkpoint whose config.json says `"model_type": "hdlm"`, which `hdlm.load` reads back bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import save_file
from torch import Tensor

from hdlm.config import ModelConfig, RunConfig, complete, validate_model
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import CheckpointError
from hdlm.model.checkpoint import read_checkpoint, save_checkpoint
from hdlm.model.hf_arch import (
    SUPPORTED,
    Piece,
    export_kind,
    half_to_pairs,
    hf_config,
    model_config,
    weight_pieces,
)
from hdlm.model.hf_io import WeightFiles
from hdlm.model.transformer import Transformer

VOCAB_ROWS = ("embed.weight", "head.weight")


@dataclass
class Imported:
    """An imported model: our backbone, its weights (the checkpoint's dtype), the tokenizer and
    what the import decided (MASK, context) in words."""

    config: ModelConfig
    weights: dict[str, Tensor]
    tokenizer: Tokenizer
    notes: list[str]


def read_hf_config(directory: Path) -> dict:
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"{directory} has no config.json; pass a Hugging Face model directory"
        )
    try:
        return json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / 'config.json'} is not valid JSON ({e})") from e


def is_transformers_model(directory: Path) -> bool:
    """Whether `directory` is a transformers model this module imports (a config.json of a
    supported model_type), not an hdlm checkpoint or run directory."""
    if (directory / "manifest.json").is_file() or (directory / "latest").is_file():
        return False
    try:
        return read_hf_config(directory).get("model_type") in SUPPORTED
    except CheckpointError:
        return False


def architecture(model: ModelConfig) -> ModelConfig:
    """`model` with every architecture field taken from the config.json of `model.from_hf`
    (max_len, dropout, time_conditioning and vocab_size stay the run's)."""
    directory = Path(model.from_hf).expanduser()
    theirs = model_config(read_hf_config(directory), str(directory))
    kept = ("vocab_size", "max_len", "dropout", "time_conditioning", "from_hf")
    return dataclasses.replace(theirs, **{k: getattr(model, k) for k in kept})


def resolve_architecture(config: RunConfig) -> RunConfig:
    """`config` with its model section filled from `model.from_hf` (when set) and checked (a new
    config, not a mutation): the trainer calls this before it builds the model."""
    if config.model.from_hf is None:
        return config
    model = architecture(config.model)
    validate_model(model)
    return dataclasses.replace(config, model=model)


def hf_tokenizer(directory: Path) -> tuple[Tokenizer, set[int]]:
    """The directory's tokenizer with hdlm's roles, and the ids of the tokens hdlm appended."""
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{directory} has no tokenizer.json; write one with transformers: "
            f"AutoTokenizer.from_pretrained(PATH).save_pretrained(PATH)"
        )
    tokenizer = Tokenizer.load(directory)
    original = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    appended = {tokenizer.hf.token_to_id(t) for t in tokenizer.roles.values()
                if original.token_to_id(t) is None}  # fmt: skip
    return tokenizer, appended


# ----------------------------------------------------------------------------- import


def _source_name(files: WeightFiles, name: str) -> str | None:
    """`name`, or `name` without its first component (GPT2Model / LlamaModel checkpoints)."""
    if name in files:
        return name
    short = name.split(".", 1)[-1]
    return short if short in files else None


def read_piece(files: WeightFiles, name: str, piece: Piece, dest: Tensor, where: str) -> int:
    """Fill `piece`'s rows of `dest` from their tensor `name`; return the rows filled (fewer
    than the rows of `dest` for a vocabulary larger than the checkpoint's)."""
    target = dest if piece.rows is None else dest[piece.rows[0] : piece.rows[1]]
    shape = files.shape(name)
    expected = tuple(reversed(target.shape)) if piece.transpose else tuple(target.shape)
    rows = min(shape[0], expected[0]) if piece.leading else target.shape[0]
    if shape[1:] != expected[1:] or (not piece.leading and shape[0] != expected[0]):
        raise CheckpointError(
            f"{where}: weight {name} is {list(shape)} but config.json implies {list(expected)}; "
            "the config and the weights belong to different models"
        )
    target = target[:rows]
    if piece.transpose or piece.rope_heads or files.dtype(name) != target.dtype:
        tensor = files.read(name, rows if piece.leading else None)
        tensor = tensor.t() if piece.transpose else tensor
        if piece.rope_heads:
            tensor = tensor[half_to_pairs(piece.rope_heads, len(tensor) // piece.rope_heads)]
        target.copy_(tensor)
    else:
        files.read_into(name, target)  # straight from the file into the model's memory
    return rows


def preallocate(config: ModelConfig, dtype: torch.dtype) -> dict[str, Tensor]:
    """Uninitialised tensors for every weight of `Transformer(config)` (built on the meta
    device, so no memory is touched), the tied head left out."""
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in Transformer(config).state_dict().items()}
    if config.tie_weights:
        shapes.pop("head.weight")
    return {name: torch.empty(shape, dtype=dtype) for name, shape in shapes.items()}


def fill_new_rows(rows: Tensor, filled: int, new_ids: set[int]) -> None:
    """Rows of tokens the checkpoint lacks (past `filled`, or hdlm's appended ones) start at
    the mean of the checkpoint's other rows."""
    new = sorted(i for i in new_ids if i < filled)
    keep = torch.ones(filled, dtype=torch.bool)
    keep[new] = False
    mean = rows[:filled][keep].float().mean(0).to(rows.dtype)
    rows[filled:] = mean
    rows[new] = mean


def import_hf(path: str | Path, max_len: int | None = None) -> Imported:
    """Import a local Hugging Face directory (`max_len`: a shorter context to fine-tune in)."""
    directory = Path(path).expanduser()
    where = str(directory)
    hf = read_hf_config(directory)
    theirs = model_config(hf, where)
    tokenizer, appended = hf_tokenizer(directory)
    original_size = tokenizer.vocab_size - len(appended)
    if original_size > theirs.vocab_size:
        raise CheckpointError(
            f"{where}: tokenizer.json holds {original_size} ids but config.json has vocab_size="
            f"{theirs.vocab_size}; the files belong to different models"
        )
    if max_len is not None and max_len > theirs.max_len and theirs.position == "learned":
        raise CheckpointError(
            f"{where} has {theirs.max_len} positions, fewer than model.max_len={max_len}; "
            f"set model.max_len <= {theirs.max_len}"
        )
    config = dataclasses.replace(
        theirs, vocab_size=tokenizer.vocab_size, max_len=max_len or theirs.max_len
    )
    pieces = weight_pieces(hf["model_type"], config)
    with WeightFiles(directory) as files:
        names = {p.theirs: _source_name(files, p.theirs) for ps in pieces.values() for p in ps}
        missing = [theirs_name for theirs_name, found in names.items() if found is None]
        if missing:
            raise CheckpointError(
                f"{where}: weights {', '.join(missing[:3])} are missing"
                + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
                + "; the checkpoint is partial or of another architecture"
            )
        embed = names[pieces["embed.weight"][0].theirs]
        if files.shape(embed)[0] != theirs.vocab_size:
            raise CheckpointError(
                f"{where}: weight {embed} has {files.shape(embed)[0]} rows but config.json "
                f"has vocab_size={theirs.vocab_size}; the files belong to different models"
            )
        dtype = files.dtype(embed) if files.dtype(embed).is_floating_point else torch.float32
        weights = preallocate(config, dtype)
        for ours, parts in pieces.items():
            for piece in parts:
                filled = read_piece(files, names[piece.theirs], piece, weights[ours], where)
            if ours in VOCAB_ROWS:
                fill_new_rows(weights[ours], filled, appended)
    if config.tie_weights:
        weights["head.weight"] = weights["embed.weight"]
    notes = import_notes(tokenizer, appended, theirs)
    return Imported(config, weights, tokenizer, notes)


def import_notes(tokenizer: Tokenizer, appended: set[int], theirs: ModelConfig) -> list[str]:
    """What the import decided, for the log."""
    mask, mask_id = tokenizer.roles["mask"], tokenizer.mask_id
    if mask_id not in appended:
        notes = [f"MASK reuses the vocabulary's reserved special token {mask} (id {mask_id})"]
    elif mask_id < theirs.vocab_size:
        notes = [f"MASK appended as {mask} (id {mask_id}, one of the checkpoint's padding rows)"]
    else:
        notes = [f"MASK appended as {mask} (id {mask_id}): embedding rows grown from "
                 f"{theirs.vocab_size} to {tokenizer.vocab_size}"]  # fmt: skip
    for role in ("bos", "eos"):
        if tokenizer.hf.token_to_id(tokenizer.roles[role]) in appended - {mask_id}:
            notes.append(f"{role.upper()} appended as {tokenizer.roles[role]}")
    notes.append(f"context {theirs.max_len} tokens; BOS {tokenizer.roles['bos']}, "
                 f"EOS {tokenizer.roles['eos']}")  # fmt: skip
    return notes


def import_run_config(path: str | Path) -> tuple[RunConfig, Imported]:
    """An `ar` run configuration around an imported model (its tokenizer as data.tokenizer)."""
    imported = import_hf(path)
    config = RunConfig(name=Path(path).name, family="ar", model=imported.config)
    config.data.tokenizer.path = str(Path(path).expanduser())
    config.data.seq_len = min(config.data.seq_len, imported.config.max_len)
    return complete(config), imported


# ----------------------------------------------------------------------------- export


def _tokenizer_files(tokenizer: Tokenizer, max_len: int, byte_level: bool) -> dict[str, str]:
    specials = tokenizer.special_tokens_map()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              **specials}  # fmt: skip
    if byte_level:  # hdlm's own byte-level BPE (and GPT-2's): no space before the first word
        config["add_prefix_space"] = False
    return {"tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(specials, indent=2)}  # fmt: skip


def hf_weights(kind: str, model: ModelConfig, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Their tensors from ours: the inverse of the import's pieces."""
    theirs = {}
    for ours, parts in weight_pieces(kind, model).items():
        for piece in parts:
            tensor = weights[ours] if piece.rows is None else weights[ours][slice(*piece.rows)]
            if piece.rope_heads:
                order = half_to_pairs(piece.rope_heads, len(tensor) // piece.rope_heads)
                tensor = tensor[order.argsort()]
            theirs[piece.theirs] = (tensor.t() if piece.transpose else tensor).contiguous()
    return theirs


def export(checkpoint: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write a checkpoint (or a run's newest) as a Hugging Face directory; return it and its
    kind: an architecture of `hf_arch.SUPPORTED`, or "hdlm" (an hdlm checkpoint)."""
    _, config, weights, tokenizer = read_checkpoint(checkpoint)
    out, m = Path(out), config.model
    kind = export_kind(m) if config.family == "ar" and not m.time_conditioning else None
    files = _tokenizer_files(tokenizer, m.max_len, kind in (None, "gpt2"))
    if kind is None:
        save_checkpoint(out, weights, config, tokenizer, extra_files=files)
        return out, "hdlm"
    dtype = str(weights["embed.weight"].dtype).removeprefix("torch.")
    hf = hf_config(kind, m, tokenizer.bos_id, tokenizer.eos_id, dtype)
    files["config.json"] = json.dumps(hf, indent=2)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_weights(kind, m, weights), out / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save(out)
    for name, text in files.items():
        (out / name).write_text(text)
    return out, kind
