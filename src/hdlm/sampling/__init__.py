"""One entry point for every sampler: `sample(lm, n, length, sampler=..., prompt=...)`.

* `ar`: left to right with a KV cache (AR checkpoints; the speed baseline).
* `ancestral`, `acs`, `remask`: the hyperschedule sampler (`sampling.hyperschedule`) with no
  correction, HDLM's Adaptive Correction Sampler, or ReMDM remasking; any schedule, any prompt.
* `eps-chain`: the ε-hybrid's own reverse chain, the one its NELBO bounds
  (`sampling.eps_chain`: reveal from (1 - ε) p_θ + ε u, then the final reconstruction).
* `tweedie`, `euler`: τ-leaping for γ-hybrid checkpoints (`sampling.tau_leaping`), any schedule.

Which family takes which sampler is the families table's (`hdlm.families`).
* `a3`: A3 decoding in any order and group size (`sampling.a3`).

`fill` is the common core: it completes any set of unknown positions, so prompts and infilling
(`--infill "The ___[2] sat"`) are the same operation for every family but AR.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.families import TAU_LEAPING_SAMPLERS, check_sampler
from hdlm.sampling.a3 import decode, infill_template
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.eps_chain import sample_eps_chain
from hdlm.sampling.hyperschedule import Trace, sample_hyperschedule
from hdlm.sampling.prompt import fixed_template, prompt_prefix
from hdlm.sampling.tau_leaping import sample_tau_leaping
from hdlm.schedules import Hyperschedule, from_spec

DEFAULT_ETA = {"ancestral": 0.0, "acs": 0.015, "remask": 0.02}


def sampling_schedule(lm, spec: str | None, steps: int, length: int) -> Hyperschedule:
    """The schedule to walk: `spec`, else the one the model was trained with (a flat one with
    `steps` steps for flat-trained models; quenched AR for AR models)."""
    if spec is None:
        spec = lm.objective.layout.options.schedule
        spec = f"flat:{steps}" if spec.startswith("flat:") else spec
    return from_spec(spec, length - 1)


def sample(
    lm,
    n: int = 1,
    length: int | None = None,
    sampler: str | None = None,
    prompt: str | list[int] | None = None,
    infill: str | None = None,
    blank_max: int = 8,
    group_size: int = 1,
    **options,
) -> Tensor:
    """Draw `n` sequences of `length` tokens (BOS and prompt included) from a `LanguageModel`,
    or fill the blanks of an `infill` template (`sampling.prompt`; the template sets the length).
    `options` are those of `fill`."""
    if infill is not None:
        if prompt:
            raise HdlmError("give --prompt or --infill, not both (a prompt is text before a blank)")
        if lm.family.is_a3:  # A3 chooses free blank lengths by likelihood
            tokens, known = infill_template(lm, infill, blank_max, group_size)
        else:
            tokens, known = fixed_template(lm, infill)
    else:
        prefix, length = prompt_prefix(lm, prompt, length)
        tokens = torch.tensor(prefix + [lm.tokenizer.mask_id] * (length - len(prefix)))
        known = torch.arange(length) < len(prefix)
    tokens, known = tokens.to(lm.device).expand(n, -1).clone(), known.to(lm.device)
    return fill(lm, tokens, known, sampler, group_size=group_size, **options)


def fill(
    lm,
    tokens: Tensor,
    known: Tensor,
    sampler: str | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    steps: int = 128,
    schedule: str | None = None,
    eta: float | None = None,
    trace: Trace | None = None,
    order: str = "left-to-right",
    group_size: int = 1,
    reveal: str = "mixture",
    final: str = "sample",
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] (bool, BOS included) is False.

    `sampler` defaults to the family's own (`hdlm.families`); `steps`/`schedule` set the
    hyperschedule walked by the diffusion samplers, `eta` their correction strength,
    `order`/`group_size` A3's decoding, `reveal`/`final` the eps-chain sampler's. Options a
    sampler does not read are ignored here; the CLI refuses them (`families.check_options`).
    """
    sampler = sampler or lm.family.default_sampler
    check_sampler(lm.family, sampler)
    generator = torch.Generator(lm.device).manual_seed(seed)
    pick = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    mask_id = lm.tokenizer.mask_id
    if sampler == "a3":
        return decode(lm.net, tokens, known, mask_id, generator, order, group_size, use_cache,
                      **pick)  # fmt: skip
    if sampler == "ar":
        given = int(known.sum())
        if not known[:given].all():
            raise HdlmError("ar checkpoints continue a prompt; infill with an a3 or masked model")
        return sample_ar(lm.net, tokens[:, :given], len(known), generator, mask_id, use_cache,
                         **pick)  # fmt: skip
    walk = sampling_schedule(lm, schedule, steps, tokens.shape[1])
    if sampler in TAU_LEAPING_SAMPLERS:
        return sample_tau_leaping(lm, tokens, known, generator, walk, sampler, **pick)
    if sampler == "eps-chain":
        return sample_eps_chain(
            lm, tokens, known, generator, walk, reveal, final, use_cache, trace, **pick
        )
    # the masking samplers (families.HYPERSCHEDULE_SAMPLERS)
    correction = "none" if sampler == "ancestral" else sampler
    eta = DEFAULT_ETA[sampler] if eta is None else eta
    return sample_hyperschedule(
        lm, tokens, known, generator, walk, correction, eta, use_cache, trace, **pick
    )
