"""The token store (`hdlm.data.store`): the same blocks as tokenising in memory, resumable
preparation, bounded reading, every file a user may hand us checked with a one-line error."""

import errno
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hdlm.cli import main
from hdlm.config import DataConfig, TokenizerConfig
from hdlm.data import store as store_module
from hdlm.data.corpora import (
    Batches,
    block_order,
    load_documents,
    open_store,
    pack_blocks,
    prepare_data,
)
from hdlm.data.readers import hub_documents
from hdlm.data.splits import split_documents
from hdlm.data.store import StoreSettings, TokenStore, prepare_store
from hdlm.data.tokenizer import build_tokenizer
from hdlm.errors import DataError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def corpus_folder(root: Path, n: int = 120) -> Path:
    """Text files and a JSONL file of documents of varied lengths (some empty)."""
    rng = np.random.default_rng(0)
    folder = root / "corpus"
    folder.mkdir()
    for i in range(n // 2):
        words = rng.choice(WORDS, size=int(rng.integers(0, 60)))
        (folder / f"doc{i:03d}.txt").write_text(" ".join(words))
    records = [{"text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 60))))}
               for _ in range(n // 2)]  # fmt: skip
    (folder / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def config(folder: Path, cache: Path, workers: int = 1, **data) -> DataConfig:
    gpt2 = TokenizerConfig(kind="gpt2")
    return DataConfig(corpus=str(folder), seq_len=16, cache_dir=str(cache), val_fraction=0.1,
                      test_fraction=0.1, tokenizer=gpt2, workers=workers, **data)  # fmt: skip


def in_memory_blocks(cfg: DataConfig, tokenizer) -> dict[str, torch.Tensor]:
    """The reference: documents in memory, split by hash, tokenised, joined by EOS, packed."""
    blocks = {}
    for split, docs in split_documents(load_documents(cfg), 0.1, 0.1).items():
        ids = [i for d in tokenizer.encode_batch(docs) for i in (*d, tokenizer.eos_id)]
        blocks[split] = pack_blocks(np.array(ids, dtype=np.int64), cfg.seq_len, tokenizer.bos_id)
    return blocks


def test_store_blocks_equal_tokenising_in_memory_whatever_the_chunks_and_workers(tmp_path):
    folder = corpus_folder(tmp_path)
    cfg = config(folder, tmp_path / "cache", shard_chars=700)  # many chunks: blocks cross them
    one = prepare_data(cfg)
    reference = in_memory_blocks(cfg, one.tokenizer)
    assert len(one.store.index["chunks"]) > 5
    for split, blocks in reference.items():
        assert len(blocks) > 0 and torch.equal(one.blocks[split][:], blocks)
    two = open_store(cfg, workers=2, out=tmp_path / "two")
    assert two.fingerprint == one.store.fingerprint  # same shards, same checksums
    rows = [3, 0, len(reference["train"]) - 1, -1]
    assert torch.equal(one.blocks["train"][rows], reference["train"][rows])
    assert torch.equal(one.blocks["train"][2:9:3, :5], reference["train"][2:9:3, :5])
    assert torch.equal(one.blocks["train"][4], reference["train"][4])
    with pytest.raises(IndexError):
        one.blocks["train"][[len(reference["train"])]]


def test_preparation_resumes_and_tokenises_only_missing_chunks(tmp_path, monkeypatch):
    folder = corpus_folder(tmp_path)
    cfg = config(folder, tmp_path / "cache", shard_chars=700)
    tokenizer = build_tokenizer(cfg.tokenizer)
    settings = StoreSettings({"test": 1}, 0.1, 0.1, 700, None)
    documents = load_documents(cfg)

    def interrupted():  # Ctrl-C after 40 documents
        yield from documents[:40]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_store(interrupted(), settings, tokenizer, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "store.json").exists()
    with pytest.raises(DataError, match="not a finished token store"):
        TokenStore(tmp_path / "s")
    done = len(list((tmp_path / "s" / "chunks").glob("*.json")))
    assert done >= 2
    calls = []
    original = store_module.tokenize_chunk
    monkeypatch.setattr(store_module, "tokenize_chunk", lambda *a: calls.append(1) or original(*a))
    resumed = prepare_store(documents, settings, tokenizer, tmp_path / "s", progress=False)
    fresh = prepare_store(documents, settings, tokenizer, tmp_path / "fresh", progress=False)
    total = len(fresh.index["chunks"])
    assert len(calls) == total + total - done  # the resumed run skipped the finished chunks
    assert resumed.fingerprint == fresh.fingerprint


def test_max_tokens_ends_with_the_document_that_reaches_it(tmp_path):
    folder = corpus_folder(tmp_path)
    full = open_store(config(folder, tmp_path / "c", shard_chars=500), progress=False)
    total = sum(s["tokens"] for s in full.index["splits"].values())
    cut = open_store(config(folder, tmp_path / "c", shard_chars=500, max_tokens=total // 3))
    tokens = sum(s["tokens"] for s in cut.index["splits"].values())
    last = [np.load(p)["tokens"] for p in sorted(cut.path.glob("chunks/*.docs.npy"))][-1][-1]
    assert total // 3 <= tokens < total // 3 + last
    few = open_store(config(folder, tmp_path / "c", max_documents=7), progress=False)
    assert sum(s["documents"] for s in few.index["splits"].values()) == 7


def test_compressed_and_parquet_files_read_like_plain_ones(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    records = [{"body": f"record {i}"} for i in range(6)] + [{"body": None}]
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "c.json").write_text(json.dumps(records))
    pq.write_table(pa.table({"body": [r["body"] for r in records]}), tmp_path / "d.parquet")
    (tmp_path / "e.txt.gz").write_bytes(gzip.compress(b"a text\r\nfile"))
    expected = ["a text\nfile"] + [f"record {i}" for i in range(6)] * 4
    assert load_documents(DataConfig(corpus=str(tmp_path), text_field="body")) == expected


def test_bad_corpus_files_are_one_line_errors_naming_the_file(tmp_path):
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="broken.jsonl.gz cannot be read"):
        load_documents(DataConfig(corpus=str(tmp_path / "broken.jsonl.gz")))
    truncated = gzip.compress(b'{"text": "x"}\n' * 1000)[:-20]
    (tmp_path / "cut.jsonl.gz").write_bytes(truncated)
    with pytest.raises(DataError, match="cut.jsonl.gz cannot be read"):
        load_documents(DataConfig(corpus=str(tmp_path / "cut.jsonl.gz")))
    (tmp_path / "fields.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(DataError, match="record 1 has no field data.text_field='text'.*body, id"):
        load_documents(DataConfig(corpus=str(tmp_path / "fields.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl line 2 is not JSON"):
        load_documents(DataConfig(corpus=str(tmp_path / "bad.jsonl")))


def test_damaged_stores_are_refused_naming_the_shard(tmp_path):
    folder = corpus_folder(tmp_path)
    cfg = config(folder, tmp_path / "cache", shard_chars=700)
    data = prepare_data(cfg, progress=False)
    shard = sorted(data.store.path.glob("chunks/*.train.bin"))[1]
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[0] = 60000  # beyond GPT-2's vocabulary: a corrupt shard
    ids.tofile(shard)
    with pytest.raises(DataError, match=f"{shard.name} holds id 60000.*corrupt"):
        prepare_data(cfg, progress=False).blocks["train"][:]
    with pytest.raises(DataError, match=f"{shard.name} is corrupt"):
        TokenStore(data.store.path).verify()
    shard.write_bytes(shard.read_bytes()[:-2])  # truncated
    with pytest.raises(DataError, match=f"{shard.name} is truncated"):
        prepare_data(cfg, progress=False).blocks["train"][:]
    char = build_tokenizer(TokenizerConfig(kind="char"), ["abc"])
    with pytest.raises(DataError, match="tokenizer .* \\(50258 ids\\).*tokenizer .* \\(6 ids\\)"):
        prepare_data(DataConfig(store=str(data.store.path)), char)


def test_a_full_disk_is_one_error_and_the_preparation_resumes(tmp_path, monkeypatch):
    folder = corpus_folder(tmp_path)
    cfg = config(folder, tmp_path / "cache", shard_chars=700)
    original = store_module.StoreWriter.write
    written = []

    def full_after_three(self, *args):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        return original(self, *args)

    monkeypatch.setattr(store_module.StoreWriter, "write", full_after_three)
    with pytest.raises(DataError, match="No space left on device.*free disk space.*resumes"):
        open_store(cfg, progress=False)
    monkeypatch.setattr(store_module.StoreWriter, "write", original)
    assert open_store(cfg, progress=False).fingerprint == open_store(
        cfg, progress=False, out=tmp_path / "fresh").fingerprint  # fmt: skip


def test_hub_datasets_are_streamed_and_read_no_further_than_needed(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the fake below is the hub: no reachability probe
    served = []

    def records():
        for i in range(1000):
            served.append(i)
            yield {"text": f"document {i}"}

    def load_dataset(name, subset=None, split=None, streaming=False):
        assert streaming and name == "someone/corpus"
        return {"train": datasets.IterableDataset.from_generator(records)}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = DataConfig(corpus="someone/corpus", max_documents=5)
    assert load_documents(cfg) == [f"document {i}" for i in range(5)]
    assert len(served) < 20  # a few records of read-ahead at most, not the dataset
    with pytest.raises(DataError, match="no column data.text_field='body'.*text"):
        next(hub_documents(DataConfig(corpus="someone/corpus", text_field="body")))


def test_an_unreachable_hub_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    import time

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    assert main(["data", "prepare", "someone/corpus", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 10 and len(err.strip().splitlines()) == 1
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in err
    assert "HF_HUB_OFFLINE=1" in err


def test_block_order_is_a_permutation_for_every_size():
    for n in (1, 2, 3, 7, 64, 1000, 1025):
        order = block_order(np.arange(n), n, seed=5, epoch=2)
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(
        block_order(np.arange(64), 64, 5, 0), block_order(np.arange(64), 64, 5, 1)
    )


def test_ranks_read_disjoint_parts_of_the_one_process_batch():
    batches = Batches(torch.arange(300).view(100, 3), batch_size=12, seed=0)
    for step in (0, 8, 9):
        whole = batches.indices(step)
        parts = [batches.indices(step, rank, 4) for rank in range(4)]
        assert np.array_equal(np.concatenate(parts), whole)


def test_data_prepare_cli(tmp_path, capsys):
    folder = corpus_folder(tmp_path)
    out = tmp_path / "store"
    argv = ["data", "prepare", str(folder), "--tokenizer", "gpt2", "--out", str(out),
            "--workers", "2", "--no-progress", "--set", "data.shard_chars=900"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.split("\ntrain on it")[0])
    assert summary["chunks"] > 3 and summary["dtype"] == "<u2"
    assert main(["data", "info", str(out), "--verify", "--no-progress"]) == 0
    assert "verified" in capsys.readouterr().err
    for argv, message in [
        (["data", "prepare", str(tmp_path / "nowhere")], "not found"),
        (["data", "prepare", str(folder), "--max-tokens", "0"], "--max-tokens"),
        (["data", "prepare", str(folder), "--set", "data.shard_chars=0"], "at least 1"),
        (["data", "info", str(tmp_path)], "not a finished token store"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_killed_preparation_resumes_to_the_same_store(tmp_path):
    """SIGKILL mid-way (no handler runs): the finished chunks survive, nothing half-written is
    read, and running the same command again completes the very same store."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(1)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS, size=200))}) for _ in range(6000)]
    (folder / "docs.jsonl").write_text("\n".join(lines))
    out = tmp_path / "store"

    def command(store):
        return [sys.executable, "-m", "hdlm", "data", "prepare", str(folder), "--tokenizer",
                "gpt2", "--out", str(store), "--workers", "1", "--no-progress",
                "--set", "data.shard_chars=20000"]  # fmt: skip

    process = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(out.glob("chunks/*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "store.json").exists(), "finished before the kill: make the corpus larger"
    kept = len(list(out.glob("chunks/*.json")))
    assert kept >= 3
    assert subprocess.run(command(out), capture_output=True).returncode == 0
    fresh = tmp_path / "fresh"
    assert subprocess.run(command(fresh), capture_output=True).returncode == 0
    assert TokenStore(out).fingerprint == TokenStore(fresh).fingerprint
    assert TokenStore(out).verify() == TokenStore(fresh).verify() > kept
