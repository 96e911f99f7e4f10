"""Log-likelihood of a continuation given a context, for every family: multiple choice
(`score_choices`), lm-evaluation-harness requests (`hdlm.eval.harness`) and zero-shot perplexity
(`hdlm.eval.zero_shot`) all go through `score_requests` (docs/metrics.md).

A request is (context ids, continuation ids), without BOS. It is scored in *windows* of at most
W = `data.seq_len` - 1 tokens after a BOS, the block length the model was trained on. The
continuation is cut into chunks of at most `stride` tokens (default: the whole continuation, or
W when it is longer), and each chunk is scored given the up to W - `stride` tokens before it
(context first, then earlier chunks; older tokens are cut off on the left):

    log p(continuation | context) = Σ_chunks log p(chunk | BOS, the tokens before it in the window)

so `stride` = W scores fixed blocks of W tokens with only BOS as context (the papers' zero-shot
protocol) and a smaller `stride` is a sliding window. What one window contributes:

* ar: exact, Σ_i log p_θ(x_i | x_<i) over the chunk. Batches are right-padded (a causal model
  never sees the padding).
* a3: exact under a grouping: BOS and the context first (left to right in groups of
  `group_size`), then the chunk left to right or in a random order (`order`; by default the
  model's `a3.eval_order`, `a3.eval_group_size`, seeded by `a3.eval_seed`). Padding forms a last
  group that no real position sees.
* diffusion with `time: count` (mdlm, eps-hybrid): -NELBO of the chunk with the context clean
  (`LanguageModel.nelbo(tokens, hidden)`), a lower bound on log p estimated with `mc_samples`
  stratified draws of the masking level per window (default `diffusion.eval_steps`). The other
  diffusion families score windows without context only (the plain NELBO of [BOS, chunk]),
  which covers the fixed-block protocol. Full attention sees every position, so each batch holds
  windows of one length (no padding).

`is_greedy` says whether the chunk is what greedy decoding would produce: for ar and a3 every
token is the most likely one given what precedes it in the factorisation; for diffusion, every
token is the most likely one at its position with the whole chunk masked (one-step greedy
decoding), and False for families without a conditional likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from hdlm import a3
from hdlm.errors import HdlmError
from hdlm.readout import MaskedCrossEntropy, clean_log_probs

Request = tuple[list[int], list[int]]  # (context ids, continuation ids), no BOS


@dataclass(frozen=True)
class Score:
    """The score of one request: Σ log p over its continuation (a lower bound for diffusion)."""

    logprob: float
    is_greedy: bool
    tokens: int  # continuation tokens scored


@dataclass(frozen=True)
class ChoiceScore:
    """One choice of `score_choices`: raw and length-normalised log-likelihoods."""

    choice: str
    logprob: float  # log p(choice | context), nats (exact for ar/a3, -NELBO for diffusion)
    tokens: int
    logprob_per_token: float
    logprob_per_byte: float  # lm-evaluation-harness' acc_norm normalisation (UTF-8 bytes)
    is_greedy: bool

    def as_dict(self) -> dict:
        return asdict(self)


# -- windows --------------------------------------------------------------------------------------


def windows(
    context: Sequence[int], continuation: Sequence[int], width: int, stride: int | None = None
) -> list[tuple[list[int], int]]:
    """(ids, scored) of each window: at most `width` ids (no BOS) whose last `scored` are a chunk
    of the continuation. Chunks of `stride` tokens (default: the continuation's length, at most
    `width`) cover the continuation once; each sees up to `width` - `stride` earlier tokens."""
    if width < 1:
        raise HdlmError(f"the scoring window must hold at least one token, not {width}")
    stride = min(len(continuation) or 1, width) if stride is None else min(stride, width)
    if stride < 1:
        raise HdlmError(f"the stride must be at least 1 token, not {stride}")
    text = [*context, *continuation]
    out = []
    for start in range(len(context), len(text), stride):
        stop = min(start + stride, len(text))
        out.append((text[max(0, start - (width - stride)) : stop], stop - start))
    return out


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """Ids of (context, continuation) as lm-evaluation-harness forms them: trailing spaces of
    the context move to the continuation, whose ids are those of the whole text after the
    context's own ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context) if context else []
    return context_ids, whole[len(context_ids) :]


# -- one batch of windows, per family -------------------------------------------------------------


def _pad(rows: list[list[int]], bos: int) -> tuple[Tensor, Tensor]:
    """[BOS, ids...] right-padded with BOS, and which positions after BOS are real [B, W]."""
    width = max(map(len, rows))
    tokens = torch.tensor([[bos, *row, *[bos] * (width - len(row))] for row in rows])
    real = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows])
    return tokens, real


def _scored_mask(real: Tensor, scored: list[int]) -> Tensor:
    """[B, W]: the last `scored[b]` real positions of each row."""
    length = real.sum(-1, keepdim=True)
    position = torch.arange(real.shape[1])
    return (position >= length - torch.tensor(scored)[:, None]) & real


