"""Sample-quality metrics (`hdlm.eval.samples`), each on a case with a known answer."""

import dataclasses
import json
import math
import random
import string

import pytest
import torch

from hdlm.cli import main
from hdlm.config import RunConfig, TokenizerConfig, complete
from hdlm.data.tokenizer import build_tokenizer
from hdlm.errors import HdlmError
from hdlm.eval.perplexity import perplexity
from hdlm.eval.samples import (
    distinct_n,
    generative_perplexity,
    mauve_score,
    sample_metrics,
    unigram_entropy,
)
from hdlm.model import LanguageModel

CHARS = build_tokenizer(TokenizerConfig(kind="char"), [string.ascii_lowercase + " ."])
V = CHARS.vocab_size  # 28 characters, UNK, EOS and MASK


def char_lm(family: str, max_len: int = 64) -> LanguageModel:
    config = RunConfig(family=family)
    config.data.seq_len = 20
    config.model = dataclasses.replace(
        config.model, vocab_size=V, max_len=max_len, n_layers=2, n_heads=2, d_model=32
    )
    config = complete(config)
    torch.manual_seed(0)
    return LanguageModel(config, CHARS).eval()


def uniform(lm: LanguageModel) -> LanguageModel:
    """Constant logits: every token but MASK (never a clean token) has probability 1 / (V - 1)."""
    with torch.no_grad():
        lm.net.head.weight.zero_()
    return lm


def random_text(n_texts: int, length: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase + " .", k=length)) for _ in range(n_texts)]


# -- perplexity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["ar", "mdlm", "a3"])
def test_perplexity_of_a_uniform_model_is_the_number_of_clean_tokens(family):
    """AR and A3: -log p = L log(V - 1) exactly. MDLM (`time: count`): k masked positions
    weighted C / k each cost log(V - 1), so every draw of the NELBO is C log(V - 1) too."""
    blocks = torch.randint(0, CHARS.mask_id, (6, 20))  # any ids but MASK
    blocks[:, 0] = CHARS.bos_id
    result = perplexity(uniform(char_lm(family)), blocks, batch_size=4, progress=False)
    assert result["perplexity"] == pytest.approx(V - 1, rel=1e-5)
    assert result["tokens"] == 6 * 19


# -- generative perplexity ----------------------------------------------------------------------


def test_generative_perplexity_of_a_uniform_reference_counts_every_token_once():
    texts = random_text(5, 50) + ["", "ab"]  # 51 ids with BOS: 8-token windows overlap
    result = generative_perplexity(texts, uniform(char_lm("ar")), 3, max_length=8, progress=False)
    assert result["gen_ppl"] == pytest.approx(V - 1, rel=1e-5)
    assert result["gen_ppl_mean_per_sample"] == pytest.approx(V - 1, rel=1e-5)  # "" left out
    assert result["gen_ppl_tokens"] == 5 * 50 + 2 and result["gen_ppl_window"] == 8


def test_generative_perplexity_is_the_models_own_likelihood():
    """Texts of different lengths batched together score what `nelbo` gives each alone."""
    lm, texts = char_lm("ar"), random_text(3, 30) + ["a short one."]
    nll = [lm.nelbo(torch.tensor([[CHARS.bos_id, *CHARS.encode(t)]])).item() for t in texts]
    counts = [len(t) for t in texts]
    result = generative_perplexity(texts, lm, batch_size=4, progress=False)
    assert result["gen_ppl"] == pytest.approx(math.exp(sum(nll) / sum(counts)), rel=1e-5)
    per_sample = sum(math.exp(x / n) for x, n in zip(nll, counts, strict=True)) / len(texts)
    assert result["gen_ppl_mean_per_sample"] == pytest.approx(per_sample, rel=1e-5)


