import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hdlm.config import DataConfig, SyntheticConfig, TokenizerConfig
from hdlm.data.corpora import Batches, Prefetcher, load_documents, pack_blocks, prepare_data
from hdlm.data.readers import PYDOCS_DIR
from hdlm.data.sources import SyntheticMarkov, synthetic_alphabet
from hdlm.data.splits import split_documents
from hdlm.data.tokenizer import EOS
from hdlm.errors import DataError


def test_pack_blocks_loses_and_duplicates_nothing():
    rng = np.random.default_rng(0)
    for length, seq_len in [(1000, 16), (999, 2), (37, 8), (5, 8), (64, 65)]:
        stream = rng.integers(1, 500, size=length).astype(np.uint16)
        blocks = pack_blocks(stream, seq_len, bos_id=0)
        n, body = len(blocks), seq_len - 1
        assert blocks.dtype == torch.long and blocks.shape == (n, seq_len)
        assert (blocks[:, 0] == 0).all()
        assert torch.equal(blocks[:, 1:].reshape(-1), torch.from_numpy(stream[: n * body]).long())
        assert length - n * body < body


def test_splits_are_deterministic_disjoint_complete_and_order_free():
    docs = [f"document number {i}" for i in range(300)]
    splits = split_documents(docs, 0.1, 0.2)
    assert sorted(sum(splits.values(), [])) == sorted(docs)
    assert split_documents(docs, 0.1, 0.2) == splits
    shuffled = random.Random(0).sample(docs, len(docs))
    assert {k: set(v) for k, v in split_documents(shuffled, 0.1, 0.2).items()} == {
        k: set(v) for k, v in splits.items()
    }
    grown = split_documents(docs + [f"new document {i}" for i in range(50)], 0.1, 0.2)
    assert all(set(splits[k]) <= set(grown[k]) for k in splits)  # nothing moved
    assert 15 <= len(splits["validation"]) <= 45 and 40 <= len(splits["test"]) <= 80


def test_tiny_corpus_still_gets_validation_and_test():
    for docs in (["a", "b", "c"], ["x", "y", "z", "w"]):
        splits = split_documents(docs, 0.01, 0.01)
        assert all(len(v) >= 1 for v in splits.values())
    assert split_documents(["a", "b", "c"], 0.0, 0.0) == {
        "train": ["a", "b", "c"],
        "validation": [],
        "test": [],
    }


@pytest.mark.skipif(not Path(PYDOCS_DIR).is_dir(), reason="apt-get install python3.11-doc")
def test_pydocs_from_debian_package(monkeypatch):
    monkeypatch.delenv("HDLM_PYDOCS_DIR", raising=False)
    docs = load_documents(DataConfig(corpus="pydocs"))
    assert len(docs) > 400 and sum(map(len, docs)) > 5_000_000
    assert not any(".. index::" in d or ":synopsis:" in d for d in docs)
    assert any("JSON (JavaScript Object Notation)" in d for d in docs)
    assert len(load_documents(DataConfig(corpus="pydocs", max_documents=7))) == 7


def test_pydocs_fallback_warns_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HDLM_PYDOCS_DIR", str(tmp_path / "missing"))
    docs = load_documents(DataConfig(corpus="pydocs"))
    assert len(docs) > 50 and all(docs)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "apt-get install python3.11-doc" in warning[0]


def test_local_text_folder_and_jsonl(tmp_path):
    (tmp_path / "b.txt").write_text("second file\nwith two lines\n")
    (tmp_path / "a.md").write_text("first file")
    (tmp_path / "skipped.csv").write_text("x,y")
    assert load_documents(DataConfig(corpus=str(tmp_path))) == [
        "first file",
        "second file\nwith two lines\n",
    ]
    records = [{"body": f"record {i}", "id": i} for i in range(5)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = DataConfig(corpus=str(jsonl), text_field="body", max_documents=3)
    assert load_documents(cfg) == ["record 0", "record 1", "record 2"]
    with pytest.raises(DataError, match="it has: body, id"):
        load_documents(DataConfig(corpus=str(jsonl)))


def test_missing_corpus_is_a_data_error(tmp_path, monkeypatch):
    for corpus in (str(tmp_path / "nowhere"), "corpus.txt", "./data/x"):
        with pytest.raises(DataError, match="not found"):
            load_documents(DataConfig(corpus=corpus))
    datasets = pytest.importorskip("datasets")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="pydocs, synthetic or a local path"):
        load_documents(DataConfig(corpus="hdlm-tests/no-such-dataset"))


