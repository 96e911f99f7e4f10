"""What a sample starts from: BOS and a prompt, or an infilling template with blanks.

Infilling templates: `___` (three or more underscores) is a blank of free length, `___[N]` a
blank of exactly N tokens; a single space before a blank is left to the blank (BPE tokens carry
their leading space). A3 models choose free lengths by likelihood (`sampling.a3`); masked
diffusion models need every length given (`fixed_template`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from hdlm.errors import HdlmError

BLANK = re.compile(r"_{3,}(?:\[(\d+)\])?")


def check_length(lm, length: int, what: str = "--length") -> None:
    if length > lm.config.model.max_len:
        raise HdlmError(
            f"{what} is {length} tokens, longer than the model's context "
            f"({lm.config.model.max_len}); shorten it"
        )


def prompt_prefix(lm, prompt: str | list[int] | None, length: int | None) -> tuple[list[int], int]:
    """(BOS + prompt ids, sample length); the length defaults to the training block length."""
    length = length or lm.config.data.seq_len
    ids = lm.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt or [])
    prefix = [lm.tokenizer.bos_id, *ids]
    if len(prefix) >= length:
        raise HdlmError(
            f"the prompt is {len(prefix) - 1} tokens but --length is {length}; "
            "raise --length or shorten the prompt"
        )
    check_length(lm, length)
    return prefix, length


def parse_infill(text: str) -> list[str | int | None]:
    """Alternating text pieces and blanks: [text, blank, text, ..., blank, text]; a blank is its
    length (`___[N]`) or None (`___`, free length)."""
    pieces: list[str | int | None] = []
    start = 0
    for match in BLANK.finditer(text):
        before = text[start : match.start()]
        pieces += [before[:-1] if before.endswith(" ") else before]
        size = int(match.group(1)) if match.group(1) is not None else None
        if size == 0:
            raise HdlmError(f"blank '{match.group(0)}' has length 0; use ___[N] with N >= 1")
        pieces.append(size)
        start = match.end()
    if not pieces:
        raise HdlmError(
            "--infill text has no blank; mark one with ___ (free length) or ___[N] (N tokens)"
        )
    return [*pieces, text[start:]]


def layout(bos: int, mask_id: int, texts: list[list[int]], lengths: list[int]):
    """Tokens [L] and known [L] of text pieces with blanks of `lengths` between them."""
    tokens, known = [bos], [True]
    for i, ids in enumerate(texts):
        tokens += ids
        known += [True] * len(ids)
        if i < len(lengths):
            tokens += [mask_id] * lengths[i]
            known += [False] * lengths[i]
    return torch.tensor(tokens), torch.tensor(known)


def fixed_template(lm, text: str) -> tuple[Tensor, Tensor]:
    """(tokens [L], known [L]) of a template whose blanks all have a given length."""
    pieces = parse_infill(text)
    if any(size is None for size in pieces[1::2]):
        raise HdlmError(
            f"'{lm.config.family}' models fill blanks of a given length: write ___[N] "
            "(free-length blanks ___ need an a3 model)"
        )
    texts = [lm.tokenizer.encode(p) if p else [] for p in pieces[0::2]]
    tokens, known = layout(lm.tokenizer.bos_id, lm.tokenizer.mask_id, texts, pieces[1::2])
    check_length(lm, len(tokens), "the infilling template")
    return tokens.to(lm.device), known.to(lm.device)
