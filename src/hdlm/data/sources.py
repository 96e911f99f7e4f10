"""Synthetic sources with exact likelihoods: the ground truth that judges samples (issue 20).

A `HiddenMarkov` source emits symbols from a hidden Markov chain: hidden state h_1 ~ π0, then
h_{k+1} ~ A[h_k], and symbol x_k ~ B[h_k]. The `synthetic` corpus' Markov chain is the special
case B = I (each hidden state emits its own symbol), the `hmm` corpus a chain of a few sticky
hidden states over a larger alphabet: each symbol alone says little about the hidden state, so
a sampler that decodes many positions at once from their marginals mixes incompatible regimes.

A corpus is documents of `doc_len` symbols, each started afresh from π0 and followed by EOS,
concatenated and cut into windows of W = seq_len - 1 tokens (`data.pack_blocks`). `PackedStream`
is that token stream as a hidden Markov model of its own, over (phase in the document, hidden
state), so the forward algorithm gives the exact probability of any window of token symbols,
a window's start phase being distributed as the packed blocks' are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hdlm.errors import DataError

IMPOSSIBLE = -1
"""The symbol index of a token no source emits (BOS, MASK, an id of no symbol): probability 0."""


def stationary(transition: np.ndarray) -> np.ndarray:
    """The distribution π with π P = π and Σ_i π_i = 1."""
    n = len(transition)
    system = np.vstack([transition.T - np.eye(n), np.ones(n)])
    pi = np.linalg.lstsq(system, np.append(np.zeros(n), 1.0), rcond=None)[0].clip(min=0)
    return pi / pi.sum()


def draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first index k with u < cdf[k] (clamped against rounding of cdf[-1])."""
    return np.minimum((cdf <= u[:, None]).sum(-1), cdf.shape[-1] - 1)


SYMBOLS_START, MAX_SYMBOLS = 0x4E00, 20992  # synthetic symbols: the CJK Unified Ideographs


def synthetic_alphabet(n_symbols: int) -> str:
    """Symbol k is the printable character chr(0x4E00 + k), one token under kind=char."""
    return "".join(chr(SYMBOLS_START + k) for k in range(n_symbols))


def entropy(p: np.ndarray) -> np.ndarray:
    """-Σ_j p_j log p_j along the last axis, with 0 log 0 = 0."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


class SyntheticMarkov:
    """A Markov chain over `n_states` symbols (the `synthetic` corpus): row i of the transition
    matrix P is drawn from a symmetric Dirichlet(concentration) (small: peaked rows, low
    entropy). As a source it is `HiddenMarkov(P, I)` (`as_hidden_markov`); it keeps its own
    sampler, whose draws define the corpus' documents, and its exact entropies."""

    def __init__(self, n_states: int, concentration: float, seed: int):
        if not 1 <= n_states <= MAX_SYMBOLS:
            raise DataError(f"data.synthetic.n_states={n_states} must lie in [1, {MAX_SYMBOLS}]")
        if concentration <= 0:
            raise DataError(f"data.synthetic.concentration={concentration} must be positive")
        alpha = np.full(n_states, concentration)
        self.transition = np.random.default_rng(seed).dirichlet(alpha, size=n_states)

    def stationary(self) -> np.ndarray:
        return stationary(self.transition)

    def as_hidden_markov(self) -> HiddenMarkov:
        return HiddenMarkov(self.transition, np.eye(len(self.transition)))

    def entropy_rate(self) -> float:
        """H = -Σ_i π_i Σ_j P_ij log P_ij, in nats per symbol."""
        return float(self.stationary() @ entropy(self.transition))

    def sequence_entropy(self, n: int) -> float:
        """Entropy in nats of X_1..X_n with X_1 ~ π: H(π) + (n - 1) H."""
        return float(entropy(self.stationary()) + (n - 1) * self.entropy_rate())

    def sample(self, n_docs: int, doc_len: int, seed: int) -> np.ndarray:
        """States [n_docs, doc_len], each row started from π, drawn by inverse-CDF sampling."""
        rng = np.random.default_rng(seed)
        uniforms = rng.random((n_docs, doc_len))
        cdf = np.cumsum(self.transition, axis=1)
        states = np.empty((n_docs, doc_len), dtype=np.int64)
        states[:, 0] = draw(np.cumsum(self.stationary())[None], uniforms[:, 0])
        for t in range(1, doc_len):
            states[:, t] = draw(cdf[states[:, t - 1]], uniforms[:, t])
        return states