def _picked(logits: Tensor, tokens: Tensor, scored: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """(Σ log p over the scored targets [B], all scored targets are the argmax [B]) from the
    rows `logits` [B, W, V] predicting `tokens[:, 1:]` (MASK is never a clean token)."""
    target = tokens[:, 1:]
    nll = MaskedCrossEntropy.apply(logits, target, mask_id)
    best = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), -math.inf)
    hit = best.argmax(-1) == target
    return -torch.where(scored, nll, 0.0).sum(-1), (hit | ~scored).all(-1)


def _ar_batch(lm, tokens: Tensor, scored: Tensor, options: dict) -> tuple[Tensor, Tensor]:
    logits = lm.net(tokens[:, :-1], causal=True)
    return _picked(logits, tokens, scored, lm.tokenizer.mask_id)


def a3_groups(scored: Tensor, real: Tensor, size: int, keys: Tensor) -> Tensor:
    """Group ids [B, W+1] for rows [BOS, W positions]: BOS 0, the real unscored positions left
    to right in groups of `size`, then the scored ones by increasing `keys` [B, W] in groups of
    `size`, padding last (W + 1, seen by no real position). Without padding this is
    `a3.context_first` with the same keys."""
    context = real & ~scored
    context_groups = (context.long().cumsum(-1) - 1) // size + 1
    n_context = -(-context.sum(-1, keepdim=True) // size)
    rank = torch.where(scored, keys, math.inf).argsort(-1).argsort(-1)
    inner = torch.where(scored, n_context + rank // size + 1, real.shape[1] + 1)
    return F.pad(torch.where(context, context_groups, inner), (1, 0), value=0)


def _a3_batch(lm, tokens: Tensor, scored: Tensor, options: dict) -> tuple[Tensor, Tensor]:

    real = options["real"]
    order, size = options["order"], options["group_size"]
    if order == "random":
        generator = torch.Generator(tokens.device).manual_seed(lm.config.a3.eval_seed)
        keys = torch.rand(scored.shape, generator=generator, device=tokens.device)
    else:
        keys = torch.arange(scored.shape[1], device=tokens.device).float().expand_as(scored)
    groups = a3_groups(scored, real, size, keys)
    stream = a3.stream_inputs(tokens, groups, lm.tokenizer.mask_id)
    return _picked(lm.net.two_stream(**stream), tokens, scored, lm.tokenizer.mask_id)


def is_exact(lm) -> bool:
    """Whether `lm`'s likelihood is exact (ar, a3) rather than a bound (diffusion)."""
    return lm.family.objective in ("ar", "a3")


def conditional_support(lm) -> bool:
    """Whether `lm` has a likelihood (or bound) of a chunk given a context."""
    if is_exact(lm):
        return True
    return lm.family.objective == "diffusion" and lm.objective.options.time == "count"


def _diffusion_batch(lm, tokens: Tensor, scored: Tensor, options: dict) -> tuple[Tensor, Tensor]:
    samples = options["mc_samples"]
    if bool(scored.all()):
        terms = lm.nelbo_terms(tokens, samples=samples)
        bound = sum(terms.values())
        if options.get("terms") is not None:  # whole windows: the bound's terms add up too
            for name, value in terms.items():
                options["terms"][name] = options["terms"].get(name, 0.0) + float(value.sum())
    elif conditional_support(lm):
        bound = lm.nelbo(tokens, scored, samples=samples)
    else:
        raise HdlmError(
            f"family '{lm.config.family}' has no likelihood bound of a continuation given a "
            "context (only mdlm / eps-hybrid with diffusion.time=count, ar and a3 do); it can "
            "score whole windows: perplexity, zero-shot and loglikelihood_rolling"
        )
    if not conditional_support(lm):
        return -bound, torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
    x0 = tokens[:, 1:]
    x_t = torch.where(scored, lm.tokenizer.mask_id, x0)
    ones = torch.ones_like(x0)
    logits = lm.objective.layout.logits(lm.net, tokens, x_t, scored.float(), ones)
    _, greedy = _picked(logits, tokens, scored, lm.tokenizer.mask_id)
    return -bound, greedy


BATCH_SCORERS = {"ar": _ar_batch, "a3": _a3_batch}


# -- requests -------------------------------------------------------------------------------------


def _batches(order: list[int], lengths: list[int], size: int, same_length: bool):
    """Consecutive runs of at most `size` window indices (longest first); one length per run
    when `same_length`."""
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == size or (same_length and lengths[index] != lengths[batch[0]])):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


@torch.no_grad()
def score_requests(
    lm,
    requests: Sequence[Request],
    batch_size: int = 16,
    mc_samples: int | None = None,
    stride: int | None = None,
    order: str | None = None,
    group_size: int | None = None,
    progress: bool = False,
    desc: str = "score",
    window: int | None = None,
    terms: dict[str, float] | None = None,
) -> list[Score]:
    """Σ log p(continuation | context) of each request (module docstring: windows, families).

    `mc_samples`: Monte Carlo draws per window for diffusion bounds; `stride`: chunk size
    (sliding window); `order` / `group_size`: the A3 factorisation (default the model's
    `a3.eval_order` / `a3.eval_group_size`); `window`: tokens per window with BOS (default
    `data.seq_len`); `terms`: a dict that receives Σ nats of each term of a diffusion bound over
    the windows scored whole (`LanguageModel.nelbo_terms`)."""
    if batch_size < 1:
        raise HdlmError(f"the batch size must be at least 1, not {batch_size}")
    options = {
        "mc_samples": mc_samples,
        "order": order or lm.config.a3.eval_order,
        "group_size": group_size or lm.config.a3.eval_group_size,
        "terms": terms,
    }
    if options["order"] not in ("left-to-right", "random"):
        raise HdlmError(f"unknown A3 scoring order '{options['order']}': left-to-right or random")
    width = (window or lm.config.data.seq_len) - 1
    flat = [
        (r, ids, scored)
        for r, (context, continuation) in enumerate(requests)
        for ids, scored in windows(context, continuation, width, stride)
    ]
    lengths = [len(ids) for _, ids, _ in flat]
    by_length = sorted(range(len(flat)), key=lambda i: -lengths[i])
    scorer = BATCH_SCORERS.get(lm.family.objective, _diffusion_batch)
    runs = list(_batches(by_length, lengths, batch_size, scorer is _diffusion_batch))
    logprob, greedy = [0.0] * len(requests), [True] * len(requests)
    for run in tqdm(runs, desc=desc, disable=not progress):
        tokens, real = _pad([flat[i][1] for i in run], lm.tokenizer.bos_id)
        scored = _scored_mask(real, [flat[i][2] for i in run])
        options["real"] = real.to(lm.device)
        values, hits = scorer(lm, tokens.to(lm.device), scored.to(lm.device), options)
        for i, value, hit in zip(run, values.tolist(), hits.tolist(), strict=True):
            logprob[flat[i][0]] += value
            greedy[flat[i][0]] &= hit
    return [
        Score(logprob[r], greedy[r], len(continuation))
        for r, (_, continuation) in enumerate(requests)
    ]


def score_choices(
    lm, context: str, choices: Sequence[str], batch_size: int = 16, **options
) -> list[ChoiceScore]:
    """log p(choice | context) for each choice, batched across choices (`score_requests`
    options: `mc_samples`, `stride`, `order`, `group_size`). The ids follow lm-evaluation-
    harness (`encode_pair`), so the numbers match its multiple-choice scoring."""
    if not choices:
        raise HdlmError("score_choices needs at least one choice")
    requests = [encode_pair(lm.tokenizer, context, choice) for choice in choices]
    scores = score_requests(lm, requests, batch_size, **options)
    out = []
    for choice, (_, ids), score in zip(choices, requests, scores, strict=True):
        n_bytes = max(len(choice.encode()), 1)
        per_token = score.logprob / max(len(ids), 1)
        out.append(
            ChoiceScore(choice, score.logprob, len(ids), per_token, score.logprob / n_bytes,
                        score.is_greedy)
        )  # fmt: skip
    return out


# -- per-token log-probabilities (the OpenAI API's `logprobs`, `hdlm serve`) ----------------------


@dataclass(frozen=True)
class TokenScores:
    """log p of every token of a sequence given the tokens before it (after BOS): exact for ar
    and a3 (left to right, one token per group), a lower bound (-NELBO of the token given the
    tokens before it) for diffusion families with a conditional bound; `top` holds the k most
    likely tokens at each position (exact families only, else None)."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]] | None
    bound: bool


@torch.no_grad()
def token_scores(lm, ids: Sequence[int], top: int = 0) -> TokenScores:
    """`TokenScores` of `ids` (no BOS; at most `model.max_len` - 1 tokens for ar and a3)."""
    if not is_exact(lm):
        if not conditional_support(lm):
            raise HdlmError(
                f"family '{lm.config.family}' has no per-token likelihood or bound (ar, a3, and "
                "mdlm / eps-hybrid with diffusion.time=count do)"
            )
        requests = [(list(ids[:i]), [ids[i]]) for i in range(len(ids))]
        return TokenScores([s.logprob for s in score_requests(lm, requests)], None, bound=True)
    tokens = torch.tensor([[lm.tokenizer.bos_id, *ids]], device=lm.device)
    if lm.family.is_a3:  # one position per group, left to right: the AR factorisation
        groups = torch.arange(tokens.shape[1], device=lm.device)[None]
        logits = lm.net.two_stream(**a3.stream_inputs(tokens, groups, lm.tokenizer.mask_id))
    else:
        logits = lm.net(tokens[:, :-1], causal=True)
    log_probs = clean_log_probs(logits[0], lm.tokenizer.mask_id)  # [len(ids), V]
    picked = log_probs.gather(-1, tokens[0, 1:, None])[:, 0].tolist()
    if not top:
        return TokenScores(picked, None, bound=False)
    best = log_probs.topk(top, dim=-1)
    indices, values = best.indices.tolist(), best.values.tolist()
    pairs = [list(zip(i, v, strict=True)) for i, v in zip(indices, values, strict=True)]
    return TokenScores(picked, pairs, bound=False)
