"""Ground truth (issue 20): exact likelihoods of the synthetic sources and the true-nll metric."""

import itertools
import math

import numpy as np
import pytest

from hdlm.config import DataConfig, HmmConfig, SyntheticConfig, TokenizerConfig
from hdlm.data import SyntheticMarkov, corpus_source, load_documents, packed_stream
from hdlm.data.sources import HiddenMarkov, PackedStream
from hdlm.data.tokenizer import build_tokenizer
from hdlm.errors import HdlmError
from hdlm.eval.truth import symbol_of_token, true_nll

TINY = HiddenMarkov.random(n_hidden=2, n_symbols=3, stay=0.8, concentration=1.0, seed=0)


def enumerate_windows(stream: PackedStream, length: int):
    """Every token window of `length` (symbols and EOS) with its exact log-probability."""
    windows = np.array(list(itertools.product(range(stream.eos + 1), repeat=length)))
    return windows, stream.log_likelihood(windows)


@pytest.mark.parametrize("doc_len,window,noise", [(3, 5, 0), (4, 5, 0), (2, 3, 0), (2, 3, 0.1)])
def test_packed_stream_is_a_distribution_matching_its_sampler(doc_len, window, noise):
    stream = PackedStream(TINY, doc_len, window, noise)
    windows, log_p = enumerate_windows(stream, window)
    p = np.exp(log_p)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    # the sampler's empirical window frequencies agree with the exact probabilities
    drawn = stream.sample_windows(20000, seed=3)
    index = {tuple(w): i for i, w in enumerate(windows)}
    counts = np.bincount([index[tuple(w)] for w in drawn], minlength=len(windows))
    assert 0.5 * np.abs(counts / counts.sum() - p).sum() < 0.05
    assert counts[p == 0].sum() == 0
    assert (p > 0).all() == (noise > 0)  # the noisy stream emits every window


def test_window_entropy_estimate_matches_enumeration():
    stream = PackedStream(TINY, 3, 5)
    _, log_p = enumerate_windows(stream, 5)
    p = np.exp(log_p)
    exact = -(p[p > 0] * log_p[p > 0]).sum() / 5
    estimate, stderr = stream.window_entropy(8192, seed=5)
    assert abs(estimate - exact) < 4 * stderr


def test_a_markov_chain_is_an_hmm_with_identity_emissions():
    chain = SyntheticMarkov(6, 0.5, seed=1)
    source = HiddenMarkov(chain.transition, np.eye(6))
    states = chain.sample(4, 50, seed=2)
    pi, P = chain.stationary(), chain.transition
    direct = np.log(pi[states[:, 0]]) + np.log(P[states[:, :-1], states[:, 1:]]).sum(-1)
    np.testing.assert_allclose(source.log_likelihood(states), direct, rtol=1e-10)
    rate, stderr = source.entropy_rate(length=2000, n=16)
    assert abs(rate - chain.entropy_rate()) < 4 * stderr


def test_impossible_tokens_have_probability_zero():
    stream = PackedStream(TINY, 3, 4)
    rows = np.array([[0, 1, 2, 3], [0, -1, 1, 1], [3, 3, 0, 0]])  # EOS twice in a row: impossible
    log_p = stream.log_likelihood(rows)
    assert np.isfinite(log_p[0]) and np.isneginf(log_p[1]) and np.isneginf(log_p[2])


HMM = DataConfig(
    corpus="hmm", seq_len=17,
    hmm=HmmConfig(n_hidden=3, n_symbols=5, stay=0.9, concentration=0.5, n_docs=20, doc_len=7),
    tokenizer=TokenizerConfig(kind="char"),
)  # fmt: skip


def char_tokenizer(cfg: DataConfig):
    return build_tokenizer(cfg.tokenizer, load_documents(cfg))


def test_the_source_itself_scores_its_entropy_within_sampling_error():
    tokenizer = char_tokenizer(HMM)
    stream = packed_stream(HMM)
    table = symbol_of_token(tokenizer, stream.source.n_symbols)
    token_of = {s: t for t, s in enumerate(table) if s >= 0}
    windows = stream.sample_windows(2000, seed=11)
    rows = np.vectorize(token_of.get)(windows).tolist()
    result = true_nll(HMM, tokenizer, rows)
    spread = math.hypot(result["true_nll_stderr"], result["true_window_entropy_stderr"])
    assert result["true_impossible_fraction"] == 0
    assert abs(result["true_nll_gap"]) < 4 * spread
    # the δ-noisy source scores its own noisy windows at its entropy too
    noisy = PackedStream(stream.source, stream.doc_len, stream.window, 0.05)
    windows = noisy.sample_windows(2000, seed=12)
    per_token = -noisy.log_likelihood(windows) / windows.shape[1]
    entropy, stderr = noisy.window_entropy(4096, seed=13)
    assert abs(per_token.mean() - entropy) < 4 * math.hypot(stderr, per_token.std() / 2000**0.5)
    # EOS tokens carry (almost) no information, so a token carries less than a symbol
    assert result["true_window_entropy"] < result["true_source_entropy_rate_per_symbol"]


def test_true_nll_flags_impossible_samples_and_refuses_unknown_sources():
    tokenizer = char_tokenizer(HMM)
    eos, docs = [tokenizer.eos_id], load_documents(HMM)
    two_docs = tokenizer.encode(docs[0]) + eos + tokenizer.encode(docs[1]) + eos
    rows = [[tokenizer.mask_id] * 16, two_docs]
    result = true_nll(HMM, tokenizer, rows)
    assert result["true_impossible_fraction"] == 0.5 and math.isfinite(result["true_nll_per_token"])
    assert result["true_noisy_impossible_fraction"] == 0.5  # MASK is never a stream symbol
    misplaced = [two_docs[1:] + two_docs[:1]]  # EOS out of place: impossible, but not when noisy
    result = true_nll(HMM, tokenizer, misplaced)
    assert result["true_impossible_fraction"] == 1 and result["true_noisy_impossible_fraction"] == 0
    with pytest.raises(HdlmError, match="synthetic corpus"):
        true_nll(DataConfig(corpus="pydocs"), tokenizer, rows)
    with pytest.raises(HdlmError, match="data.seq_len"):
        true_nll(HMM, tokenizer, [[0] * 17])


def test_synthetic_corpus_source_is_its_markov_chain():
    cfg = DataConfig(corpus="synthetic", synthetic=SyntheticConfig(n_states=4, doc_len=9))
    source, doc_len = corpus_source(cfg)
    chain = SyntheticMarkov(4, cfg.synthetic.concentration, cfg.synthetic.seed)
    assert doc_len == 9 and np.allclose(source.transition, chain.transition)


def test_hmm_likelihood_agrees_with_the_packed_stream_of_one_document():
    docs = TINY.sample(5, 6, seed=4)
    stream = PackedStream(TINY, doc_len=6, window=7)  # windows always start a document
    np.testing.assert_allclose(TINY.log_likelihood(docs), stream.log_likelihood(docs), rtol=1e-10)
