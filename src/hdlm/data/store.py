"""The token store: a corpus tokenised once into shards of flat token ids, read with np.memmap.

A store is a directory:

    prepare.json             the preparation's settings (a resumed preparation must match them)
    tokenizer/tokenizer.json the tokenizer the ids belong to
    chunks/NNNNNN.SPLIT.bin  chunk N's documents of SPLIT, each followed by EOS, flat ids
                             (uint16 when the vocabulary fits, else uint32)
    chunks/NNNNNN.docs.npy   per document of chunk N in input order: split, tokens (EOS
                             included), content hash — the document offsets and the split
    chunks/NNNNNN.json       chunk N is finished (written after its shards, atomically)
    store.json               the index: settings, chunks, counts (written last: a directory
                             without it is an unfinished preparation, never read)

The corpus is read in order and cut into chunks of about `data.shard_chars` characters; worker
processes tokenise chunks in parallel, the main process writes them in order. An interrupted
preparation (Ctrl-C, SIGKILL, a full disk) resumes from its finished chunks: it reads the corpus
again but tokenises only what is missing. Split `s` of the store is the concatenation of the
chunks' `s` shards in chunk order: the stream doc0 EOS doc1 EOS ... of `split_documents`, so
`store.blocks(s, L)` cuts exactly the blocks `pack_blocks` cuts from that stream.

Integrity: every shard's size is checked when it is opened, every block read is checked to hold
ids below the vocabulary size, and `verify` compares each shard's CRC-32 with the index.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hdlm.data.splits import SPLITS, assign_splits, content_hash, move_to_empty_splits
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import DataError
from hdlm.files import atomic_path, write_text_atomic

FORMAT = 1
DOC_DTYPE = np.dtype([("split", "u1"), ("tokens", "<u4"), ("hash", "<u8")])
ENCODE_BATCH = 256  # documents per encode_batch call: bounds a worker's Python objects
OPEN_SHARDS = 64  # memory maps kept open per split (file descriptors stay well below limits)


def shard_path(store: Path, chunk: int, split: str) -> Path:
    """Where chunk `chunk`'s shard of `split` lives in the store directory `store`."""
    return store / "chunks" / f"{chunk:06d}.{split}.bin"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2" if vocab_size <= 2**16 else "<u4")


# ----------------------------------------------------------------------------- reading


class TokenStore:
    """A finished token store (module docstring), opened for reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        index = self.path / "store.json"
        if not index.is_file():
            raise DataError(
                f"{self.path} is not a finished token store (no store.json); run "
                "`hdlm data prepare` for it again, which resumes where it stopped"
            )
        try:
            self.index = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(
                f"{index} is unreadable ({e}); delete {self.path} and prepare again"
            ) from e
        if self.index.get("format") != FORMAT:
            raise DataError(
                f"{self.path} is a token store of format {self.index.get('format')}, this hdlm "
                f"reads format {FORMAT}; prepare it again"
            )
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size = self.index["tokenizer"]["vocab_size"]

    @property
    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.path / "tokenizer")

    def documents(self, split: str) -> int:
        return self.index["splits"][split]["documents"]

    def tokens(self, split: str) -> int:
        return self.index["splits"][split]["tokens"]

    def stream(self, split: str) -> TokenStream:
        shards = [(shard_path(self.path, c["id"], split), c["tokens"][split])
                  for c in self.index["chunks"] if c["tokens"][split]]  # fmt: skip
        return TokenStream(shards, self.dtype, self.vocab_size)

    def blocks(self, split: str, seq_len: int, bos_id: int) -> StoreBlocks:
        return StoreBlocks(self.stream(split), seq_len, bos_id)

    def check_tokenizer(self, tokenizer: Tokenizer, whose: str = "the model") -> None:
        """A DataError naming both tokenizers when `tokenizer` is not the store's."""
        mine = self.index["tokenizer"]
        if mine["fingerprint"] == tokenizer.fingerprint:
            return
        raise DataError(
            f"token store {self.path} holds ids of tokenizer {mine['fingerprint']} "
            f"({mine['vocab_size']} ids), but {whose} uses tokenizer {tokenizer.fingerprint} "
            f"({tokenizer.vocab_size} ids); prepare a store with {whose}'s tokenizer "
            "(drop data.store to let hdlm prepare one)"
        )

    def verify(self, progress: bool = False) -> int:
        """Check every shard's size and CRC-32 against the index; the number of shards."""
        shards = [(c, s) for c in self.index["chunks"] for s in SPLITS if c["tokens"][s]]
        for chunk, split in tqdm(shards, desc="verify", unit="shard", disable=not progress):
            path = shard_path(self.path, chunk["id"], split)
            check_size(path, chunk["tokens"][split] * self.dtype.itemsize)
            if file_crc(path) != chunk["crc32"][split]:
                raise DataError(
                    f"token shard {path} is corrupt (CRC-32 differs from the index); delete it "
                    "and its .json and run `hdlm data prepare` again"
                )
        return len(shards)