def markov_chain(cfg) -> SyntheticMarkov:
    """The chain of a `SyntheticConfig` (data.synthetic)."""
    return SyntheticMarkov(cfg.n_states, cfg.concentration, cfg.seed)


@dataclass(frozen=True)
class HiddenMarkov:
    """x_k ~ emission[h_k], h_{k+1} ~ transition[h_k], h_1 ~ initial (the stationary law)."""

    transition: np.ndarray  # [H, H], rows sum to 1
    emission: np.ndarray  # [H, S], rows sum to 1

    @staticmethod
    def random(
        n_hidden: int, n_symbols: int, stay: float, concentration: float, seed: int
    ) -> HiddenMarkov:
        """A seeded random source: the hidden state stays with probability `stay`, else jumps
        to a uniform other state; emission rows ~ Dirichlet(concentration) over the symbols."""
        if n_hidden < 1 or n_symbols < 1:
            raise DataError(f"an HMM needs n_hidden ({n_hidden}) and n_symbols ({n_symbols}) >= 1")
        if not 0 <= stay <= 1 or concentration <= 0:
            raise DataError(f"data.hmm.stay={stay} must lie in [0, 1] and concentration > 0")
        rng = np.random.default_rng(seed)
        jump = (1 - stay) / max(n_hidden - 1, 1)
        transition = np.full((n_hidden, n_hidden), jump)
        np.fill_diagonal(transition, stay if n_hidden > 1 else 1.0)
        emission = rng.dirichlet(np.full(n_symbols, concentration), size=n_hidden)
        return HiddenMarkov(transition, emission)

    @property
    def n_symbols(self) -> int:
        return self.emission.shape[1]

    @cached_property
    def initial(self) -> np.ndarray:
        return stationary(self.transition)

    def sample(self, n_docs: int, doc_len: int, seed: int) -> np.ndarray:
        """Symbols [n_docs, doc_len], each row's hidden chain started from `initial`."""
        rng = np.random.default_rng(seed)
        hidden = np.empty((n_docs, doc_len), dtype=np.int64)
        hidden[:, 0] = draw(np.cumsum(self.initial)[None], rng.random(n_docs))
        step_cdf = np.cumsum(self.transition, axis=1)
        for k in range(1, doc_len):
            hidden[:, k] = draw(step_cdf[hidden[:, k - 1]], rng.random(n_docs))
        emit_cdf = np.cumsum(self.emission, axis=1)
        flat = draw(emit_cdf[hidden.ravel()], rng.random(hidden.size))
        return flat.reshape(n_docs, doc_len)

    def log_likelihood(self, symbols: np.ndarray) -> np.ndarray:
        """log p(x_1..x_n) per row of `symbols` [N, n] (IMPOSSIBLE entries: -inf), by the
        scaled forward algorithm α_k(h) ∝ p(x_1..x_k, h_k = h)."""
        emitted = symbols >= 0
        weights = self.emission.T[np.where(emitted, symbols, 0)] * emitted[..., None]  # [N, n, H]
        law = np.broadcast_to(self.initial, weights[:, 0].shape)
        total = np.zeros(len(symbols))
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(symbols.shape[1]):
                law = (law @ self.transition if k else law) * weights[:, k]
                mass = law.sum(-1)
                total += np.log(mass)
                law = law / np.where(mass > 0, mass, 1.0)[:, None]
        return total

    def entropy_rate(self, length: int = 4096, n: int = 16, seed: int = 0) -> tuple[float, float]:
        """Monte Carlo estimate of the entropy rate lim H(X_1..X_n) / n in nats per symbol, and
        its standard error: the mean over `n` independent sequences of -log p(x_1..x_length) /
        length. Its bias is H(X_1..X_length) / length - rate = O(1 / length) (exactly 0 for a
        Markov chain started from π: `SyntheticMarkov.entropy_rate`)."""
        per_symbol = -self.log_likelihood(self.sample(n, length, seed)) / length
        return float(per_symbol.mean()), float(per_symbol.std(ddof=1) / math.sqrt(n))


