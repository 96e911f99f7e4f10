"""The start of every sample: BOS followed by the prompt, checked against the requested length."""

from __future__ import annotations

from hdlm.errors import HdlmError


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
    if length > lm.config.model.max_len:
        raise HdlmError(
            f"--length {length} is longer than the model's context ({lm.config.model.max_len}); "
            f"use --length {lm.config.model.max_len} or less"
        )
    return prefix, length