def test_markov_entropy_matches_monte_carlo():
    chain = SyntheticMarkov(n_states=8, concentration=0.5, seed=3)
    pi, transition = chain.stationary(), chain.transition
    assert np.allclose(pi @ transition, pi) and np.isclose(pi.sum(), 1)
    n = 24
    states = chain.sample(n_docs=20_000, doc_len=n, seed=4)
    log_p = np.log(pi[states[:, 0]]) + np.log(transition[states[:, :-1], states[:, 1:]]).sum(1)
    estimate, stderr = -log_p.mean(), log_p.std() / np.sqrt(len(log_p))
    assert abs(estimate - chain.sequence_entropy(n)) < 4 * stderr
    assert 0 < chain.entropy_rate() < np.log(8)


def test_synthetic_documents_use_one_character_per_symbol():
    cfg = DataConfig(corpus="synthetic", synthetic=SyntheticConfig(n_states=300, n_docs=5))
    docs = load_documents(cfg)
    assert docs == load_documents(cfg) and len(docs) == 5
    assert all(len(d) == 256 and set(d) <= set(synthetic_alphabet(300)) for d in docs)
    assert not set(synthetic_alphabet(300)) & set(EOS + "<|mask|>")


def test_prepare_synthetic_data(tmp_path):
    synthetic = SyntheticConfig(n_states=16, n_docs=300, doc_len=40, concentration=0.3, seed=1)
    cfg = DataConfig(
        corpus="synthetic",
        seq_len=32,
        cache_dir=str(tmp_path),
        tokenizer=TokenizerConfig(kind="char"),
        synthetic=synthetic,
    )
    data = prepare_data(cfg)
    tok = data.tokenizer
    assert tok.vocab_size == 16 + 3  # symbols, UNK, EOS, MASK
    assert sum(len(b) for b in data.blocks.values()) == 300 * 41 // 31
    for blocks in data.blocks.values():
        assert len(blocks) > 0 and (blocks[:, 0] == tok.bos_id).all()
    chain = SyntheticMarkov(16, 0.3, 1)
    assert data.entropy_floor == pytest.approx(chain.sequence_entropy(40) / 41)
    assert data.entropy_floor < chain.entropy_rate()

    again = prepare_data(cfg)  # from the cache: same tokenizer, same blocks
    assert again.tokenizer.fingerprint == tok.fingerprint
    assert all(torch.equal(again.blocks[k][:], data.blocks[k][:]) for k in data.blocks)
    assert len(list(tmp_path.glob("synthetic-tokenizer-*/tokenizer.json"))) == 1


def test_prepare_rejects_a_corpus_smaller_than_a_block(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(5):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"tiny document {i}")
    cfg = DataConfig(
        corpus=str(tmp_path / "docs"),
        seq_len=64,
        cache_dir=str(tmp_path / "cache"),
        tokenizer=TokenizerConfig(kind="char"),
    )
    with pytest.raises(DataError, match="lower data.seq_len or add documents"):
        prepare_data(cfg)


def test_batches_are_seeded_and_cover_each_epoch():
    blocks = torch.arange(40).view(10, 4)
    batches = Batches(blocks, batch_size=5, seed=0)
    epoch = torch.cat([batches.batch(0), batches.batch(1)])
    assert sorted(epoch[:, 0].tolist()) == list(range(0, 40, 4))
    assert torch.equal(Batches(blocks, 5, seed=0).batch(7), batches.batch(7))  # resume is exact
    assert not torch.equal(Batches(blocks, 5, seed=1).batch(0), batches.batch(0))
    # batch k is a window of one endless sequence of epochs, whatever the batch size
    singles = torch.cat([Batches(blocks, 1, seed=0).batch(i) for i in range(25)])
    assert torch.equal(Batches(blocks, 25, seed=0).batch(0), singles)
    counts = torch.bincount(singles[:, 0] // 4, minlength=10)
    assert counts.min() == 2 and counts.max() == 3


def test_prefetched_batches_are_the_batches_and_load_off_the_calling_thread():
    batches = Batches(torch.arange(120).view(40, 3), batch_size=4, seed=0)
    loaded_on = {}

    def load(i):
        loaded_on[i] = threading.get_ident()
        return batches.batch(i)

    prefetch = Prefetcher(load, start=3)
    for i in [3, 4, 5, 9, 10, 2]:  # in sequence, then a jump (as after a resume), then back
        assert torch.equal(prefetch(i), batches.batch(i))
    assert all(loaded_on[i] != threading.get_ident() for i in (3, 4, 5, 10))
