"""Zero-shot perplexity: score all of a file, a folder or a dataset split that the model was not
trained on, under an explicit protocol (docs/metrics.md).

The documents are joined into one stream doc0 EOS doc1 EOS ... (as training packs them) and
every token of it is scored once, in windows of the model's block length L = `data.seq_len`:

* `blocks` (the papers' protocol: MDLM, HDLM): consecutive blocks of L - 1 tokens, each after a
  BOS, no overlap, the last (shorter) block scored too — every family;
* `sliding` (`stride` S < L - 1): chunks of S tokens, each after BOS and the L - 1 - S tokens
  before it — families with a conditional likelihood (ar and a3 exactly, mdlm / eps-hybrid as a
  bound; `scoring.conditional_support`).

Diffusion families report an upper bound on the perplexity, from `mc_samples` stratified draws
of the noise level per window (default `diffusion.eval_steps`; HDLM's official evaluation uses
96 low-discrepancy draws per chunk: `--mc-samples 96`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hdlm.config import DataConfig
from hdlm.data.corpora import prepared_store
from hdlm.data.readers import (
    describe_source,
    iter_documents,
    looks_like_path,
)
from hdlm.data.store import StoreSettings, TokenStore
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import DataError, HdlmError
from hdlm.eval.scoring import conditional_support, is_exact, score_requests

BUILT_IN = ("pydocs", "synthetic")
SEGMENT_WINDOWS = 4096  # windows scored at a time: bounds memory, not the result


def is_local_or_built_in(corpus: str) -> bool:
    """Whether `corpus` is read by `data.load_documents` as it is (no dataset splits)."""
    return corpus in BUILT_IN or Path(corpus).expanduser().exists() or looks_like_path(corpus)


def zero_shot_documents(cfg: DataConfig, split: str | None = None) -> Iterator[str]:
    """The documents of `cfg.corpus`, all of them, streamed: a file (read whole as one text
    document whatever its suffix; .json/.jsonl/.parquet: one record per document, text in
    `data.text_field`), a folder, a built-in corpus, or the split `split` (default test) of a
    Hugging Face dataset."""
    if is_local_or_built_in(cfg.corpus):
        if split is not None:
            raise DataError(
                f"--split {split}: '{cfg.corpus}' is scored whole (splits belong to Hugging Face "
                "datasets); drop --split, or add --hash-split for the hash-assigned splits"
            )
        return iter_documents(cfg)
    return iter_documents(cfg, hub_split=split or "test")


def read_documents(cfg: DataConfig, split: str | None = None) -> list[str]:
    """`zero_shot_documents` in memory (small sets)."""
    docs = list(zero_shot_documents(cfg, split))
    if not docs:
        raise DataError(f"'{cfg.corpus}' holds no non-empty document to score")
    return docs


def zero_shot_store(
    cfg: DataConfig, split: str | None, tokenizer: Tokenizer, progress: bool = True
) -> TokenStore:
    """The documents of `zero_shot_documents` tokenised into a token store with one split,
    `train`, holding all of them in order (cached in `data.cache_dir/stores` like any store)."""
    source = describe_source(cfg) | {"zero_shot_split": split}
    settings = StoreSettings(source, 0.0, 0.0, cfg.shard_chars, cfg.max_tokens)
    store = prepared_store(cfg, settings, zero_shot_documents(cfg, split), tokenizer, progress)
    if store.documents("train") == 0:
        raise DataError(f"'{cfg.corpus}' holds no non-empty document to score")
    return store


def token_stream(documents: list[str], tokenizer) -> list[int]:
    """doc0 EOS doc1 EOS ...: the ids every protocol scores."""
    eos = tokenizer.eos_id
    return [i for ids in tokenizer.encode_batch(documents) for i in (*ids, eos)]


def protocol(lm, seq_len: int, stride: int | None, mc_samples: int | None) -> dict:
    """What `zero_shot_perplexity` does, as reported in its JSON."""
    width = seq_len - 1
    stride = width if stride is None else stride
    if not 1 <= stride <= width:
        raise HdlmError(f"--stride {stride} must be between 1 and the block length - 1 ({width})")
    if stride < width and not conditional_support(lm):
        raise HdlmError(
            f"a sliding window needs a conditional likelihood; family '{lm.config.family}' "
            "scores fixed blocks only (drop --stride)"
        )
    diffusion = not is_exact(lm)
    samples = lm.config.diffusion.eval_steps if mc_samples is None else mc_samples
    if diffusion and samples < 1:
        raise HdlmError(f"--mc-samples {samples}: the number of Monte Carlo samples must be >= 1")
    samples = samples if diffusion else None
    return {
        "name": "blocks" if stride == width else "sliding",
        "window": seq_len,
        "stride": stride,
        "context_tokens": width - stride,
        "bos_per_window": True,
        "documents_joined_by": "EOS",
        "mc_samples": samples,
        "noise_draws": "stratified, draw k in [k/n, (k+1)/n)" if diffusion else None,
    }


def zero_shot_perplexity(
    lm,
    documents: list[str] | TokenStore,
    seq_len: int | None = None,
    stride: int | None = None,
    mc_samples: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    max_windows: int | None = None,
) -> dict:
    """Perplexity of all of `documents` (texts, or the `train` split of a token store:
    `zero_shot_store`) under `lm` (module docstring: protocols), or of the first `max_windows`
    windows' tokens. The stream is scored in segments of SEGMENT_WINDOWS windows, each with the
    context its first window needs, so memory does not grow with the stream.

    perplexity = exp(-Σ_windows log p(chunk | window context) / tokens), exact for ar / a3,
    an upper bound (-log p replaced by the NELBO) for diffusion families, whose terms per token
    (`nelbo_terms_per_token`, as the split evaluation reports them) come with the `blocks`
    protocol."""
    seq_len = seq_len or lm.config.data.seq_len
    if not 2 <= seq_len <= lm.config.model.max_len:
        raise HdlmError(
            f"data.seq_len={seq_len} must lie between 2 and the model's context "
            f"({lm.config.model.max_len})"
        )
    settings = protocol(lm, seq_len, stride, mc_samples)
    if isinstance(documents, TokenStore):
        count, stream = documents.documents("train"), documents.stream("train")
        read = stream.read
    else:
        count, stream = len(documents), np.asarray(token_stream(documents, lm.tokenizer))
        read = lambda start, stop: stream[start:stop]  # noqa: E731
    stride, context = settings["stride"], settings["context_tokens"]
    tokens = len(stream) if max_windows is None else min(len(stream), max_windows * stride)
    logprob, segment, terms = 0.0, SEGMENT_WINDOWS * stride, {}
    whole_windows = settings["name"] == "blocks"  # every window scored whole: terms add up
    starts = range(0, tokens, segment)
    for start in tqdm(starts, desc="zero-shot", disable=not progress or len(starts) < 2):
        before = read(max(0, start - context), start).tolist()
        [score] = score_requests(
            lm, [(before, read(start, min(start + segment, tokens)).tolist())], batch_size,
            settings["mc_samples"], stride, progress=progress and len(starts) < 2,
            desc="zero-shot", window=seq_len, terms=terms if whole_windows else None,
        )  # fmt: skip
        logprob += score.logprob
    nats = -logprob / tokens
    exact = is_exact(lm)
    result = {
        "protocol": settings,
        "documents": count,
        "tokens": tokens,
        "windows": -(-tokens // stride),
        "nelbo_per_token": nats,
    }
    if exact or terms:  # a sliding window's conditional bound has no per-term split
        terms = {"nll": -logprob} if exact else terms
        result["nelbo_terms_per_token"] = {k: v / tokens for k, v in terms.items()}
    return result | {
        "bits_per_token": nats / math.log(2),
        "perplexity": math.exp(nats),
        "kind": "exact" if exact else "upper bound",
    }
