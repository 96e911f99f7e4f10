"""One entry point for every sampler: `sample(lm, n, length, sampler=..., prompt=...)`.

* `ar`: left to right with a KV cache (AR checkpoints; the speed baseline).
* `ancestral`, `acs`, `remask`: the hyperschedule sampler (`sampling.hyperschedule`) with no
  correction, HDLM's Adaptive Correction Sampler, or ReMDM remasking; any schedule, any prompt.
* `tweedie`, `euler`: τ-leaping for γ-hybrid checkpoints (`sampling.tau_leaping`), any schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.hyperschedule import Trace, sample_hyperschedule
from hdlm.sampling.prompt import prompt_prefix
from hdlm.sampling.tau_leaping import TAU_LEAPING, sample_tau_leaping
from hdlm.schedules import Hyperschedule, from_spec

SAMPLERS = ("ar", "ancestral", "acs", "remask", "a3", *TAU_LEAPING)
DEFAULT_ETA = {"ancestral": 0.0, "acs": 0.015, "remask": 0.02}


def sampling_schedule(lm, spec: str | None, steps: int, length: int) -> Hyperschedule:
    """The schedule to walk: `spec`, else the one the model was trained with (a flat one with
    `steps` steps for flat-trained models, quenched AR for AR models)."""
    if spec is None:
        if lm.config.family == "ar":
            spec = "quenched_ar"
        else:
            spec = lm.objective.options.schedule
            spec = f"flat:{steps}" if spec.startswith("flat:") else spec
    return from_spec(spec, length - 1)


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
    schedule: str | None = None,
    eta: float | None = None,
    trace: Trace | None = None,
    infill: str | None = None,
    order: str = "left-to-right",
    group_size: int = 1,
    blank_max: int = 8,
) -> Tensor:
    """Draw `n` sequences of `length` tokens (BOS and prompt included) from a `LanguageModel`."""
    sampler = sampler or lm.objective.default_sampler
    if sampler not in SAMPLERS:
        raise HdlmError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    if "a3" in (sampler, lm.config.family) or infill is not None:  # `sampling.a3`
        options = {"order": order, "group_size": group_size, "blank_max": blank_max}
        pick = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        return _sample_a3(lm, n, length, sampler, prompt, infill, seed, use_cache, options, pick)
    prefix, length = prompt_prefix(lm, prompt, length)
    prefix = torch.tensor(prefix, device=lm.device)
    if sampler == "ar" and lm.config.family != "ar":
        raise HdlmError(f"the ar sampler needs an ar checkpoint; this one is '{lm.config.family}'")
    options = getattr(lm.objective, "options", None)
    if sampler != "ar" and options is not None and options.process == "uniform":
        raise HdlmError("the masking samplers need a masking process (absorbing, eps-hybrid)")
    generator = torch.Generator(lm.device).manual_seed(seed)
    pick = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    prefix = prefix.expand(n, -1)
    if sampler in TAU_LEAPING or (options is not None and options.process == "gamma-hybrid"):
        if sampler not in TAU_LEAPING:
            raise HdlmError("gamma-hybrid checkpoints sample with --sampler tweedie or euler")
        walk = sampling_schedule(lm, schedule, steps, length)
        return sample_tau_leaping(lm, prefix, length, generator, walk, sampler, **pick)
    if sampler == "ar":
        return sample_ar(lm.net, prefix, length, generator, lm.tokenizer.mask_id, use_cache, **pick)
    return sample_hyperschedule(
        lm,
        prefix,
        length,
        generator,
        sampling_schedule(lm, schedule, steps, length),
        correction="none" if sampler == "ancestral" else sampler,
        eta=DEFAULT_ETA[sampler] if eta is None else eta,
        use_cache=use_cache,
        trace=trace,
        **pick,
    )


def _sample_a3(lm, n, length, sampler, prompt, infill, seed, use_cache, options, pick) -> Tensor:
    from hdlm.sampling.a3 import sample_a3

    if lm.config.family != "a3":
        raise HdlmError(
            f"the a3 sampler and --infill need an a3 checkpoint; this one is '{lm.config.family}'"
        )
    if sampler != "a3":
        raise HdlmError(f"a3 checkpoints sample with --sampler a3, not '{sampler}'")
    prompt_ids = lm.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt or [])
    generator = torch.Generator(lm.device).manual_seed(seed)
    return sample_a3(
        lm, n, length, generator, prompt_ids, infill, use_cache=use_cache, **options, **pick
    )
