"""One entry point for every sampler: `sample(lm, n, length, sampler=..., prompt=...)`.

* `ar`: left to right with a KV cache (AR checkpoints; the speed baseline).
* `ancestral`, `acs`, `remask`: the hyperschedule sampler (`sampling.hyperschedule`) with no
  correction, HDLM's Adaptive Correction Sampler, or ReMDM remasking; any schedule, any prompt.
* `eps-chain`: the ε-hybrid's own reverse chain, the one its NELBO bounds
  (`sampling.eps_chain`: reveal from (1 - ε) p_θ + ε u, then the final reconstruction).
* `tweedie`, `euler`: τ-leaping for γ-hybrid checkpoints (`sampling.tau_leaping`), any schedule.

Which family takes which sampler is the families table's (`hdlm.families`); which sampler reads
which option is `sampling.options`'.
* `a3`: A3 decoding in any order and group size (`sampling.a3`).

`fill` is the common core: it completes any set of unknown positions, so prompts and infilling
(`--infill "The ___[2] sat"`) are the same operation for every family but AR. Which sampler uses
which option is one table (`sampling.options`); `settings` resolves them all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.families import TAU_LEAPING_SAMPLERS, check_sampler
from hdlm.sampling.a3 import decode, infill_template
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.eps_chain import sample_eps_chain
from hdlm.sampling.hyperschedule import sample_hyperschedule
from hdlm.sampling.options import OPTIONS, sampler_options
from hdlm.sampling.prompt import fixed_template, prompt_prefix
from hdlm.sampling.tau_leaping import sample_tau_leaping
from hdlm.sampling.trace import Trace
from hdlm.schedules import Hyperschedule, from_spec

__all__ = ["Trace", "fill", "sample", "sampling_schedule", "settings"]

DEFAULT_ETA = {"ancestral": 0.0, "acs": 0.015, "remask": 0.02}
DEFAULT_STEPS = 128  # steps of the flat schedule a flat-trained model walks unless told


def schedule_spec(lm, spec: str | None, steps: int | None) -> str:
    """The schedule to walk: `spec`, else the one the model was trained with (a flat one with
    `steps` (default 128) steps for flat-trained models, quenched AR for AR models). `steps`
    for any other schedule would be ignored, so it is an error."""
    if spec is None:
        spec = lm.objective.layout.options.schedule  # ar: its twin's, quenched AR
        if spec.startswith("flat:"):
            return f"flat:{steps or DEFAULT_STEPS}"
    if steps is not None:
        raise HdlmError(
            f"--steps sets the steps of a flat schedule, but this sampler walks {spec}; "
            "give the steps in --schedule instead (e.g. flat:64, block:16:4)"
        )
    return spec


def sampling_schedule(lm, spec: str | None, steps: int | None, length: int) -> Hyperschedule:
    """The hyperschedule over the `length - 1` positions after BOS (`schedule_spec`)."""
    return from_spec(schedule_spec(lm, spec, steps), length - 1)


def resolve_sampler(lm, sampler: str | None) -> str:
    """`sampler`, or the family's own, after checking that it can sample this family."""
    sampler = sampler or lm.family.default_sampler
    check_sampler(lm.family, sampler)
    return sampler