@dataclass(frozen=True)
class PackedStream:
    """The token stream doc EOS doc EOS ... of `source` (documents of `doc_len` symbols) read in
    windows of `window` tokens starting at offsets 0, W, 2W, ... (`data.pack_blocks`).

    Symbols 0..S-1 are the source's, S is EOS. The stream is a hidden Markov model over states
    (phase k in 0..doc_len, hidden h): phase k < doc_len emits from B[h], phase doc_len emits EOS,
    and after it a new document starts at phase 0 with h ~ π0. Window j starts at phase
    j W mod (doc_len + 1): over many windows, uniform on the multiples of g = gcd(W, doc_len + 1).

    `noise` δ > 0 makes it the δ-noisy stream: each token is replaced, independently, by a
    uniform one of the S + 1 stream symbols with probability δ (emissions (1 - δ) e + δ u, the
    same hidden chain), so every window of stream symbols has a finite likelihood.
    """

    source: HiddenMarkov
    doc_len: int
    window: int
    noise: float = 0.0

    @property
    def eos(self) -> int:
        return self.source.n_symbols

    def start_phases(self) -> np.ndarray:
        """P(window starts at phase k), k = 0..doc_len."""
        period = self.doc_len + 1
        phases = np.zeros(period)
        phases[:: math.gcd(self.window, period)] = 1.0
        return phases / phases.sum()

    def start(self) -> np.ndarray:
        """The joint law of (phase, hidden) at a window's first token, [doc_len + 1, H] (the
        EOS phase keeps its mass in column 0)."""
        src, phases = self.source, self.start_phases()
        law = np.zeros((self.doc_len + 1, len(src.initial)))
        marginal = src.initial.copy()
        for k in range(self.doc_len):
            law[k] = phases[k] * marginal
            marginal = marginal @ src.transition
        law[self.doc_len, 0] = phases[self.doc_len]
        return law

    def emit(self, law: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """law [N, doc_len + 1, H] times p(x | phase, hidden) for each row's symbol [N]."""
        emitted = (symbols >= 0) & (symbols < self.eos)
        weights = self.source.emission.T[np.where(emitted, symbols, 0)] * emitted[:, None]
        end = (symbols == self.eos).astype(float)
        if self.noise:  # a stream symbol (not BOS, MASK...) is possible anywhere
            floor = self.noise / (self.eos + 1) * (symbols >= 0)
            weights = (1 - self.noise) * weights + floor[:, None]
            end = (1 - self.noise) * end + floor
        out = law.copy()
        out[:, : self.doc_len] *= weights[:, None, :]
        out[:, self.doc_len] *= end[:, None]
        return out

    def advance(self, law: np.ndarray) -> np.ndarray:
        """One step of the stream's hidden chain: phase k -> k + 1 with h -> A[h]; phase
        doc_len - 1 -> EOS; EOS -> phase 0 with h ~ π0."""
        out = np.zeros_like(law)
        out[:, 1 : self.doc_len] = law[:, : self.doc_len - 1] @ self.source.transition
        out[:, self.doc_len, 0] = law[:, self.doc_len - 1].sum(-1)
        out[:, 0] = law[:, self.doc_len, :1] * self.source.initial[None]
        return out

    def log_likelihood(self, symbols: np.ndarray) -> np.ndarray:
        """Exact log p(window) per row of `symbols` [N, n] (n <= window; -inf when impossible),
        by the forward algorithm with per-step normalisation."""
        n_rows, length = symbols.shape
        law = np.broadcast_to(self.start(), (n_rows, *self.start().shape))
        total = np.zeros(n_rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(length):
                if k:
                    law = self.advance(law)
                law = self.emit(law, symbols[:, k])
                mass = law.sum(axis=(1, 2))
                total += np.log(mass)
                law = law / np.where(mass > 0, mass, 1.0)[:, None, None]
        return total

    def sample_windows(self, n: int, seed: int) -> np.ndarray:
        """`n` windows [n, window] of a freshly drawn packed stream (EOS = S)."""
        per_window = -(-n * self.window // (self.doc_len + 1)) + 1
        docs = self.source.sample(per_window, self.doc_len, seed)
        stream = np.concatenate([docs, np.full((per_window, 1), self.eos)], axis=1).ravel()
        windows = stream[: n * self.window].reshape(n, self.window)
        if self.noise:
            rng = np.random.default_rng([seed, 1])
            hit = rng.random(windows.shape) < self.noise
            windows = np.where(hit, rng.integers(0, self.eos + 1, windows.shape), windows)
        return windows

    def window_entropy(
        self, n: int = 2048, seed: int = 1, length: int | None = None
    ) -> tuple[float, float]:
        """Monte Carlo estimate of H(w) / |w| in nats per token for the first `length` tokens
        w of a window (default: all), and its standard error: the mean of -log p(w) / |w| over
        `n` windows of a fresh stream. Windows of one stream are nearly independent (they share
        at most one document's hidden chain)."""
        length = length or self.window
        per_token = -self.log_likelihood(self.sample_windows(n, seed)[:, :length]) / length
        return float(per_token.mean()), float(per_token.std(ddof=1) / math.sqrt(n))