def check_size(path: Path, expected: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(
            f"token shard {path} is missing ({e}); run `hdlm data prepare` again"
        ) from e
    if size != expected:
        raise DataError(
            f"token shard {path} is truncated or damaged ({size} bytes, the index says "
            f"{expected}); delete it and its .json and run `hdlm data prepare` again"
        )


def file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc


class TokenStream:
    """The concatenation of a split's shards, read by token position without loading it."""

    def __init__(self, shards: list[tuple[Path, int]], dtype: np.dtype, vocab_size: int):
        self.shards, self.dtype, self.vocab_size = shards, dtype, vocab_size
        self.starts = np.cumsum([0] + [n for _, n in shards])
        self.open: OrderedDict[int, np.memmap] = OrderedDict()  # shard -> map, least recent first

    def __len__(self) -> int:
        return int(self.starts[-1])

    def shard(self, k: int) -> np.memmap:
        if k in self.open:
            self.open.move_to_end(k)
            return self.open[k]
        path, n = self.shards[k]
        check_size(path, n * self.dtype.itemsize)
        self.open[k] = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
        if len(self.open) > OPEN_SHARDS:
            self.open.popitem(last=False)
        return self.open[k]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64 (a copy), across shard boundaries."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces, k = [], first
        while start < stop:
            begin = start - int(self.starts[k])
            end = min(stop, int(self.starts[k + 1])) - int(self.starts[k])
            piece = self.shard(k)[begin:end]
            if len(piece) and piece.max() >= self.vocab_size:
                raise DataError(
                    f"token shard {self.shards[k][0]} holds id {int(piece.max())}, beyond the "
                    f"vocabulary ({self.vocab_size}); it is corrupt: delete it and its .json and "
                    "run `hdlm data prepare` again"
                )
            pieces.append(piece)
            start, k = start + end - begin, k + 1
        return np.concatenate(pieces).astype(np.int64) if pieces else np.empty(0, np.int64)


class StoreBlocks:
    """The blocks [n, seq_len] of a stream, n = len(stream) // (seq_len - 1): block i is BOS then
    stream[i W : (i + 1) W], W = seq_len - 1 (the tail is dropped), as `pack_blocks` cuts them,
    read on demand. Indexing (an int, a slice, a list or tensor of indices, and a column slice
    after them) returns a LongTensor."""

    def __init__(self, stream: TokenStream, seq_len: int, bos_id: int):
        if seq_len < 2:
            raise DataError(f"data.seq_len={seq_len} must be at least 2 (BOS plus one token)")
        self.stream, self.seq_len, self.bos_id = stream, seq_len, bos_id
        self.width = seq_len - 1

    def __len__(self) -> int:
        return len(self.stream) // self.width

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.seq_len

    def __getitem__(self, key) -> torch.Tensor:
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step == 1:  # one read
                body = self.stream.read(start * self.width, max(start, stop) * self.width)
                return self._with_bos(body.reshape(-1, self.width))[:, columns]
            rows = range(start, stop, step)
        single = isinstance(rows, int) or (torch.is_tensor(rows) and rows.ndim == 0)
        indices = [int(rows)] if single else [int(i) for i in rows]
        n = len(self)
        if any(not -n <= i < n for i in indices):
            raise IndexError(f"block index out of range for {n} blocks")
        reads = [self.stream.read(i % n * self.width, (i % n + 1) * self.width) for i in indices]
        body = np.stack(reads) if reads else np.empty((0, self.width), np.int64)
        blocks = self._with_bos(body)[:, columns]
        return blocks[0] if single else blocks

    def _with_bos(self, body: np.ndarray) -> torch.Tensor:
        blocks = torch.full((len(body), self.seq_len), self.bos_id, dtype=torch.long)
        blocks[:, 1:] = torch.from_numpy(body)
        return blocks


# ----------------------------------------------------------------------------- writing


@dataclass
class StoreSettings:
    """What a store holds; two preparations with equal settings make the same store."""

    source: dict  # `readers.describe_source`
    val_fraction: float
    test_fraction: float
    shard_chars: int
    max_tokens: int | None

    def as_dict(self, tokenizer: Tokenizer) -> dict:
        return {
            "format": FORMAT,
            "source": self.source,
            "fractions": {"validation": self.val_fraction, "test": self.test_fraction},
            "shard_chars": self.shard_chars,
            "max_tokens": self.max_tokens,
            "tokenizer": {
                "fingerprint": tokenizer.fingerprint,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
                "bos_id": tokenizer.bos_id,
            },  # fmt: skip
            "dtype": token_dtype(tokenizer.vocab_size).str,
        }


def chunked(documents: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive runs of documents, each closed once it holds >= `chars` characters."""
    chunk, size = [], 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if size >= chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_worker: dict = {}  # the tokenizer and split fractions of a worker process (`_start_worker`)


def _start_worker(tokenizer_dir: str, fractions: tuple[float, float]) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process' to handle
    _worker.update(tokenizer=Tokenizer.load(tokenizer_dir), fractions=fractions)


def tokenize_chunk(
    texts: list[str], tokenizer: Tokenizer | None = None, fractions: tuple[float, float] = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(documents [n] of DOC_DTYPE, {split: stream}) of one chunk: each document hashed to its
    split and tokenised, each split's documents joined as doc EOS doc EOS ..."""
    tokenizer = tokenizer or _worker["tokenizer"]
    fractions = fractions or _worker["fractions"]
    dtype = token_dtype(tokenizer.vocab_size)
    hashes = np.array([content_hash(t) for t in texts], dtype=np.uint64)
    docs = np.empty(len(texts), DOC_DTYPE)
    docs["hash"], docs["split"] = hashes, assign_splits(hashes, *fractions)
    pieces, lengths = [], []
    for start in range(0, len(texts), ENCODE_BATCH):
        encoded = tokenizer.encode_batch(texts[start : start + ENCODE_BATCH])
        lengths += [len(ids) for ids in encoded]
        pieces.append(np.fromiter(chain.from_iterable(encoded), dtype))
    lengths = np.array(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    stream = np.insert(np.concatenate(pieces) if pieces else np.empty(0, dtype), ends,
                       tokenizer.eos_id)  # fmt: skip
    docs["tokens"] = lengths + 1
    owner = np.repeat(docs["split"], docs["tokens"])
    return docs, {split: stream[owner == k] for k, split in enumerate(SPLITS)}


class StoreWriter:
    """Writes the chunks of one store (module docstring) and its index at the end."""

    def __init__(self, path: Path, settings: dict, tokenizer: Tokenizer):
        self.path, self.settings, self.tokenizer = path, settings, tokenizer
        self.chunks_dir = path / "chunks"

    def begin(self) -> dict[int, dict]:
        """Create the directory (or check a started one has the same settings); return the
        finished chunks by id."""
        prepare = self.path / "prepare.json"
        if prepare.is_file():
            found = json.loads(prepare.read_text())
            if found != self.settings:
                raise DataError(
                    f"{self.path} holds another preparation (its prepare.json differs: other "
                    "corpus, files, tokenizer or settings); delete it or prepare elsewhere"
                )
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(self.path / "tokenizer")
        write_text_atomic(prepare, json.dumps(self.settings, indent=1))
        finished = {}
        for meta_path in self.chunks_dir.glob("*.json"):
            meta = json.loads(meta_path.read_text())
            if self._intact(meta):
                finished[meta["id"]] = meta
        return finished

    def _intact(self, meta: dict) -> bool:
        itemsize = np.dtype(self.settings["dtype"]).itemsize
        shards = [(shard_path(self.path, meta["id"], s), n) for s, n in meta["tokens"].items() if n]
        return all(p.is_file() and p.stat().st_size == n * itemsize for p, n in shards)

    def write(self, chunk: int, docs: np.ndarray, streams: dict[str, np.ndarray], cut: bool):
        """Write chunk `chunk` (shards, then the document table, then its .json) atomically."""
        meta = {"id": chunk, "documents": len(docs), "cut": cut, "tokens": {}, "crc32": {}}
        for split, stream in streams.items():
            meta["tokens"][split], meta["crc32"][split] = len(stream), zlib.crc32(stream.data)
            if len(stream):
                with atomic_path(shard_path(self.path, chunk, split)) as tmp:
                    stream.tofile(tmp)
        with atomic_path(self.chunks_dir / f"{chunk:06d}.docs.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, docs)
        write_text_atomic(self.chunks_dir / f"{chunk:06d}.json", json.dumps(meta))
        return meta

    def documents(self, chunk: int) -> np.ndarray:
        return np.load(self.chunks_dir / f"{chunk:06d}.docs.npy")

    def streams(self, meta: dict) -> dict[str, np.ndarray]:
        dtype = np.dtype(self.settings["dtype"])
        path = functools.partial(shard_path, self.path, meta["id"])
        return {s: np.fromfile(path(s), dtype) if n else np.empty(0, dtype)
                for s, n in meta["tokens"].items()}  # fmt: skip

    def finish(self, chunks: list[dict]) -> TokenStore:
        """Drop chunks of an earlier, longer preparation; write store.json."""
        kept = {c["id"] for c in chunks}
        for meta_path in self.chunks_dir.glob("*.json"):
            if int(meta_path.name.split(".")[0]) not in kept:
                for stale in self.chunks_dir.glob(meta_path.name.split(".")[0] + ".*"):
                    stale.unlink()
        splits = {s: {"documents": 0, "tokens": 0} for s in SPLITS}
        for chunk in chunks:
            counts = np.bincount(self.documents(chunk["id"])["split"], minlength=len(SPLITS))
            for k, s in enumerate(SPLITS):
                splits[s]["documents"] += int(counts[k])
                splits[s]["tokens"] += chunk["tokens"][s]
        index = {**self.settings, "fingerprint": fingerprint(self.settings, chunks),
                 "splits": splits, "chunks": chunks}  # fmt: skip
        write_text_atomic(self.path / "store.json", json.dumps(index, indent=1))
        return TokenStore(self.path)


def fingerprint(settings: dict, chunks: list[dict]) -> str:
    """16 hex digits naming a store's content (its settings and every shard's checksum)."""
    text = json.dumps([settings, [(c["tokens"], c["crc32"]) for c in chunks]], sort_keys=True)
    return f"{zlib.crc32(text.encode()):08x}{zlib.adler32(text.encode()):08x}"


def prepare_store(
    documents: Iterable[str],
    settings: StoreSettings,
    tokenizer: Tokenizer,
    path: str | Path,
    workers: int = 1,
    progress: bool = True,
) -> TokenStore:
    """Tokenise `documents` into the store at `path` (resuming a started one) and open it.

    Stops after the first document that brings the store to `settings.max_tokens` tokens."""
    path = Path(path).expanduser()
    full = settings.as_dict(tokenizer)
    if (path / "store.json").is_file():
        store = TokenStore(path)
        if {k: store.index.get(k) for k in full} == full:
            return store
        shutil.rmtree(path / "chunks", ignore_errors=True)  # same place, other settings
        (path / "store.json").unlink()
        (path / "prepare.json").unlink(missing_ok=True)
    writer = StoreWriter(path, full, tokenizer)
    try:
        finished = writer.begin()
        chunks = _tokenize_all(documents, settings, writer, finished, workers, progress)
        chunks = move_to_empty_splits(chunks, writer, settings.val_fraction,
                                      settings.test_fraction)  # fmt: skip
        return writer.finish(chunks)
    except OSError as e:
        raise DataError(
            f"could not write the token store {path} ({e.strerror or e}); free disk space or "
            "choose another place (data.cache_dir, --out), then run again: it resumes"
        ) from e


def _tokenize_all(documents, settings, writer, finished, workers, progress) -> list[dict]:
    """Every chunk in order: finished ones kept, the others tokenised (by `workers` processes)
    and written; stops at max_tokens. Returns the chunks' metadata."""
    fractions = (settings.val_fraction, settings.test_fraction)
    pool = None
    bar = tqdm(desc="tokenizing", unit="tok", unit_scale=True, disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    done, total, pending = [], 0, []
    limit = settings.max_tokens

    def settle(chunk: int, result: Future | tuple | dict) -> bool:
        """Record chunk `chunk` (its finished metadata, or its tokens to write); whether the
        store is full."""
        nonlocal total
        if isinstance(result, dict):
            meta = result
        else:
            docs, streams = result.result() if isinstance(result, Future) else result
            docs, streams, cut = _cut(docs, streams, None if limit is None else limit - total)
            meta = writer.write(chunk, docs, streams, cut)
        done.append(meta)
        added = sum(meta["tokens"].values())
        total += added
        bar.update(added)
        return meta["cut"] or (limit is not None and total >= limit)

    try:
        for chunk, (texts, last) in enumerate(with_last(chunked(documents, settings.shard_chars))):
            if chunk in finished:
                pending.append((chunk, finished[chunk]))
            elif workers <= 1 or (pool is None and last):  # one chunk: no processes to start
                pending.append((chunk, tokenize_chunk(texts, writer.tokenizer, fractions)))
            else:
                pool = pool or _pool(workers, writer.path / "tokenizer", fractions)
                pending.append((chunk, pool.submit(tokenize_chunk, texts)))
            while pending and (len(pending) > 2 * max(workers, 1) or not _busy(pending[0][1])):
                if settle(*pending.pop(0)):
                    return done
        while pending:
            if settle(*pending.pop(0)):
                return done
        return done
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def with_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, whether it is the last one), reading one item ahead."""
    iterator = iter(items)
    previous = next(iterator, _END)
    while previous is not _END:
        current = next(iterator, _END)
        yield previous, current is _END
        previous = current


_END = object()


def _pool(workers: int, tokenizer_dir: Path, fractions: tuple[float, float]):
    """Worker processes, spawned: a fork would copy whatever locks the caller's threads hold."""
    return ProcessPoolExecutor(workers, get_context("spawn"), initializer=_start_worker,
                               initargs=(str(tokenizer_dir), fractions))  # fmt: skip


def _busy(result) -> bool:
    return isinstance(result, Future) and not result.done()


def _cut(docs: np.ndarray, streams: dict[str, np.ndarray], room: int | None):
    """The chunk's documents up to the first that brings its tokens to `room` (all of them
    when room is None or not reached), and whether it was cut short."""
    if room is None or int(docs["tokens"].sum()) < room:
        return docs, streams, False
    keep = int(np.searchsorted(np.cumsum(docs["tokens"].astype(np.int64)), room)) + 1
    kept = docs[:keep]
    lengths = {k: int(kept["tokens"][kept["split"] == k].sum()) for k in range(len(SPLITS))}
    return kept, {s: streams[s][: lengths[k]] for k, s in enumerate(SPLITS)}, keep < len(docs)
