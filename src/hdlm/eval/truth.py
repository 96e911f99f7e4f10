"""The `true-nll` metric: samples judged by the exact likelihood of the source of a synthetic
corpus (`synthetic`, `hmm`), the perfect generative-perplexity judge (issue 20, docs/metrics.md).

A sample of a model trained on blocks of data.seq_len tokens is read as a window of the packed
token stream (`sources.PackedStream`): its tokens after BOS are mapped to the source's symbols
(EOS to the stream's EOS, any other id is impossible) and scored by the forward algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hdlm.data import SYNTHETIC_CORPORA, packed_stream, synthetic_alphabet
from hdlm.data.sources import IMPOSSIBLE, PackedStream
from hdlm.errors import HdlmError

WINDOW_ENTROPY_SAMPLES = 4096  # fresh windows whose mean NLL estimates H(window) / window
NOISE = 0.01  # δ of the δ-noisy source that also scores samples the source cannot emit


def symbol_of_token(tokenizer, n_symbols: int) -> np.ndarray:
    """[vocab_size]: the stream symbol of each token id (symbols 0..S-1, EOS = S), IMPOSSIBLE
    for the others. Every symbol must be one token (data.tokenizer.kind=char)."""
    table = np.full(tokenizer.vocab_size, IMPOSSIBLE, dtype=np.int64)
    for k, char in enumerate(synthetic_alphabet(n_symbols)):
        ids = tokenizer.encode(char)
        if len(ids) != 1:
            raise HdlmError(
                "true-nll needs one token per source symbol; train with data.tokenizer.kind=char"
            )
        table[ids[0]] = k
    table[tokenizer.eos_id] = n_symbols
    return table


def window_reference(stream: PackedStream, length: int, seed: int = 12345) -> dict:
    """What a perfect sampler scores: the entropy per token of a window's first `length`
    tokens, by Monte Carlo."""
    mean, stderr = stream.window_entropy(WINDOW_ENTROPY_SAMPLES, seed, length)
    return {"true_window_entropy": mean, "true_window_entropy_stderr": stderr}


def true_nll(data_config, tokenizer, rows: Sequence[Sequence[int]]) -> dict:
    """Exact NLL per token of sampled token `rows` (BOS removed) under the corpus' source.

    Reports the mean NLL per token over samples whose every token the source can emit, its
    standard error across samples, the share of samples with an impossible token (NLL = ∞,
    left out of the mean), the window entropy per token of the source (the NLL a perfect
    sampler scores in expectation) and the gap between the two; and the same under the
    δ-noisy source (`true_noisy_*`, δ = NOISE), where only BOS or MASK inside a sample is
    impossible, so every sample counts and a misplaced EOS costs about log((S + 1) / δ)."""
    if data_config.corpus not in SYNTHETIC_CORPORA:
        raise HdlmError(
            f"true-nll needs a model trained on a synthetic corpus ({', '.join(SYNTHETIC_CORPORA)}"
            f"); this one was trained on '{data_config.corpus}'"
        )
    stream = packed_stream(data_config)
    lengths = set(map(len, rows))
    if len(lengths) != 1 or not 1 <= lengths.pop() <= stream.window:
        raise HdlmError(
            f"true-nll scores samples of one length in 2..data.seq_len={stream.window + 1} "
            "tokens (BOS included); set --length accordingly"
        )
    symbols = symbol_of_token(tokenizer, stream.source.n_symbols)[np.asarray(rows)]
    exact = score(stream, symbols, "true")
    noisy = PackedStream(stream.source, stream.doc_len, stream.window, NOISE)
    return {
        **exact,
        **score(noisy, symbols, "true_noisy"),
        "true_noise": NOISE,
        "true_source_entropy_rate_per_symbol": stream.source.entropy_rate()[0],
    }


def score(stream: PackedStream, symbols: np.ndarray, prefix: str) -> dict:
    """NLL per token of `symbols` [n, length] under `stream` (mean and standard error over the
    samples of finite NLL, the share of infinite ones), its window entropy and the gap."""
    per_token = -stream.log_likelihood(symbols) / symbols.shape[1]
    finite = np.isfinite(per_token)
    valid = per_token[finite]
    reference = window_reference(stream, symbols.shape[1])
    mean = float(valid.mean()) if len(valid) else math.inf
    stderr = float(valid.std(ddof=1) / math.sqrt(len(valid))) if len(valid) > 1 else math.nan
    return {
        f"{prefix}_nll_per_token": mean,
        f"{prefix}_nll_stderr": stderr,
        f"{prefix}_impossible_fraction": float(1 - finite.mean()),
        f"{prefix}_window_entropy": reference["true_window_entropy"],
        f"{prefix}_window_entropy_stderr": reference["true_window_entropy_stderr"],
        f"{prefix}_nll_gap": mean - reference["true_window_entropy"],
    }
