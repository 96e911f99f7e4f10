"""Data: corpora, tokenizers, synthetic sources with exact likelihoods, and the token store.

    documents --split by content hash--> --tokenize (once)--> token store (shards on disk)
              --blocks of BOS + seq_len-1 tokens, read on demand--> batches

* `hdlm.data.readers`: the documents of a corpus, streamed (`pydocs`, `synthetic`, `hmm`, local
  .txt/.md/.json/.jsonl/.parquet files, also .gz/.zst, Hub datasets in streaming mode).
* `hdlm.data.splits`: each document's split from its content hash.
* `hdlm.data.store`: the token store: `prepare_store`, `TokenStore`, `StoreBlocks`.
* `hdlm.data.corpora`: `prepare_data` (a corpus' store, prepared when missing), `Batches`.
* `hdlm.data.tokenizer`: GPT-2 BPE built offline, corpus-trained BPE, characters.
* `hdlm.data.sources`: hidden Markov sources with exact likelihoods.
"""

from hdlm.data.corpora import (
    SYNTHETIC_CORPORA,
    Batches,
    Prefetcher,
    PreparedData,
    corpus_source,
    load_documents,
    open_store,
    pack_blocks,
    packed_stream,
    prepare_data,
)
from hdlm.data.readers import hub_dataset, iter_documents, looks_like_path
from hdlm.data.sources import SyntheticMarkov, synthetic_alphabet
from hdlm.data.splits import split_documents
from hdlm.data.store import TokenStore

__all__ = [
    "SYNTHETIC_CORPORA",
    "Batches",
    "PreparedData",
    "Prefetcher",
    "SyntheticMarkov",
    "TokenStore",
    "corpus_source",
    "hub_dataset",
    "iter_documents",
    "load_documents",
    "looks_like_path",
    "open_store",
    "pack_blocks",
    "packed_stream",
    "prepare_data",
    "split_documents",
    "synthetic_alphabet",
]
