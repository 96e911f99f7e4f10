"""Train / validation / test by content hash: each document's split depends on its text alone.

A document goes by u = blake2b(text) / 2^64, uniform in [0, 1): validation if u < val_fraction,
test if u < val_fraction + test_fraction, else train. Reordering or adding documents moves no
other document. Exception: with >= 3 documents, a held-out split with a positive fraction that
hashing left empty takes the document whose u lies nearest to its interval, from a split holding
several. Documents keep their input order within each split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")  # a document's split id is its index here
TRAIN, VALIDATION, TEST = range(3)


def digest(*parts: str) -> str:
    """16 hex digits of blake2b over the length-prefixed parts."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def content_hash(text: str) -> int:
    """The document's 64-bit hash; u = content_hash / 2^64."""
    return int(digest(text), 16)


def _unit(hashes: np.ndarray) -> np.ndarray:
    return np.asarray(hashes, dtype=np.uint64).astype(np.float64) / 2**64


def assign_splits(hashes: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Each document's split id (uint8) from its hash, before the empty-split exception."""
    u = _unit(hashes)
    owner = np.full(len(u), TRAIN, dtype=np.uint8)
    owner[u < val_fraction + test_fraction] = TEST
    owner[u < val_fraction] = VALIDATION
    return owner


def fill_empty_splits(
    owner: np.ndarray, hashes: np.ndarray, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """`owner` with the exception of the module docstring applied (a copy)."""
    owner, u = owner.copy(), _unit(hashes)
    bounds = {VALIDATION: (0.0, val_fraction), TEST: (val_fraction, val_fraction + test_fraction)}
    for split, fraction in ((VALIDATION, val_fraction), (TEST, test_fraction)):
        if fraction > 0 and len(owner) >= 3 and not (owner == split).any():
            lo, hi = bounds[split]
            sizes = np.bincount(owner, minlength=len(SPLITS))
            movable = np.flatnonzero(sizes[owner] > 1)
            distance = np.maximum(lo - u[movable], u[movable] - hi)
            owner[movable[np.lexsort((u[movable], distance))[0]]] = split
    return owner


def split_documents(
    docs: Sequence[str], val_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """The documents of each split (module docstring), in memory."""
    hashes = np.array([content_hash(d) for d in docs], dtype=np.uint64)
    owner = assign_splits(hashes, val_fraction, test_fraction)
    owner = fill_empty_splits(owner, hashes, val_fraction, test_fraction)
    return {
        s: [d for d, o in zip(docs, owner, strict=True) if o == k] for k, s in enumerate(SPLITS)
    }


def move_to_empty_splits(chunks: list[dict], writer, val_fraction: float, test_fraction: float):
    """The exception for a token store: `chunks` (metadata, in order) after moving the documents
    `fill_empty_splits` moves from their shards to the empty split's (`store.StoreWriter`)."""
    empty = [k for k, f in ((VALIDATION, val_fraction), (TEST, test_fraction))
             if f > 0 and not any(c["tokens"][SPLITS[k]] for c in chunks)]  # fmt: skip
    if not empty:
        return chunks
    tables = [writer.documents(c["id"]) for c in chunks]
    docs = np.concatenate(tables)
    owner = fill_empty_splits(docs["split"], docs["hash"], val_fraction, test_fraction)
    chunk_of = np.repeat(np.arange(len(chunks)), [len(t) for t in tables])
    first_of = np.cumsum([0] + [len(t) for t in tables])
    chunks = list(chunks)
    for i in np.flatnonzero(owner != docs["split"]):
        c = int(chunk_of[i])
        chunks[c] = _move(chunks[c], writer, int(i - first_of[c]), int(owner[i]))
    return chunks


def _move(meta: dict, writer, j: int, to: int) -> dict:
    """Chunk `meta` rewritten with its document j moved to split `to` (empty in this chunk)."""
    docs, streams = writer.documents(meta["id"]), writer.streams(meta)
    source = SPLITS[docs["split"][j]]
    before = docs[:j]
    start = int(before["tokens"][before["split"] == docs["split"][j]].sum())
    stop = start + int(docs["tokens"][j])
    streams[SPLITS[to]] = streams[source][start:stop].copy()
    streams[source] = np.concatenate([streams[source][:start], streams[source][stop:]])
    docs["split"][j] = to
    return writer.write(meta["id"], docs, streams, meta["cut"])
