"""Corpora, train/validation/test splits, cached tokenisation, packing into blocks, batches.

    documents --split by content hash--> splits --tokenize (cached)--> doc0 EOS doc1 EOS ...
              --pack--> blocks [n, seq_len], each BOS + seq_len-1 stream tokens --> Batches

Corpora: `pydocs` (the Python documentation's prose, offline), `synthetic` (a random Markov
chain whose entropy is known exactly), `hmm` (a hidden Markov source with exact likelihoods,
`hdlm.data.sources`), a local file or folder, or a Hugging Face dataset name.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hdlm.config import DataConfig, SyntheticConfig
from hdlm.data.sources import HiddenMarkov, PackedStream
from hdlm.data.tokenizer import Tokenizer, build_tokenizer
from hdlm.errors import DataError
from hdlm.files import atomic_path

PYDOCS_DIR = "/usr/share/doc/python3.11-doc/html/_sources"  # Debian package python3.11-doc
TEXT_SUFFIXES = (".txt", ".md")  # one document per file
JSON_SUFFIXES = (".jsonl", ".json")  # one document per record, text in data.text_field
SYMBOLS_START, MAX_SYMBOLS = 0x4E00, 20992  # synthetic symbols: the CJK Unified Ideographs
TOKENIZE_CHUNK = 256  # documents per encode_batch call

# reStructuredText that is markup only. Dropped with their indented body: the directives below,
# comments and link targets (".. " then anything but a directive, footnote or substitution).
# Dropped alone: a directive without argument (".. note::") and a directive option (":noindex:").
_RST_BLOCK = re.compile(
    r"\.\. ((index|toctree|module|currentmodule|moduleauthor|sectionauthor|highlight|"
    r"tabularcolumns|testsetup|testcleanup|include|literalinclude)::|(?![\w:-]+::|\[|\|))"
)
_RST_LINE = re.compile(r"\s*(\.\. [\w-]+::|:[\w-]+:(\s.*)?)")


# ----------------------------------------------------------------------------- corpora


def load_documents(cfg: DataConfig) -> list[str]:
    """The non-empty documents of `cfg.corpus` in a deterministic order, at most max_documents."""
    if cfg.corpus == "pydocs":
        docs = _pydocs_documents()
    elif cfg.corpus == "synthetic":
        docs = synthetic_documents(cfg.synthetic)
    elif cfg.corpus == "hmm":
        docs = hmm_documents(cfg.hmm)
    else:
        docs = _dataset_documents(cfg)
    return [d for d in docs if d][: cfg.max_documents]


def _pydocs_documents() -> list[str]:
    """One document per .rst.txt source of the Python docs (markup-only lines removed)."""
    root = Path(os.environ.get("HDLM_PYDOCS_DIR", PYDOCS_DIR))
    files = sorted(root.rglob("*.rst.txt"))
    if files:
        return [_strip_rst_markup(f.read_text(encoding="utf-8")) for f in files]
    print(
        f"hdlm: warning: {root} has no Python docs, so corpus pydocs is the small fallback "
        "pydoc_data.topics (~0.5 MB); for the full corpus (~12 MB): apt-get install python3.11-doc",
        file=sys.stderr,
    )
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def _strip_rst_markup(text: str) -> str:
    kept, block_indent = [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue  # inside a dropped block
        block_indent = None
        if _RST_BLOCK.match(line.lstrip()):
            block_indent = indent
        elif not _RST_LINE.fullmatch(line):
            kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def _dataset_documents(cfg: DataConfig) -> list[str]:
    """A local .txt/.md/.json/.jsonl file or folder, else a Hugging Face dataset name."""
    path = Path(cfg.corpus).expanduser()
    if path.exists():
        return _local_documents(path, cfg)
    if looks_like_path(cfg.corpus):
        raise DataError(
            f"corpus path {cfg.corpus} not found; give an existing file or folder "
            "(.txt/.md/.json/.jsonl), or data.corpus=pydocs or synthetic"
        )
    docs = []
    for split in hub_dataset(cfg).values():  # the dataset's own split order
        remaining = None if cfg.max_documents is None else cfg.max_documents - len(docs)
        docs += text_column(split, cfg)[:remaining]  # the column is lazy: reads `remaining` rows
    return docs


def hub_dataset(cfg: DataConfig, split: str | None = None):
    """`datasets.load_dataset(cfg.corpus, cfg.hf_subset, split=split)`: all splits (a
    DatasetDict) or the one named; a DataError that names the problem when it fails."""
    import datasets

    try:
        return datasets.load_dataset(cfg.corpus, cfg.hf_subset, split=split)
    except Exception as e:
        reason = next(iter(str(e).splitlines()), type(e).__name__)
        which = f"split '{split}' of corpus" if split else "corpus"
        raise DataError(
            f"could not load {which} '{cfg.corpus}' from the Hugging Face hub ({reason}); check "
            "the name, data.hf_subset, --split and the connection, or use data.corpus=pydocs, "
            "synthetic or a local path"
        ) from e


def _local_documents(path: Path, cfg: DataConfig) -> list[str]:
    """Each .txt/.md file is one document, each .json/.jsonl record one (in data.text_field).
    A file named explicitly is one text document whatever its suffix (WikiText's
    `wiki.test.raw`) unless it is .json/.jsonl."""
    import datasets

    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    named = path.is_file() and not path.name.endswith(JSON_SUFFIXES)
    text_files = [str(f) for f in files if named or f.name.endswith(TEXT_SUFFIXES)]
    json_files = [str(f) for f in files if f.name.endswith(JSON_SUFFIXES)]
    if not text_files + json_files:
        raise DataError(f"corpus path {cfg.corpus} holds no .txt/.md/.json/.jsonl file; add some")
    docs = []
    if text_files:
        text = datasets.load_dataset("text", data_files=text_files, sample_by="document")
        docs += text["train"]["text"]
    if json_files:
        docs += text_column(datasets.load_dataset("json", data_files=json_files)["train"], cfg)
    return docs


def looks_like_path(corpus: str) -> bool:
    """Hub names are `name` or `owner/name`; a leading / . ~, more slashes or a suffix: a path."""
    return (
        corpus.startswith(("/", ".", "~"))
        or corpus.count("/") > 1
        or corpus.endswith(TEXT_SUFFIXES + JSON_SUFFIXES)
    )


def text_column(dataset, cfg: DataConfig) -> Sequence[str]:
    if cfg.text_field not in dataset.column_names:
        raise DataError(
            f"corpus '{cfg.corpus}' has no column data.text_field='{cfg.text_field}'; "
            f"set data.text_field to one of: {', '.join(dataset.column_names)}"
        )
    return dataset[cfg.text_field]


def split_documents(
    docs: Sequence[str], val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Assign each document by u = blake2b(text) / 2^64, uniform in [0, 1):

    validation if u < val_fraction, test if u < val_fraction + test_fraction, else train.
    The assignment depends on the text alone, so reordering or adding documents moves nothing.
    Exception: with >= 3 documents, a held-out split with a positive fraction that hashing left
    empty takes the document whose u lies nearest to its interval, from a split holding several.
    Documents keep their input order within each split.
    """
    bounds = {
        "validation": (0.0, val_fraction),
        "test": (val_fraction, val_fraction + test_fraction),
        "train": (val_fraction + test_fraction, 1.0),
    }
    hashes = [_unit_hash(d) for d in docs]
    owner = [next(s for s, (lo, hi) in bounds.items() if lo <= u < hi) for u in hashes]
    for split, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if fraction > 0 and len(docs) >= 3 and split not in owner:
            lo, hi = bounds[split]
            sizes = Counter(owner)
            movable = [i for i, s in enumerate(owner) if sizes[s] > 1]
            nearest = min(movable, key=lambda i: (max(lo - hashes[i], hashes[i] - hi), hashes[i]))
            owner[nearest] = split
    return {split: [d for d, s in zip(docs, owner, strict=True) if s == split] for split in bounds}