def settings(
    lm,
    sampler: str | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Every setting `fill` samples `lm` with, defaults resolved (JSON-able): the sampler, the
    token choice, and the options of `sampling.options.OPTIONS` this sampler uses (a given option
    it does not use is an error; `trace` is checked, not reported). `blank_max` is `sample`'s,
    the others `fill`'s."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}")
    sampler = resolve_sampler(lm, sampler)
    named = [name for name in OPTIONS if name != "blank_max" or name in options]
    used = sampler_options(lm.config.family, sampler, {name: options.get(name) for name in named})
    used.pop("trace", None)  # where the steps are recorded, not how samples are drawn
    if isinstance(used.get("groups"), Tensor):
        used["groups"] = used["groups"].tolist()  # (JSON-able, as the report shows it)
    result = {"sampler": sampler, "temperature": temperature, "top_k": top_k, "top_p": top_p,
              "seed": seed, **used}  # fmt: skip
    if "eta" in result and result["eta"] is None:
        result["eta"] = DEFAULT_ETA[sampler]
    if sampler == "a3" and result["groups"] is None:
        result["order"] = result["order"] or "left-to-right"
    if "schedule" in result:
        result["schedule"] = schedule_spec(lm, result["schedule"], result.pop("steps"))
    return result


def sample(
    lm,
    n: int = 1,
    length: int | None = None,
    sampler: str | None = None,
    prompt: str | list[int] | None = None,
    infill: str | None = None,
    blank_max: int | None = None,
    **options,
) -> Tensor:
    """Draw `n` sequences of `length` tokens (BOS and prompt included) from a `LanguageModel`,
    or fill the blanks of an `infill` template (`sampling.prompt`; the template sets the length).
    `options` are those of `fill`."""
    used = settings(lm, sampler, blank_max=blank_max, group_size=options.get("group_size"))
    if infill is not None:
        if prompt:
            raise HdlmError("give --prompt or --infill, not both (a prompt is text before a blank)")
        if lm.family.is_a3:  # A3 chooses free blank lengths by likelihood
            tokens, known = infill_template(lm, infill, used["blank_max"], used["group_size"])
        else:
            tokens, known = fixed_template(lm, infill)
    else:
        prefix, length = prompt_prefix(lm, prompt, length)
        tokens = torch.tensor(prefix + [lm.tokenizer.mask_id] * (length - len(prefix)))
        known = torch.arange(length) < len(prefix)
    tokens, known = tokens.to(lm.device).expand(n, -1).clone(), known.to(lm.device)
    return fill(lm, tokens, known, sampler, **options)


def fill(lm, tokens: Tensor, known: Tensor, sampler: str | None = None, **options) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] (bool, BOS included) is False.

    `sampler` defaults to the family's own. `options`: temperature, top_k, top_p, seed, and the
    sampler's own (`sampling.options.OPTIONS`): use_cache, trace; steps / schedule (the
    hyperschedule the diffusion samplers walk), eta (their correction strength); order /
    group_size / groups / eos_stop (A3 decoding, `sampling.a3.decode`); reveal / final (the
    eps-chain sampler's, `sampling.eps_chain`).
    """
    used = settings(lm, sampler, **options)
    sampler, trace = used["sampler"], options.get("trace")
    generator = torch.Generator(lm.device).manual_seed(used["seed"])
    pick = {name: used[name] for name in ("temperature", "top_k", "top_p")}
    mask_id = lm.tokenizer.mask_id
    if sampler == "a3":
        if trace is not None:
            trace.title = "hdlm A3 decoding trace (each row: the group committed at that step)"
        stop = lm.tokenizer.eos_id if used["eos_stop"] else None
        return decode(
            lm.net, tokens, known, mask_id, generator, used["order"], used["group_size"],
            used["use_cache"], groups=used["groups"], stop_id=stop, trace=trace, **pick,
        )  # fmt: skip
    if sampler == "ar":
        given = int(known.sum())
        if not known[:given].all():
            raise HdlmError("ar checkpoints continue a prompt; infill with an a3 or masked model")
        prefix = tokens[:, :given]
        return sample_ar(lm.net, prefix, len(known), generator, mask_id, used["use_cache"], **pick)
    walk = from_spec(used["schedule"], tokens.shape[1] - 1)
    if sampler in TAU_LEAPING_SAMPLERS:
        return sample_tau_leaping(lm, tokens, known, generator, walk, sampler, **pick)
    if sampler == "eps-chain":
        return sample_eps_chain(
            lm, tokens, known, generator, walk, used["reveal"], used["final"], used["use_cache"],
            trace, **pick,
        )  # fmt: skip
    # the masking samplers (families.HYPERSCHEDULE_SAMPLERS); the process refuses if it has no
    # reverse step (uniform)
    correction = "none" if sampler == "ancestral" else sampler
    return sample_hyperschedule(
        lm, tokens, known, generator, walk, correction, used.get("eta", 0.0), used["use_cache"],
        trace, **pick,
    )  # fmt: skip
