"""The request bodies of the API and how their values are checked.

Every body is a pydantic model: a wrong type or an out-of-range value of a standard field is a 400
naming the field. Sampling requests (completions, infill, the live view) also take the model's
own sampler options as extra fields (`steps`, `eta`, `schedule`, `order`, `group_size`...): their
names, types and ranges come from the sampler registry (`hdlm.sampling.registry`), and they are
checked by the same code as `hdlm sample`'s flags (`Option.check`, then `sampling.settings`,
which refuses an option the chosen sampler does not read). Any other field is an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hdlm.errors import HdlmError
from hdlm.sampling import settings
from hdlm.sampling.registry import SAMPLERS, cli_options


class SamplingRequest(BaseModel):
    """What every sampling request shares: the token choice, the sampler and its options."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    sampler: str | None = None


class CompletionRequest(SamplingRequest):
    """`POST /v1/completions` (OpenAI's legacy completions)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    stream: bool = False
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


class InfillRequest(SamplingRequest):
    """`POST /v1/infill`: `prompt` is text with blanks, `___` or `___[N]` (as `--infill`)."""

    prompt: str
    n: int = Field(1, ge=1, le=64)


class DenoiseRequest(SamplingRequest):
    """`POST /v1/denoise` (the live page): a prompt, or a template when it holds a blank."""

    prompt: str = ""
    length: int | None = Field(None, ge=2)


class ScoreRequest(BaseModel):
    """`POST /v1/score`: log p(choice | context) of each choice (`LanguageModel.score_choices`)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    context: str
    choices: list[str] = Field(min_length=1)
    mc_samples: int | None = Field(None, ge=1)
    order: Literal["left-to-right", "random"] | None = None
    group_size: int | None = Field(None, ge=1)
    stride: int | None = Field(None, ge=1)


def request_options() -> dict:
    """The sampler options a request may carry as extra fields: those with a command-line flag,
    and the template ones (`blank_max`); not `trace`, which the server owns."""
    return {name: option for name, option in cli_options().items() if option.cli or option.template}


def _typed(name: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (int, float, bool, str), as JSON spells it; a one-line error else."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    fits = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }
    if kind in fits and not fits[kind]:
        raise HdlmError(f"{name} must be {words[kind]}, not {value!r}")
    return float(value) if kind is float else value


def sampler_options(lm, request: SamplingRequest) -> dict[str, Any]:
    """The keyword arguments of `lm.sample` for `request`: the token choice, the sampler and
    its options, checked as `hdlm sample` checks them (module docstring)."""
    allowed = request_options()
    extra = dict(request.model_extra or {})
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise HdlmError(
            f"unknown field(s) {', '.join(unknown)}; sampler options are "
            f"{', '.join(sorted(allowed))}"
        )
    options = {}
    for name, value in extra.items():
        option = allowed[name]
        if value is None:
            continue
        if option.parse is not None and isinstance(value, str):
            if value.startswith("@"):  # a file on the server: not the client's to read
                raise HdlmError(f"{name}: give the value inline, not @FILE")
            value = option.parse(value)  # e.g. A3's --groups spec
        elif option.kind is not object:
            value = _typed(name, value, option.kind)
        options[name] = option.check(value)
    if request.sampler is not None and request.sampler not in SAMPLERS:
        raise HdlmError(f"unknown sampler '{request.sampler}'; choose one of {', '.join(SAMPLERS)}")
    pick = {
        "temperature": request.temperature,
        "top_k": request.top_k,
        "top_p": None if request.top_p == 1.0 else request.top_p,
    }
    settings(lm, request.sampler, seed=request.seed, **pick, **options)
    return {"sampler": request.sampler, "seed": request.seed, **pick, **options}