def _unit_hash(text: str) -> float:
    return int(_digest(text), 16) / 2**64


def _digest(*parts: str) -> str:
    """16 hex digits of blake2b over the length-prefixed parts."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


# ----------------------------------------------------------------------------- synthetic


class SyntheticMarkov:
    """A Markov chain over `n_states` symbols; row i of the transition matrix P is drawn from a
    symmetric Dirichlet(concentration) (small concentration: peaked rows, low entropy)."""

    def __init__(self, n_states: int, concentration: float, seed: int):
        if not 1 <= n_states <= MAX_SYMBOLS:
            raise DataError(f"data.synthetic.n_states={n_states} must lie in [1, {MAX_SYMBOLS}]")
        if concentration <= 0:
            raise DataError(f"data.synthetic.concentration={concentration} must be positive")
        alpha = np.full(n_states, concentration)
        self.transition = np.random.default_rng(seed).dirichlet(alpha, size=n_states)

    def stationary(self) -> np.ndarray:
        """The distribution π with π P = π and Σ_i π_i = 1."""
        n = len(self.transition)
        system = np.vstack([self.transition.T - np.eye(n), np.ones(n)])
        pi = np.linalg.lstsq(system, np.append(np.zeros(n), 1.0), rcond=None)[0].clip(min=0)
        return pi / pi.sum()

    def entropy_rate(self) -> float:
        """H = -Σ_i π_i Σ_j P_ij log P_ij, in nats per symbol."""
        return float(self.stationary() @ _entropy(self.transition))

    def sequence_entropy(self, n: int) -> float:
        """Entropy in nats of X_1..X_n with X_1 ~ π: H(π) + (n - 1) H."""
        return float(_entropy(self.stationary()) + (n - 1) * self.entropy_rate())

    def sample(self, n_docs: int, doc_len: int, seed: int) -> np.ndarray:
        """States [n_docs, doc_len], each row started from π, drawn by inverse-CDF sampling."""
        rng = np.random.default_rng(seed)
        uniforms = rng.random((n_docs, doc_len))
        cdf = np.cumsum(self.transition, axis=1)
        states = np.empty((n_docs, doc_len), dtype=np.int64)
        states[:, 0] = _inverse_cdf(np.cumsum(self.stationary())[None], uniforms[:, 0])
        for t in range(1, doc_len):
            states[:, t] = _inverse_cdf(cdf[states[:, t - 1]], uniforms[:, t])
        return states


def _entropy(p: np.ndarray) -> np.ndarray:
    """-Σ_j p_j log p_j along the last axis, with 0 log 0 = 0."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def _inverse_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first index k with u < cdf[k] (clamped against rounding of cdf[-1])."""
    return np.minimum((cdf <= u[:, None]).sum(-1), cdf.shape[-1] - 1)


