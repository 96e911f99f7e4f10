"""Corpora as training data: split, tokenised into a token store once, packed into blocks,
batched.

    documents (`readers`) --split by content hash (`splits`)--> --tokenize--> token store
    (`store`: doc0 EOS doc1 EOS ... per split, on disk) --blocks of BOS + seq_len-1 tokens-->
    `Batches` (a seeded order, a pure function of the step)

`prepare_data` finds the store of a corpus and tokenizer in `data.cache_dir` (or `data.store`),
preparing it first when there is none, so a small corpus stays one command; memory does not grow
with the corpus. Corpora: `pydocs` (the Python documentation's prose, offline), `synthetic` (a
random Markov chain whose entropy is known exactly), `hmm` (a hidden Markov source with exact
likelihoods, `hdlm.data.sources`), local files and folders, or a Hugging Face dataset name.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hdlm.config import DataConfig
from hdlm.data.readers import describe_source, iter_documents
from hdlm.data.sources import (
    HiddenMarkov,
    PackedStream,
    markov_chain,
    synthetic_alphabet,
)
from hdlm.data.splits import SPLITS, TRAIN, assign_splits, content_hash, digest, fill_empty_splits
from hdlm.data.store import StoreBlocks, StoreSettings, TokenStore, prepare_store
from hdlm.data.tokenizer import Tokenizer, build_tokenizer
from hdlm.errors import DataError

SYNTHETIC_CORPORA = ("synthetic", "hmm")  # corpora whose source is known (`corpus_source`)


def load_documents(cfg: DataConfig) -> list[str]:
    """All the non-empty documents of `cfg.corpus` in memory (small corpora, tests, tasks);
    training reads them through a token store instead."""
    return list(iter_documents(cfg))


def corpus_source(cfg: DataConfig) -> tuple[HiddenMarkov, int]:
    """The source of a synthetic corpus and its documents' length in symbols: the Markov chain
    of `synthetic` (an HMM whose hidden state is the symbol), or the HMM of `hmm`."""
    if cfg.corpus == "synthetic":
        return markov_chain(cfg.synthetic).as_hidden_markov(), cfg.synthetic.doc_len
    if cfg.corpus == "hmm":
        h = cfg.hmm
        source = HiddenMarkov.random(h.n_hidden, h.n_symbols, h.stay, h.concentration, h.seed)
        return source, h.doc_len
    raise DataError(
        f"corpus '{cfg.corpus}' has no known source; the true-nll metric needs data.corpus="
        f"{' or '.join(SYNTHETIC_CORPORA)}"
    )


def packed_stream(cfg: DataConfig) -> PackedStream:
    """The token stream of a synthetic corpus as its blocks of data.seq_len cut it."""
    source, doc_len = corpus_source(cfg)
    return PackedStream(source, doc_len, cfg.seq_len - 1)


def pack_blocks(stream: np.ndarray, seq_len: int, bos_id: int) -> torch.Tensor:
    """Blocks [n, seq_len] with n = len(stream) // (seq_len - 1): block i is BOS followed by
    stream[i (seq_len-1) : (i+1) (seq_len-1)]. The tail shorter than seq_len - 1 is dropped."""
    if seq_len < 2:
        raise DataError(f"data.seq_len={seq_len} must be at least 2 (BOS plus one token)")
    body = seq_len - 1
    n = len(stream) // body
    blocks = torch.full((n, seq_len), bos_id, dtype=torch.long)
    blocks[:, 1:] = torch.from_numpy(stream[: n * body].astype(np.int64)).view(n, body)
    return blocks


# ----------------------------------------------------------------------------- the store


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    blocks: dict[str, StoreBlocks]  # train / validation / test -> blocks [n, seq_len], on disk
    entropy_floor: float | None  # synthetic corpus: lower bound on NLL, nats per token
    store: TokenStore


def prepare_data(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    may_prepare: bool = True,
) -> PreparedData:
    """The blocks of each split of `cfg`'s corpus, read from its token store (`open_store`).

    Without `tokenizer`, kinds bpe and char are trained on a sample of the train split (and
    cached); with it, the store must hold that tokenizer's ids.

    entropy_floor (synthetic corpus only): the entropy per token of the validation stream (train
    if there is no validation split), n_docs H(X_1..X_doc_len) / n_tokens; with kind=char that
    is H(X_1..X_doc_len) / (doc_len + 1), as each document is doc_len symbol tokens plus an EOS
    that carries no information. A lossless tokenizer keeps the entropy of the text, so no
    model's mean NLL per predicted token can be lower in expectation. The achievable NLL is
    slightly higher: a block's first token lacks its predecessor, and a model that has not seen
    its document's start cannot know exactly where the EOS falls.
    """
    store = open_store(cfg, tokenizer, progress, may_prepare)
    tokenizer = tokenizer or store.tokenizer
    blocks = {s: store.blocks(s, cfg.seq_len, tokenizer.bos_id) for s in SPLITS}
    fractions = dict(store.index["fractions"])  # a copy: the index stays as the store wrote it
    fractions["train"] = max(0.0, round(1.0 - sum(fractions.values()), 9))  # 0: eval only
    for split in SPLITS:
        if fractions[split] > 0 and len(blocks[split]) == 0:
            raise DataError(
                f"the {split} split of corpus '{cfg.corpus}' has {store.tokens(split)} tokens, "
                f"less than one block of data.seq_len={cfg.seq_len}; "
                "lower data.seq_len or add documents"
            )
    return PreparedData(tokenizer, blocks, _entropy_floor(cfg, store), store)


def _entropy_floor(cfg: DataConfig, store: TokenStore) -> float | None:
    if cfg.corpus not in SYNTHETIC_CORPORA or cfg.store is not None:
        return None
    split = "validation" if store.documents("validation") else "train"
    if cfg.corpus == "synthetic":
        s = cfg.synthetic
        doc_entropy = markov_chain(s).sequence_entropy(s.doc_len)
    else:  # H(document) by Monte Carlo (standard error ~0.1%)
        source, doc_len = corpus_source(cfg)
        doc_entropy = float(
            -source.log_likelihood(source.sample(1024, doc_len, cfg.hmm.seed + 2)).mean()
        )
    return store.documents(split) * doc_entropy / store.tokens(split)


def open_store(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    may_prepare: bool = True,
    workers: int | None = None,
    out: str | Path | None = None,
) -> TokenStore:
    """The token store of `cfg`: `data.store` when set, else the store of the corpus, its
    settings and the tokenizer at `out` or in `data.cache_dir/stores`, prepared first when
    missing (only where `may_prepare`: other ranks of a distributed run wait for rank 0's)."""
    if cfg.store is not None and out is None:
        store = TokenStore(cfg.store)
        if tokenizer is not None:
            store.check_tokenizer(tokenizer)
        _check_fractions(cfg, store)
        return store
    tokenizer = tokenizer or corpus_tokenizer(cfg, may_prepare)
    settings = store_settings(cfg)
    path = Path(out).expanduser() if out is not None else store_path(cfg, settings, tokenizer)
    if not may_prepare:
        if not (path / "store.json").is_file():
            raise DataError(
                f"no token store at {path} on this node; without a file system shared with "
                "rank 0, run `hdlm data prepare` on every node first (or put data.cache_dir on "
                "shared storage)"
            )
        return TokenStore(path)
    return prepared_store(cfg, settings, iter_documents(cfg), tokenizer, progress, workers, path)


def prepared_store(
    cfg: DataConfig,
    settings: StoreSettings,
    documents: Iterable[str],
    tokenizer: Tokenizer,
    progress: bool = True,
    workers: int | None = None,
    path: Path | None = None,
) -> TokenStore:
    """The store of `settings` and `tokenizer` at `path` (default: its place in
    `data.cache_dir/stores`), tokenised from `documents` when it is missing or unfinished, by
    `workers` processes (default `data.workers`, else one per core, at most 8)."""
    path = path or store_path(cfg, settings, tokenizer)
    workers = workers or cfg.workers or min(os.cpu_count() or 1, 8)
    return prepare_store(documents, settings, tokenizer, path, workers, progress)


def _check_fractions(cfg: DataConfig, store: TokenStore) -> None:
    made = store.index["fractions"]
    asked = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
    defaults = {"validation": DataConfig.val_fraction, "test": DataConfig.test_fraction}
    if asked not in (made, defaults):
        raise DataError(
            f"data.store={cfg.store} was split with val/test fractions {made['validation']} / "
            f"{made['test']}, not {cfg.val_fraction} / {cfg.test_fraction}; drop those settings "
            "or prepare a store with them"
        )


def store_settings(cfg: DataConfig) -> StoreSettings:
    return StoreSettings(describe_source(cfg), cfg.val_fraction, cfg.test_fraction,
                         cfg.shard_chars, cfg.max_tokens)  # fmt: skip


def corpus_slug(corpus: str) -> str:
    return re.sub(r"[^\w.-]+", "_", corpus).strip("_")[-48:]


def store_path(cfg: DataConfig, settings: StoreSettings, tokenizer: Tokenizer) -> Path:
    """Where the store of these settings and tokenizer lives in the cache."""
    key = digest(json.dumps(settings.as_dict(tokenizer), sort_keys=True))
    return Path(cfg.cache_dir).expanduser() / "stores" / f"{corpus_slug(cfg.corpus)}-{key}"


def corpus_tokenizer(cfg: DataConfig, may_train: bool = True) -> Tokenizer:
    """build_tokenizer(cfg.tokenizer); kinds bpe and char are trained on the first
    `tokenizer.train_chars` characters of the train split's documents, and cached by
    tokenizer config and texts."""
    tcfg = cfg.tokenizer
    if tcfg.path is not None or tcfg.kind == "gpt2":
        return build_tokenizer(tcfg)
    texts = tokenizer_sample(cfg)
    if cfg.corpus in SYNTHETIC_CORPORA:  # every symbol gets a token, even one train lacks
        texts.append(synthetic_alphabet(corpus_source(cfg)[0].n_symbols))
    cache = Path(cfg.cache_dir).expanduser()
    directory = cache / f"{corpus_slug(cfg.corpus)}-tokenizer-{digest(repr(tcfg), *texts)}"
    if (directory / "tokenizer.json").exists() or not may_train:
        return Tokenizer.load(directory)
    print(f"hdlm: training a {tcfg.kind} tokenizer on {sum(map(len, texts)):,} characters of "
          f"{len(texts):,} train documents (at most data.tokenizer.train_chars="
          f"{tcfg.train_chars:,})", file=sys.stderr)  # fmt: skip
    tokenizer = build_tokenizer(tcfg, texts)
    tokenizer.save(directory)
    return tokenizer


def tokenizer_sample(cfg: DataConfig) -> list[str]:
    """The train split's documents in order until they hold `tokenizer.train_chars` characters
    (all of them when the corpus is smaller: then split exactly as the store splits it)."""
    fractions = (cfg.val_fraction, cfg.test_fraction)
    read, hashes, size, whole = [], [], 0, True
    for doc in iter_documents(cfg):
        read.append(doc)
        hashes.append(content_hash(doc))
        if assign_splits(np.array(hashes[-1:], np.uint64), *fractions)[0] == TRAIN:
            size += len(doc)
            if size >= cfg.tokenizer.train_chars:
                whole = False
                break
    owner = assign_splits(np.array(hashes, np.uint64), *fractions)
    if whole:
        owner = fill_empty_splits(owner, np.array(hashes, np.uint64), *fractions)
    return [doc for doc, split in zip(read, owner, strict=True) if split == TRAIN]


# ----------------------------------------------------------------------------- batches


class Batches:
    """Seeded shuffled batches of blocks, such that `batch(step)` depends only on (seed, step).

    Epoch e visits the blocks in the order of a pseudo-random permutation of 0..n-1 keyed by
    hash(seed, e) (`block_order`: computed per position, so no memory grows with n); the epochs
    are concatenated and batch k is positions k*batch_size ... (k+1)*batch_size - 1 of that
    sequence (spanning epochs when needed), so a resumed run sees exactly the batches it would
    have seen. `batch(step, rank, world)` is the rank-th of `world` contiguous equal parts of
    that batch: each rank of a distributed run reads only its own blocks.
    """

    def __init__(self, blocks, batch_size: int, seed: int):
        if len(blocks) == 0 or batch_size < 1:
            raise DataError(f"cannot batch {len(blocks)} blocks by {batch_size}; need both >= 1")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def indices(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """The block indices of this rank's part of batch `step`."""
        share = self.batch_size // world
        start = step * self.batch_size + rank * share
        positions = np.arange(start, start + share, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_blocks)
        order = np.empty_like(offsets)
        for epoch in np.unique(epochs):
            inside = epochs == epoch
            order[inside] = block_order(offsets[inside], self.num_blocks, self.seed, int(epoch))
        return order

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Blocks [batch_size // world, seq_len]: this rank's part of batch `step`."""
        return self.blocks[torch.from_numpy(self.indices(step, rank, world))]


_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scrambling of 64-bit words."""
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    return z ^ (z >> np.uint64(31))


def block_order(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """π(positions) for a pseudo-random permutation π of 0..n-1 keyed by (seed, epoch): a
    4-round Feistel network on 2h bits (4^h >= n), walked until it lands below n (cycle
    walking keeps it a permutation of 0..n-1). O(len(positions)) time and memory."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(int(digest(str(seed), str(epoch), str(r)), 16)) for r in range(4)]

    def permute(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):
        x = permute(np.asarray(positions, dtype=np.uint64))
        outside = x >= n
        while outside.any():
            x[outside] = permute(x[outside])
            outside = x >= n
    return x.astype(np.int64)


class Prefetcher:
    """`load(i)` for i = start, start + 1, ..., with the next `depth` calls already running on a
    background thread, so that preparing batches overlaps the training step.

    Returns exactly `load(i)` (a pure function of i, so exact resume is unaffected); an index out
    of sequence is loaded directly. `pin`: page-locked results, for asynchronous copies to a GPU.
    The worker thread ends when the prefetcher is garbage collected.
    """

    def __init__(self, load, start: int, depth: int = 2, pin: bool = False):
        self.load = (lambda i: load(i).pin_memory()) if pin else load
        self.depth, self.pending = depth, {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hdlm-data")
        self.schedule(start)

    def schedule(self, first: int) -> None:
        for i in range(first, first + self.depth):
            if i not in self.pending:
                self.pending[i] = self.pool.submit(self.load, i)

    def __call__(self, i: int) -> torch.Tensor:
        future = self.pending.pop(i, None)
        self.pending = {k: f for k, f in self.pending.items() if k > i}
        self.schedule(i + 1)
        return future.result() if future is not None else self.load(i)
