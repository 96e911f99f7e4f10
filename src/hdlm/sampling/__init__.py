"""One entry point for every sampler: `sample(lm, n, length, sampler=..., prompt=...)`.

The samplers are objects of the registry (`sampling.registry`), one file each in
`sampling.samplers`: `ar`, `ancestral`, `acs`, `remask` (the hyperschedule loop,
`sampling.hyperschedule`), `eps-chain` (the ε-hybrid's own chain), `tweedie`, `euler`
(τ-leaping, `sampling.tau_leaping`), `a3` (A3 decoding, `sampling.a3`). Each declares its
options and the models it walks; a sampler receives the model's `Denoiser` (`hdlm.denoiser`)
and nothing else of it.

`fill` is the common core: it completes any set of unknown positions, so prompts and infilling
(`--infill "The ___[2] sat"`) are the same operation for every family but AR; `settings`
resolves every option it samples with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.sampling import samplers  # noqa: F401  (registers the built-in samplers)
from hdlm.sampling.a3 import infill_template
from hdlm.sampling.prompt import fixed_template, prompt_prefix
from hdlm.sampling.registry import SAMPLERS, Sampler, check_sampler, sampler_options
from hdlm.sampling.trace import Trace

__all__ = ["SAMPLERS", "Trace", "fill", "sample", "settings"]


def chosen_sampler(lm, sampler: str | None) -> Sampler:
    """`sampler` (default: the family's own), after checking that it can draw from `lm` and
    that `lm`'s process has the reverse step it takes."""
    chosen = check_sampler(lm.family, sampler or lm.family.default_sampler)
    chosen.check(lm.denoiser)
    return chosen


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
    token choice, and the options the sampler declares (a given option it does not declare is
    an error; `trace` is checked, not reported; `template` options only when passed)."""
    chosen = chosen_sampler(lm, sampler)
    used = sampler_options(lm.config.family, chosen, options)
    for option in chosen.options:
        if option.name == "trace" or (option.template and option.name not in options):
            used.pop(option.name)
    pick = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return {"sampler": chosen.name, **pick, "seed": seed, **chosen.resolve(lm.denoiser, used)}


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
    options the sampler declares (`SAMPLERS[name].options`, `hdlm sample --help`): use_cache,
    trace; steps / schedule (the hyperschedule the diffusion samplers walk), eta (their
    correction strength); order / group_size / groups / eos_stop (A3 decoding); reveal / final
    (the eps-chain sampler's).
    """
    used = settings(lm, sampler, **options)
    chosen = SAMPLERS[used.pop("sampler")]
    generator = torch.Generator(lm.device).manual_seed(used.pop("seed"))
    pick = {name: used.pop(name) for name in ("temperature", "top_k", "top_p")}
    return chosen.run(lm.denoiser, tokens, known, generator, used, pick, options.get("trace"))