def synthetic_alphabet(n_states: int) -> str:
    """Symbol k is the printable character chr(0x4E00 + k), one token under kind=char."""
    return "".join(chr(SYMBOLS_START + k) for k in range(n_states))


def synthetic_documents(cfg: SyntheticConfig) -> list[str]:
    """`n_docs` strings of `doc_len` symbols sampled from the seeded Markov chain."""
    markov = SyntheticMarkov(cfg.n_states, cfg.concentration, cfg.seed)
    states = markov.sample(cfg.n_docs, cfg.doc_len, seed=cfg.seed + 1)  # seed drew P itself
    symbols = np.array(list(synthetic_alphabet(cfg.n_states)))
    return ["".join(row) for row in symbols[states]]


def hmm_documents(cfg) -> list[str]:
    """`n_docs` strings of `doc_len` symbols drawn from the seeded hidden Markov source."""
    source = HiddenMarkov.random(cfg.n_hidden, cfg.n_symbols, cfg.stay, cfg.concentration, cfg.seed)
    symbols = np.array(list(synthetic_alphabet(cfg.n_symbols)))
    return ["".join(row) for row in symbols[source.sample(cfg.n_docs, cfg.doc_len, cfg.seed + 1)]]


SYNTHETIC_CORPORA = ("synthetic", "hmm")  # corpora whose source is known (`corpus_source`)


def corpus_source(cfg: DataConfig) -> tuple[HiddenMarkov, int]:
    """The source of a synthetic corpus and its documents' length in symbols: the Markov chain
    of `synthetic` (an HMM whose hidden state is the symbol), or the HMM of `hmm`."""
    if cfg.corpus == "synthetic":
        s = cfg.synthetic
        chain = SyntheticMarkov(s.n_states, s.concentration, s.seed)
        return HiddenMarkov(chain.transition, np.eye(s.n_states)), s.doc_len
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


# ----------------------------------------------------------------------------- tokens


def tokenize_split(
    docs: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path, key: str
) -> np.ndarray:
    """The stream doc0 EOS doc1 EOS ..., cached in {cache_dir}/{key}.npy.

    `key` must identify the documents and the tokenizer. uint16 when every id fits, else int32.
    """
    path = Path(cache_dir).expanduser() / f"{key}.npy"
    if path.exists():
        return np.load(path)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    eos, pieces = [tokenizer.eos_id], [np.empty(0, dtype)]
    for start in tqdm(
        range(0, len(docs), TOKENIZE_CHUNK),
        desc=f"tokenizing {key}",
        unit="chunk",
        disable=len(docs) <= TOKENIZE_CHUNK,
    ):
        encoded = tokenizer.encode_batch(list(docs[start : start + TOKENIZE_CHUNK]))
        pieces.append(np.fromiter(chain.from_iterable(ids + eos for ids in encoded), dtype))
    stream = np.concatenate(pieces)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, stream)
    return stream


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


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    blocks: dict[str, torch.Tensor]  # train / validation / test -> LongTensor [n, seq_len]
    entropy_floor: float | None  # synthetic corpus: lower bound on NLL, nats per token


