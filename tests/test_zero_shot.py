"""Zero-shot perplexity on whole files, folders and dataset splits (`hdlm.eval.zero_shot`,
`hdlm eval --data`): every token scored once, the blocks protocol equals the NELBO of its
blocks, the JSON states the protocol."""

import json
import math

import pytest
import torch
from helpers import TOKENIZER, language_model
from test_cli import error_line

from hdlm.cli import main
from hdlm.config import DataConfig
from hdlm.eval import zero_shot
from hdlm.eval.zero_shot import read_documents, token_stream, zero_shot_perplexity, zero_shot_store


def run(args, capsys):
    """(exit code, stdout, stderr) of the CLI, whether `main` returns or argparse exits."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TEXT = "the quick brown fox jumps over the lazy dog " * 7 + "and that is all"


@pytest.fixture
def checkpoints(tmp_path):
    """Saved random tiny models: {family: path}."""
    out = {}
    for family, options in [
        ("ar", {}),
        ("mdlm", {}),
        ("block-diffusion", {"schedule": "block:8:4"}),
    ]:
        out[family] = language_model(family, **options).save(tmp_path / family)
    return out


def test_a_single_text_file_is_scored_whole_whatever_its_suffix(tmp_path, checkpoints, capsys):
    path = tmp_path / "wiki.test.raw"
    path.write_text(TEXT)
    code, out, err = run(["eval", str(checkpoints["ar"]), "--data", str(path)], capsys)
    assert code == 0, err
    result = json.loads(out)
    every = len(TOKENIZER.encode(TEXT)) + 1  # the text and the EOS that ends the document
    assert result["tokens"] == every and result["documents"] == 1 and result["zero_shot"]
    assert result["protocol"]["name"] == "blocks" and result["protocol"]["context_tokens"] == 0
    assert result["windows"] == math.ceil(every / 24) and result["kind"] == "exact"
    assert result["perplexity"] == pytest.approx(math.exp(result["nelbo_per_token"]))


def test_the_blocks_protocol_is_the_nelbo_of_bos_blocks_of_the_stream():
    lm = language_model("ar")
    stream = token_stream([TEXT, "second document"], lm.tokenizer)
    result = zero_shot_perplexity(lm, [TEXT, "second document"], progress=False)
    bos, width = lm.tokenizer.bos_id, lm.config.data.seq_len - 1
    blocks = [[bos, *stream[i : i + width]] for i in range(0, len(stream), width)]
    nats = sum(lm.nelbo(torch.tensor([block])).item() for block in blocks)
    assert result["tokens"] == len(stream) and result["windows"] == len(blocks)
    assert result["nelbo_per_token"] == pytest.approx(nats / len(stream), rel=1e-5)
    # a sliding window scores the same tokens with more context
    sliding = zero_shot_perplexity(lm, [TEXT, "second document"], stride=4, progress=False)
    assert sliding["tokens"] == len(stream) and sliding["protocol"]["name"] == "sliding"
    assert sliding["protocol"]["context_tokens"] == width - 4
    assert sliding["windows"] == math.ceil(len(stream) / 4)
    # ... each chunk of 4 given BOS and the width - 4 tokens before it: for ar exactly
    # log p(context, chunk) - log p(context)
    nats, context = 0.0, width - 4
    for start in range(0, len(stream), 4):
        before = [bos, *stream[max(0, start - context) : start]]
        nats += lm.nelbo(torch.tensor([before + stream[start : start + 4]])).item()
        nats -= lm.nelbo(torch.tensor([before])).item() if len(before) > 1 else 0.0
    assert sliding["nelbo_per_token"] == pytest.approx(nats / len(stream), rel=1e-5)


def test_scoring_in_segments_from_a_store_equals_scoring_the_whole_stream(tmp_path, monkeypatch):
    """Segments of a few windows, each with the context its first window needs, read from a
    token store: the very windows of the whole stream, so the same exact log-likelihood."""
    lm = language_model("ar")
    docs = [TEXT, "second document", TEXT[::-1]]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = DataConfig(corpus=str(tmp_path / "set.jsonl"), cache_dir=str(tmp_path / "cache"))
    store = zero_shot_store(cfg, None, lm.tokenizer, progress=False)
    assert store.documents("train") == 3 and store.tokens("train") == len(
        token_stream(docs, lm.tokenizer))  # fmt: skip
    for stride in (None, 4):
        whole = zero_shot_perplexity(lm, docs, stride=stride, progress=False)
        monkeypatch.setattr(zero_shot, "SEGMENT_WINDOWS", 2)
        parts = zero_shot_perplexity(lm, store, stride=stride, progress=False)
        monkeypatch.undo()
        assert parts["windows"] > 4 and parts["documents"] == 3
        assert parts["tokens"] == whole["tokens"] and parts["windows"] == whole["windows"]
        assert parts["nelbo_per_token"] == pytest.approx(whole["nelbo_per_token"], rel=1e-6)


def test_diffusion_bounds_state_their_monte_carlo_budget(tmp_path, checkpoints, capsys):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    args = ["eval", str(checkpoints["mdlm"]), "--data", str(path), "--mc-samples", "96"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["protocol"]["mc_samples"] == 96 and result["kind"] == "upper bound"
    assert "stratified" in result["protocol"]["noise_draws"]
    code, out, err = run(["eval", str(checkpoints["mdlm"]), "--data", str(path)], capsys)
    assert json.loads(out)["protocol"]["mc_samples"] == 32  # diffusion.eval_steps by default
    # every family scores fixed blocks; a sliding window needs a conditional likelihood
    block = str(checkpoints["block-diffusion"])
    code, out, err = run(["eval", block, "--data", str(path)], capsys)
    assert code == 0 and json.loads(out)["tokens"] == len(TOKENIZER.encode(TEXT)) + 1
    code, _, err = run(["eval", block, "--data", str(path), "--stride", "4"], capsys)
    assert code == 2 and "sliding window" in error_line(err)


def test_zero_shot_reports_the_terms_of_a_diffusion_bound_as_the_split_evaluation_does():
    """Out of domain a reader must see which term of a bound is large: the blocks protocol
    reports each term per token, and they add up to the bound; exact families report the NLL."""
    for family in ("mdlm", "eps-hybrid"):
        lm = language_model(family)
        result = zero_shot_perplexity(lm, [TEXT, "second document"], progress=False)
        terms = result["nelbo_terms_per_token"]
        width = lm.config.data.seq_len - 1
        stream = token_stream([TEXT, "second document"], lm.tokenizer)
        whole = [
            [lm.tokenizer.bos_id, *stream[i : i + width]]
            for i in range(0, len(stream) - width + 1, width)
        ]
        split_terms = lm.nelbo_terms(torch.tensor(whole))
        assert set(terms) == set(split_terms) and len(terms) > 1, terms
        assert sum(terms.values()) == pytest.approx(result["nelbo_per_token"], rel=1e-6)
        sliding = zero_shot_perplexity(lm, [TEXT], stride=4, progress=False)
        assert "nelbo_terms_per_token" not in sliding  # a conditional bound has no such split
    exact = zero_shot_perplexity(language_model("ar"), [TEXT], progress=False)
    assert exact["nelbo_terms_per_token"] == {"nll": exact["nelbo_per_token"]}


def test_zero_shot_mistakes_are_one_line_errors(tmp_path, checkpoints, capsys):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    ar = str(checkpoints["ar"])
    for extra, message in [
        (["--split", "validation"], "scored whole"),
        (["--stride", "0"], "--stride: 0 must lie in [1, ∞)"),
        (["--stride", "99"], "--stride 99"),
        (["--mc-samples", "0"], "--mc-samples: 0 must lie in [1, ∞)"),
    ]:
        family = "mdlm" if extra[0] == "--mc-samples" else "ar"
        target = str(checkpoints[family]) if family != "ar" else ar
        code, _, err = run(["eval", target, "--data", str(path), *extra], capsys)
        assert code == 2 and message in error_line(err), (extra, err)
    code, _, err = run(["eval", ar, "--data", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "not found" in error_line(err)


def test_a_folder_reads_its_text_files_and_a_dataset_its_named_split(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.md").write_text("beta")
    (tmp_path / "c.raw").write_text("not read: only a file named explicitly is read whatever")
    assert sorted(read_documents(DataConfig(corpus=str(tmp_path)))) == ["alpha", "beta"]

    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the fake below is the hub: no reachability probe

    calls = []

    def load_dataset(name, subset=None, split=None, streaming=False):
        calls.append((name, subset, split, streaming))
        records = datasets.Dataset.from_dict({"text": [f"{split} one", "", f"{split} two"]})
        return records.to_iterable_dataset() if streaming else records

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = DataConfig(corpus="someone/wikitext", hf_subset="raw")
    assert read_documents(cfg, "validation") == ["validation one", "validation two"]
    assert read_documents(cfg) == ["test one", "test two"]  # the test split by default
    assert calls == [("someone/wikitext", "raw", split, True) for split in ("validation", "test")]


def test_hash_split_keeps_the_old_behaviour_for_another_corpus(tmp_path, checkpoints, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.txt").write_text(f"document {i} " + "abc " * 20)
    ar = str(checkpoints["ar"])
    code, out, err = run(["eval", ar, "--data", str(folder)], capsys)
    whole = json.loads(out)
    assert code == 0 and whole["zero_shot"] and whole["documents"] == 40, err
    args = ["eval", ar, "--data", str(folder), "--hash-split", "--split", "train",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    code, out, err = run(args, capsys)
    part = json.loads(out)
    assert code == 0 and not part["zero_shot"] and part["split"] == "train", err
    assert part["tokens"] < whole["tokens"]
