"""What the model worker runs for each endpoint, and the checks done before queueing.

`prepare_*` run on the event loop: they tokenize and check everything that can be checked
without the network (lengths against the context, option ranges), so a bad request is a 400 in
microseconds and never takes a place in the queue. The `run_*` functions run on the worker
thread (`serve.worker`) and return JSON-able dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdlm.errors import HdlmError
from hdlm.eval.scoring import conditional_support, is_exact, token_scores
from hdlm.sampling.prompt import BLANK
from hdlm.serve.live import LiveTrace
from hdlm.serve.schema import (
    CompletionRequest,
    DenoiseRequest,
    InfillRequest,
    ScoreRequest,
    sampler_options,
)


@dataclass
class Completion:
    """A checked `CompletionRequest`: each prompt's ids, the sampling keywords, the stops."""

    prompts: list[list[int]]
    request: CompletionRequest
    options: dict[str, Any]
    stops: list[str] = field(default_factory=list)


def _prompt_ids(lm, prompt) -> list[list[int]]:
    """The ids of each prompt: a string, a list of strings, a list of ids or of id lists."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    ids = [lm.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]
    vocab = lm.config.model.vocab_size
    for row in ids:
        if any(not 0 <= i < vocab or i == lm.tokenizer.mask_id for i in row):
            raise HdlmError(f"prompt token ids must lie in [0, {vocab}) and not be MASK")
    if not ids:
        raise HdlmError("prompt is empty: give a string, a list of strings or of token ids")
    return ids


def prepare_completion(lm, request: CompletionRequest) -> Completion:
    """Check a completion request (module docstring)."""
    prompts = _prompt_ids(lm, request.prompt)
    context = lm.config.model.max_len
    for ids in prompts:
        if 1 + len(ids) + request.max_tokens > context:
            raise HdlmError(
                f"the prompt is {len(ids)} tokens and max_tokens {request.max_tokens}: with BOS "
                f"that is {1 + len(ids) + request.max_tokens}, longer than the model's context "
                f"({context}); shorten the prompt or lower max_tokens"
            )
    if request.max_tokens == 0 and not request.echo:
        raise HdlmError("max_tokens 0 returns nothing: set echo to score the prompt")
    if request.logprobs is not None:
        check_logprobs(lm)
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not s for s in stops):
        raise HdlmError("stop sequences must not be empty")
    return Completion(prompts, request, sampler_options(lm, request), stops)


def check_logprobs(lm) -> None:
    """Refuse `logprobs` for a model with neither a likelihood nor a bound per token."""
    if not (is_exact(lm) or conditional_support(lm)):
        raise HdlmError(
            f"logprobs: a '{lm.config.family}' model has no per-token likelihood or bound (ar, "
            "a3, and mdlm / eps-hybrid with diffusion.time=count do)"
        )


def _cut(lm, ids: list[int], stops: list[str]) -> tuple[list[int], str, str]:
    """(ids, text, finish_reason) of a completion cut at its first EOS or stop sequence."""
    reason = "length"
    if lm.tokenizer.eos_id in ids:
        ids, reason = ids[: ids.index(lm.tokenizer.eos_id)], "stop"
    text = lm.tokenizer.decode(ids)
    hits = [text.index(s) for s in stops if s in text]
    if hits:
        text, reason = text[: min(hits)], "stop"
        while ids and not text.startswith(lm.tokenizer.decode(ids)):
            ids = ids[:-1]  # the tokens whose text the cut kept
    return ids, text, reason


def _logprobs(lm, scored: list[int], first: int, top: int, prompt_text: str) -> dict:
    """OpenAI's `logprobs` object for the tokens `scored[first:]` given the ones before them."""
    scores = token_scores(lm, scored, top)
    pieces = [lm.tokenizer.decode([i]) for i in scored]
    offsets, at = [], len(prompt_text) if first else 0
    for piece in pieces[first:]:
        offsets.append(at)
        at += len(piece)
    tops = None
    if scores.top is not None:
        tops = [{lm.tokenizer.decode([i]): v for i, v in row} for row in scores.top[first:]]
    return {
        "tokens": pieces[first:],
        "token_logprobs": scores.logprobs[first:],
        "top_logprobs": tops,
        "text_offset": offsets,
        "bound": scores.bound,  # hdlm: True where each value is a lower bound (diffusion)
    }


def run_completion(lm, job: Completion) -> list[dict]:
    """The choices of a completion: `n` samples per prompt, in prompt order."""
    request, choices = job.request, []
    for ids in job.prompts:
        if request.max_tokens:
            rows = lm.sample(
                request.n, 1 + len(ids) + request.max_tokens, prompt=ids, **job.options
            )[:, 1 + len(ids) :].tolist()
        else:
            rows = [[] for _ in range(request.n)]
        prompt_text = lm.tokenizer.decode(ids)
        for row in rows:
            kept, text, reason = _cut(lm, row, job.stops)
            choice = {"index": len(choices), "text": (prompt_text if request.echo else "") + text,
                      "logprobs": None, "finish_reason": reason, "tokens": len(kept)}  # fmt: skip
            if request.logprobs is not None:
                first = 0 if request.echo else len(ids)
                choice["logprobs"] = _logprobs(
                    lm, [*ids, *kept], first, request.logprobs, prompt_text if first else ""
                )
            choices.append(choice)
    return choices


def prepare_infill(lm, request: InfillRequest) -> dict[str, Any]:
    """Check an infill request: it needs a blank; the template is checked when it is laid out."""
    if not BLANK.search(request.prompt):
        raise HdlmError("prompt has no blank; mark one with ___ (free length) or ___[N] (N tokens)")
    return sampler_options(lm, request)


def run_infill(lm, request: InfillRequest, options: dict[str, Any]) -> list[dict]:
    tokens = lm.sample(request.n, infill=request.prompt, **options)
    return [
        {"index": i, "text": text, "finish_reason": "length"}
        for i, text in enumerate(lm.decode(tokens))
    ]


def run_score(lm, request: ScoreRequest) -> dict:
    """`LanguageModel.score_choices`, and whether its numbers are bounds."""
    options = request.model_dump(exclude={"model", "context", "choices"}, exclude_none=True)
    scores = lm.score_choices(request.context, request.choices, **options)
    return {"object": "score", "bound": not is_exact(lm),
            "choices": [s.as_dict() for s in scores]}  # fmt: skip


def prepare_denoise(lm, request: DenoiseRequest) -> dict[str, Any]:
    """The keyword arguments of `lm.sample` for the live view (checked)."""
    options = sampler_options(lm, request)
    if BLANK.search(request.prompt):
        return {**options, "infill": request.prompt}
    if request.length is not None and request.length > lm.config.model.max_len:
        raise HdlmError(
            f"length is {request.length} tokens, longer than the model's context "
            f"({lm.config.model.max_len})"
        )
    length = request.length or lm.config.data.seq_len
    if 1 + len(lm.tokenizer.encode(request.prompt)) >= length:
        raise HdlmError(f"the prompt fills the whole length ({length} tokens); raise length")
    return {**options, "prompt": request.prompt, "length": length}


def run_denoise(lm, options: dict[str, Any], trace: LiveTrace) -> dict:
    """Sample one sequence, every step sent live through `trace`; the final text."""
    tokens = lm.sample(1, trace=trace, **options)
    return {"text": lm.decode(tokens)[0], "steps": len(trace.tokens)}
