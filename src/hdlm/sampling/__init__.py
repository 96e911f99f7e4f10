"""One entry point for every sampler: `sample(lm, n, length, sampler=..., prompt=...)`."""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.sampling.ancestral import sample_ancestral
from hdlm.sampling.ar import sample_ar

SAMPLERS = ("ar", "ancestral")


def sample(
    lm,
    n: int = 1,
    length: int | None = None,
    sampler: str | None = None,
    prompt: str | list[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    steps: int = 128,
) -> Tensor:
    """Draw `n` sequences of `length` tokens (BOS and prompt included) from a `LanguageModel`."""
    sampler = sampler or lm.objective.default_sampler
    if sampler not in SAMPLERS:
        raise HdlmError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    length = length or lm.config.data.seq_len
    prompt_ids = lm.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt or [])
    prefix = torch.tensor([lm.tokenizer.bos_id, *prompt_ids], device=lm.device)
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
    if sampler == "ar" and lm.config.family != "ar":
        raise HdlmError(f"the ar sampler needs an ar checkpoint; this one is '{lm.config.family}'")
    generator = torch.Generator(lm.device).manual_seed(seed)
    pick = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    prefix = prefix.expand(n, -1)
    if sampler == "ar":
        return sample_ar(lm.net, prefix, length, generator, use_cache=use_cache, **pick)
    return sample_ancestral(lm, prefix.clone(), length, generator, steps=steps, **pick)