def prepare_data(cfg: DataConfig, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Load, split, tokenize (cached) and pack the corpus of `cfg`.

    Without `tokenizer`, kinds bpe and char are trained on the train split (and cached).

    entropy_floor (synthetic corpus only): the entropy per token of the validation stream (train
    if there is no validation split), n_docs H(X_1..X_doc_len) / n_tokens; with kind=char that
    is H(X_1..X_doc_len) / (doc_len + 1), as each document is doc_len symbol tokens plus an EOS
    that carries no information. A lossless tokenizer keeps the entropy of the text, so no
    model's mean NLL per predicted token can be lower in expectation. The achievable NLL is
    slightly higher: a block's first token lacks its predecessor, and a model that has not seen
    its document's start cannot know exactly where the EOS falls.
    """
    docs = load_documents(cfg)
    splits = split_documents(docs, cfg.val_fraction, cfg.test_fraction)
    cache_dir = Path(cfg.cache_dir).expanduser()
    corpus = re.sub(r"[^\w.-]+", "_", cfg.corpus).strip("_")[-48:]
    if tokenizer is None:
        tokenizer = _corpus_tokenizer(cfg, splits["train"], cache_dir, corpus)
    train = max(0.0, round(1.0 - cfg.val_fraction - cfg.test_fraction, 9))  # 0: eval only
    fractions = {"train": train, "validation": cfg.val_fraction, "test": cfg.test_fraction}
    streams, blocks = {}, {}
    for split, split_docs in splits.items():
        key = f"{corpus}-{split}-{_digest(tokenizer.fingerprint, *split_docs)}"
        streams[split] = tokenize_split(split_docs, tokenizer, cache_dir, key)
        blocks[split] = pack_blocks(streams[split], cfg.seq_len, tokenizer.bos_id)
        if fractions[split] > 0 and len(blocks[split]) == 0:
            raise DataError(
                f"the {split} split of corpus '{cfg.corpus}' has {len(streams[split])} tokens, "
                f"less than one block of data.seq_len={cfg.seq_len}; "
                "lower data.seq_len or add documents"
            )
    entropy_floor = None
    if cfg.corpus == "synthetic":
        s = cfg.synthetic
        split = "validation" if splits["validation"] else "train"
        markov = SyntheticMarkov(s.n_states, s.concentration, s.seed)
        entropy_floor = (
            len(splits[split]) * markov.sequence_entropy(s.doc_len) / len(streams[split])
        )
    elif cfg.corpus == "hmm":  # H(document) by Monte Carlo (standard error ~0.1%)
        split = "validation" if splits["validation"] else "train"
        source, doc_len = corpus_source(cfg)
        doc_entropy = -source.log_likelihood(source.sample(1024, doc_len, cfg.hmm.seed + 2)).mean()
        entropy_floor = len(splits[split]) * float(doc_entropy) / len(streams[split])
    return PreparedData(tokenizer, blocks, entropy_floor)


def _corpus_tokenizer(
    cfg: DataConfig, train_docs: list[str], cache_dir: Path, corpus: str
) -> Tokenizer:
    """build_tokenizer(cfg.tokenizer); trained kinds are cached by tokenizer config and texts."""
    tcfg = cfg.tokenizer
    if tcfg.path is not None or tcfg.kind == "gpt2":
        return build_tokenizer(tcfg)
    texts = list(train_docs)
    if cfg.corpus in SYNTHETIC_CORPORA:  # every symbol gets a token, even one train lacks
        texts.append(synthetic_alphabet(corpus_source(cfg)[0].n_symbols))
    directory = cache_dir / f"{corpus}-tokenizer-{_digest(repr(tcfg), *texts)}"
    if (directory / "tokenizer.json").exists():
        return Tokenizer.load(directory)
    tokenizer = build_tokenizer(tcfg, texts)
    tokenizer.save(directory)
    return tokenizer


# ----------------------------------------------------------------------------- batches


class Batches:
    """Seeded shuffled batches of blocks, such that `batch(step)` depends only on (seed, step).

    Epoch e visits the blocks in the order torch.randperm(num_blocks) drawn from a generator
    seeded with hash(seed, e); the epochs are concatenated and batch k is positions
    k*batch_size ... (k+1)*batch_size - 1 of that sequence (spanning epochs when needed), so a
    resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int):
        if len(blocks) == 0 or batch_size < 1:
            raise DataError(f"cannot batch {len(blocks)} blocks by {batch_size}; need both >= 1")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def batch(self, step: int) -> torch.Tensor:
        """Blocks [batch_size, seq_len] of step `step`."""
        n = self.num_blocks
        start = step * self.batch_size
        first, last = start // n, (start + self.batch_size - 1) // n
        order = torch.cat([_epoch_order(n, self.seed, e) for e in range(first, last + 1)])
        offset = start - first * n
        return self.blocks[order[offset : offset + self.batch_size]]


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


@lru_cache(maxsize=4)
def _epoch_order(n_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(_digest(str(seed), str(epoch)), 16))
    return torch.randperm(n_blocks, generator=generator)