def test_greedy_text_of_the_reference_is_likely_and_random_text_is_not():
    """Each greedy token is the argmax, so it has probability >= 1 / (V - 1): gen-ppl <= V - 1.
    Trained on a repeated sentence, the reference makes its own greedy text far likelier."""
    lm = char_lm("ar")
    block = torch.tensor([[CHARS.bos_id, *CHARS.encode("the cat sat on the mat. " * 3)[:40]]])
    optimizer = torch.optim.Adam(lm.net.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        lm.objective.loss(lm.net, block, None).backward()
        optimizer.step()
    lm.eval()
    greedy = lm.decode(lm.sample(4, 41, temperature=0))
    own = generative_perplexity(greedy, lm, progress=False)["gen_ppl"]
    other = generative_perplexity(random_text(4, 40), lm, progress=False)["gen_ppl"]
    assert own < 1.5 and other > V - 1, (own, other, greedy)


def test_hugging_face_reference_matches_transformers_own_loss(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(CHARS.save(tmp_path)), bos_token="<|endoftext|>"
    )
    config = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    text = "the quick brown fox jumps over the lazy dog."
    result = generative_perplexity([text], str(tmp_path), progress=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[CHARS.bos_id, *CHARS.encode(text)]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert result["gen_ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["gen_ppl_tokens"] == len(text) and result["gen_ppl_window"] == 64


def test_generative_perplexity_refuses_what_it_cannot_score(tmp_path):
    with pytest.raises(HdlmError, match="must be an ar model"):
        generative_perplexity(["abc"], char_lm("mdlm"), progress=False)
    with pytest.raises(HdlmError, match="between 2 and the reference's context"):
        generative_perplexity(["abc"], char_lm("ar"), max_length=65, progress=False)
    with pytest.raises(HdlmError, match="as a Hugging Face causal LM"):
        generative_perplexity(["abc"], str(tmp_path), progress=False)


# -- entropy, distinct-n ------------------------------------------------------------------------


def test_unigram_entropy():
    assert unigram_entropy([[7] * 10]) == 0
    assert unigram_entropy([list(range(5)), [3, 1, 4, 2]]) == pytest.approx(
        (math.log(5) + math.log(4)) / 2
    )
    assert unigram_entropy([[1, 1, 2, 2]]) == pytest.approx(math.log(2))


def test_distinct_n():
    assert distinct_n([[1, 2, 3, 4]], 1) == 1
    assert distinct_n([[5, 5, 5, 5]], 1) == 1 / 4
    assert distinct_n([[1, 2, 1, 2], [1, 2]], 2) == 2 / 4  # (1,2) (2,1) (1,2) | (1,2)
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 3) == 1 / 2
    with pytest.raises(HdlmError, match="at least 3 tokens"):
        distinct_n([[1, 2]], 3)


# -- sample_metrics -----------------------------------------------------------------------------


def test_sample_metrics_draws_seeded_batches_and_scores_them():
    lm = char_lm("ar")
    result = sample_metrics(
        lm, 5, 12, reference_lm=uniform(char_lm("ar")), metrics=("gen-ppl", "entropy", "distinct"),
        batch_size=2, seed=3, progress=False, top_p=0.9,
    )  # fmt: skip
    rows = torch.cat([lm.sample(k, 12, seed=s, top_p=0.9) for k, s in [(2, 3), (2, 4), (1, 5)]])
    assert result["unigram_entropy"] == pytest.approx(unigram_entropy(rows[:, 1:].tolist()))
    assert result["distinct_2"] == pytest.approx(distinct_n(rows[:, 1:].tolist(), 2))
    assert result["gen_ppl"] == pytest.approx(V - 1, rel=1e-5)
    assert result["sampler_options"] == {"top_p": 0.9} and result["tokens_per_second"] > 0
    with pytest.raises(HdlmError, match="needs a reference model"):
        sample_metrics(lm, 2, 12, metrics=("gen-ppl",), progress=False)
    with pytest.raises(HdlmError, match="unknown metric 'ppl'"):
        sample_metrics(lm, 2, 12, metrics=("ppl",), progress=False)


# -- MAUVE --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documentation():
    """200 texts of 64 GPT-2 tokens from the stdlib's pydoc topics, shuffled with a seed."""
    from pydoc_data.topics import topics

    gpt2 = build_tokenizer(TokenizerConfig(kind="gpt2"))
    ids = gpt2.encode("\n".join(topics[k] for k in sorted(topics)))
    rows = [ids[i : i + 64] for i in range(0, 64 * 200, 64)]
    random.Random(0).shuffle(rows)
    return gpt2, rows


def test_mauve_of_real_text_against_itself_and_against_shuffled_tokens(documentation):
    """Measured with seeds 0-2: itself 1.0, other documentation 0.98-0.99, the same tokens
    shuffled across the set 0.11-0.15. Shuffling tokens only *within* each text is not detected
    (0.97-0.98): MiniLM sentence features are nearly bag-of-words (docs/metrics.md)."""
    pytest.importorskip("mauve")
    gpt2, rows = documentation
    texts = [gpt2.decode(r) for r in rows[:100]]
    other = [gpt2.decode(r) for r in rows[100:]]
    pool = [i for r in rows[:100] for i in r]
    random.Random(1).shuffle(pool)
    shuffled = [gpt2.decode(pool[i : i + 64]) for i in range(0, len(pool), 64)]

    same = mauve_score(texts, texts, max_text_length=64, progress=False)
    assert same == {"mauve": pytest.approx(1.0), "n_samples": 100, "n_references": 100}
    assert mauve_score(other, texts, max_text_length=64, progress=False)["mauve"] > 0.9
    assert mauve_score(shuffled, texts, max_text_length=64, progress=False)["mauve"] < 0.5


# -- hdlm eval ----------------------------------------------------------------------------------


def test_eval_command_scores_samples(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{t}"}}\n' for t in random_text(80, 60)))
    lm = char_lm("ar")
    lm.config.data.cache_dir = str(tmp_path / "cache")
    run, reference = lm.save(tmp_path / "run"), uniform(char_lm("ar")).save(tmp_path / "ref")
    common = ["eval", str(run), "--data", str(corpus), "--samples", "6", "--batch-size", "4"]

    out = tmp_path / "result.json"
    metrics = "ppl,gen-ppl,mauve,entropy,distinct"
    code = main([*common, "--metrics", metrics, "--reference", str(reference), "--length", "16",
                 "--temperature", "0.8", "--json", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["gen_ppl"] == pytest.approx(V - 1, rel=1e-5)  # scored by the uniform reference
    assert result["gen_ppl_tokens"] == 6 * 15 and result["mauve_references"] == 6
    assert 0 <= result["mauve"] <= 1 and result["perplexity"] > 1
    assert result["sampler_options"]["temperature"] == 0.8
    assert {"unigram_entropy", "reference_unigram_entropy", "distinct_3"} <= result.keys()

    def error(*args):
        assert main([*common, *args]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "needs a reference model" in error("--metrics", "gen-ppl")
    assert "must be an ar model" in error(
        "--metrics", "gen-ppl", "--reference", str(char_lm("mdlm").save(tmp_path / "m"))
    )
    assert "unknown metric 'bleu'" in error("--metrics", "ppl,bleu")
    assert "add --set data.seq_len=64" in error("--metrics", "mauve", "--length", "64")
