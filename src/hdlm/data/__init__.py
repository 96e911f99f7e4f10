"""Data: corpora, tokenizers, synthetic sources with exact likelihoods, and the token store.

    source documents --split by content hash--> splits --tokenize--> doc0 EOS doc1 EOS ...
                     --pack--> blocks [n, seq_len], each BOS + seq_len-1 stream tokens --> batches

* `hdlm.data.corpora`: the corpora (`pydocs`, `synthetic`, `hmm`, local files, Hub datasets),
  the split of each document by hash, packing and batches.
* `hdlm.data.tokenizer`: GPT-2 BPE built offline, corpus-trained BPE, characters.
* `hdlm.data.sources`: hidden Markov sources with exact likelihoods.
"""

from hdlm.data.corpora import (
    SYNTHETIC_CORPORA,
    Batches,
    Prefetcher,
    PreparedData,
    SyntheticMarkov,
    corpus_source,
    hub_dataset,
    load_documents,
    looks_like_path,
    pack_blocks,
    packed_stream,
    prepare_data,
    split_documents,
    synthetic_alphabet,
    text_column,
    tokenize_split,
)

__all__ = [
    "SYNTHETIC_CORPORA",
    "Batches",
    "PreparedData",
    "Prefetcher",
    "SyntheticMarkov",
    "corpus_source",
    "hub_dataset",
    "load_documents",
    "looks_like_path",
    "pack_blocks",
    "packed_stream",
    "prepare_data",
    "split_documents",
    "synthetic_alphabet",
    "text_column",
    "tokenize_split",
]
