"""A3 (any-order, any-subset autoregression): exact identities of the two-stream model, the
groupings, decoding and infilling, and the family end to end through the CLI."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from helpers import MASK, L, V, random_tokens

import hdlm
from hdlm import a3
from hdlm.config import A3Stage, RunConfig, complete, load_config
from hdlm.data.tokenizer import TokenizerConfig, build_tokenizer
from hdlm.errors import ConfigError, HdlmError
from hdlm.model import LanguageModel, Transformer
from hdlm.model.a3 import A3Transformer
from hdlm.objectives import A3Objective, AutoregressiveObjective
from hdlm.sampling.a3 import (
    blank_length_scores,
    decode,
    given_groups,
    infill_template,
    parse_infill,
)
from hdlm.sampling.ar import sample_ar


def make_config(vocab=V, length=L, **a3_options):
    config = RunConfig(family="a3")
    config.data.seq_len = length
    config.model = dataclasses.replace(
        config.model, vocab_size=vocab, max_len=64, n_layers=2, n_heads=2, d_model=32
    )
    config.a3 = dataclasses.replace(config.a3, **a3_options)
    config = complete(config)
    return config


def parent_and_child(config):
    """A random AR network and an A3 network initialised from its weights."""
    parent = Transformer(config.model).eval()
    child = A3Transformer(config.model).eval()
    missing, unexpected = child.load_state_dict(parent.state_dict(), strict=False)
    assert missing == ["query_gap.weight"] and not unexpected
    return parent, child


def sharpen(net, std=0.3):
    """Large random weights everywhere (query_gap included), so predictions depend strongly on
    what each position sees and any leak would show."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net.eval()


# -- exactness --------------------------------------------------------------------------------


def test_left_to_right_groups_of_one_equal_the_ar_parent_exactly():
    config = make_config()
    parent, child = parent_and_child(config)
    tokens = random_tokens()
    with torch.no_grad():
        ar = AutoregressiveObjective(config, MASK)
        torch.testing.assert_close(
            A3Objective(config, MASK).nelbo(child, tokens), ar.nelbo(parent, tokens)
        )
        groups = a3.left_to_right(len(tokens), L, 1)
        per_token = a3.token_log_likelihood(child, tokens, groups, MASK)
        torch.testing.assert_close(per_token, -ar.token_nll(parent, tokens))


@pytest.mark.parametrize(
    "groups",
    [
        [0, 1, 1, 2, 2],  # left to right, pairs
        [0, 3, 1, 2, 1],  # any order, any subset
        [0, 2, 2, 2, 1],
        [0, 0, 2, 1, 2],  # a given position (g = 0) is conditioned on, not scored
    ],
)
def test_the_likelihood_under_a_grouping_sums_to_one(groups):
    # clean tokens {0, 1, 2} (3 = MASK is never one); BOS fixed; every sequence of 4 tokens
    vocab, mask, length = 4, 3, 5
    config = make_config(vocab=vocab, length=length)
    net = sharpen(A3Transformer(config.model))
    groups = torch.tensor(groups)
    rows = list(itertools.product(range(mask), repeat=length - 1))
    tokens = torch.tensor([[0, *row] for row in rows])
    given = (groups[1:] == 0).nonzero()[:, 0] + 1
    tokens[:, given] = 1  # condition on x_given = 1: enumerate the other positions only
    tokens = tokens.unique(dim=0)
    with torch.no_grad():
        log_p = a3.log_likelihood(net, tokens, groups.expand(len(tokens), -1), mask)
    total = log_p.double().exp().sum()
    assert abs(total.item() - 1) < 1e-5, total
    assert log_p.exp().max() < 0.5  # far from uniform: the test has teeth


def test_a_query_never_sees_its_own_token_or_its_own_or_later_groups():
    config = make_config()
    net = sharpen(A3Transformer(config.model))
    generator = torch.Generator().manual_seed(3)
    tokens = random_tokens(6)
    for kind, size in [("random", 1), ("random", 3), ("spans", 2), ("prompt-first", 2)]:
        groups = a3.draw_groups(kind, len(tokens), L, size, generator)
        with torch.no_grad():
            before = a3.target_log_probs(net, tokens, groups, MASK)
            for k in range(1, int(groups.max()) + 1):
                hidden = groups >= k  # own group, later groups (and so each target itself)
                changed = torch.where(hidden, (tokens + 1 + torch.randint(0, 5, tokens.shape))
                                      % MASK, tokens)  # fmt: skip
                after = a3.target_log_probs(net, changed, groups, MASK)
                targets = groups[:, 1:] == k
                torch.testing.assert_close(after[targets], before[targets], rtol=0, atol=1e-5)
                # the earlier groups do matter (the perturbation test is not vacuous)
                seen = torch.where(groups < k, (tokens + 1) % MASK, tokens)
                seen[:, 0] = 0
                if k > 1:
                    moved = a3.target_log_probs(net, seen, groups, MASK)
                    difference = moved[targets][:, :MASK] - before[targets][:, :MASK]
                    assert difference.abs().max() > 1e-3


def test_groupings_are_valid_and_as_documented():
    generator = torch.Generator().manual_seed(0)
    n, length, size = 64, 33, 4
    for kind in a3.GROUPINGS:
        groups = a3.draw_groups(kind, n, length, size, generator, mean_span=4)
        assert (groups[:, 0] == 0).all() and (groups[:, 1:] >= 1).all(), kind
        for row in groups:
            counts = torch.bincount(row[1:])[1:]
            assert counts.max() <= size and (counts[:-1] > 0).all(), (kind, row)
    ordered = a3.left_to_right(2, 9, 3)
    assert ordered[0].tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3]
    # spans: the context comes first, left to right; the blanks after it
    context = torch.tensor([[True, False, False, True, True, False, True, True]])
    groups = a3.context_first(context, 2, generator)[0, 1:]
    assert groups[context[0]].tolist() == [1, 1, 2, 2, 3]
    assert sorted(groups[~context[0]].tolist()) == [4, 4, 5]


def test_curriculum_stages_follow_the_steps():
    stages = [A3Stage(10, "left-to-right", 1), A3Stage(5, "left-to-right", 4),
              A3Stage(1, "random", 8)]  # fmt: skip
    objective = A3Objective(make_config(curriculum=stages), MASK)
    labels = [objective.at_step(step) for step in (0, 9, 10, 14, 15, 1000)]
    assert labels == ["1/3 left-to-right:1", "1/3 left-to-right:1", "2/3 left-to-right:4",
                      "2/3 left-to-right:4", "3/3 random:8", "3/3 random:8"]  # fmt: skip
    config = load_config(None, ["family=a3", "a3.curriculum=[{steps: 3, grouping: spans}]"])
    assert config.a3.curriculum == [A3Stage(3, "spans", 1)]
    with pytest.raises(ConfigError, match=r"a3.curriculum\[0\].grouping must be one of"):
        load_config(None, ["family=a3", "a3.curriculum=[{grouping: sideways}]"])
    with pytest.raises(ConfigError, match="a3.group_size=0 must be at least 1"):
        load_config(None, ["family=a3", "a3.group_size=0"])


# -- decoding ---------------------------------------------------------------------------------


def test_left_to_right_decoding_of_an_adapted_model_is_ar_sampling():
    config = make_config()
    parent, child = parent_and_child(config)
    prefix = torch.tensor([[0, 5, 6], [0, 7, 8]])
    reference = sample_ar(parent, prefix, 20, torch.Generator().manual_seed(5), MASK)
    tokens = torch.cat((prefix, torch.full((2, 17), MASK)), 1)
    known = torch.arange(20) < 3
    ours = decode(child, tokens, known, MASK, torch.Generator().manual_seed(5))
    assert torch.equal(ours, reference)


@pytest.mark.parametrize(("order", "size"), [("left-to-right", 3), ("random", 2),
                                             ("confidence", 1), ("confidence", 4)])  # fmt: skip
def test_decoding_keeps_given_tokens_and_the_cache_changes_nothing(order, size):
    config = make_config()
    net = sharpen(A3Transformer(config.model), std=0.1)
    tokens = random_tokens(3, 24)
    known = torch.zeros(24, dtype=torch.bool)
    known[[0, 1, 2, 9, 10, 20]] = True  # a prompt and givens anywhere

    def draw(use_cache):
        generator = torch.Generator().manual_seed(2)
        return decode(net, tokens, known, MASK, generator, order, size, use_cache)

    cached, uncached = draw(True), draw(False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, known], tokens[:, known])
    assert not (cached == MASK).any()


def test_confidence_order_commits_the_most_confident_position_first():
    config = make_config()
    net = sharpen(A3Transformer(config.model), std=0.1)
    tokens = random_tokens(1, 8)
    known = torch.tensor([True, True, True, False, True, False, True, True])
    unknown_group = 9
    given = given_groups(known, 1)  # BOS 0, the givens 1..5 left to right, the others 9
    assert given.tolist() == [0, 1, 2, 9, 3, 9, 4, 5]

    def greedy(tokens, groups):
        """Argmax token and its log-probability at every target position."""
        with torch.no_grad():
            log_probs = a3.target_log_probs(net, tokens, groups[None], MASK)[0]
        return log_probs.argmax(-1), log_probs.max(-1).values

    start = torch.where(known, tokens, MASK)
    first_tokens, confidence = greedy(start, given)
    first = 3 if confidence[2] > confidence[4] else 5  # the more confident unknown position
    second = 8 - first
    expected = start.clone()
    expected[0, first] = first_tokens[first - 1]
    then = given.clone()
    then[first] = unknown_group - 1
    expected[0, second] = greedy(expected, then)[0][second - 1]
    ours = decode(net, tokens, known, MASK, None, "confidence", 1, temperature=0.0)
    assert torch.equal(ours, expected)


# -- infilling --------------------------------------------------------------------------------


def char_lm(family_config):
    texts = ["the cat sat on the mat. the dog sat on the log."] * 4
    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), texts)
    family_config.model.vocab_size = tokenizer.vocab_size
    return LanguageModel(family_config, tokenizer).eval()


def test_infill_syntax():
    assert parse_infill("The ___ sat on the ___[3].") == ["The", None, " sat on the", 3, "."]
    assert parse_infill("a_____b") == ["a", None, "b"]
    with pytest.raises(HdlmError, match="no blank"):
        parse_infill("no blanks here __ at all")
    with pytest.raises(HdlmError, match="length 0"):
        parse_infill("x ___[0] y")


def gap_oracle(lm, best: int, token: int, strength: float = 8.0):
    """Make `lm` an A3 model that predicts `token` almost surely from a query whose gap (unknown
    positions before the target) is `best`, and uniformly from every other query after a
    non-`token` input: zero weights (each block adds nothing), norms 1, the tied embedding of
    `token` and `query_gap[best]` along one axis."""
    with torch.no_grad():
        for name, p in lm.net.named_parameters():
            p.fill_(1.0 if "norm" in name else 0.0)
        lm.net.embed.weight[token, 0] = strength
        lm.net.query_gap.weight[best, 0] = 1.0
    return lm


def test_a_free_blank_gets_the_length_the_model_prefers():
    """Regression: the length scores multiplied -inf (blank log-probabilities) by 0, so every
    score was NaN and every free blank got 1 token. Here the text after the blank is likely
    exactly when 3 unknown positions precede it: the blank must get 3 tokens."""
    lm = char_lm(make_config(vocab=0))
    text = "the___ sat."
    space = lm.tokenizer.encode(" ")[0]
    for best in (3, 5):
        gap_oracle(lm, best, space)
        tokens, known = infill_template(lm, text, blank_max=6)
        assert (~known).sum() == best
        assert lm.decode(tokens[None])[0] == "the" + "<|mask|>" * best + " sat."
    texts = [lm.tokenizer.encode(piece) for piece in ("the", " sat.")]
    scores = blank_length_scores(lm, texts, [6], 0, blank_max=6)
    assert torch.isfinite(scores).all() and scores.argmax() == 4
    # every other length: the first scored token is uniform over the V - 1 clean ids
    uniform = math.log(lm.tokenizer.vocab_size - 1)
    assert scores[4] - scores[0] == pytest.approx(uniform, abs=1e-3)


def test_infilling_never_changes_the_given_tokens():
    torch.manual_seed(0)
    lm = char_lm(make_config(vocab=0))
    text = "the ___ sat on the ___[3]."
    tokens, known = infill_template(lm, text, blank_max=5)
    texts = [lm.tokenizer.encode(piece) for piece in ("the", " sat on the", ".")]
    scores = blank_length_scores(lm, texts, [5, 3], 0, blank_max=5)
    assert torch.isfinite(scores).all()  # a random model: every length has a finite score
    assert (~known).sum() - 3 == 1 + scores.argmax()  # the free blank got the most likely one
    for order in ("left-to-right", "confidence", "random"):
        filled = lm.sample(3, sampler="a3", infill=text, order=order, group_size=2, blank_max=5)
        assert filled.shape == (3, len(tokens))
        assert torch.equal(filled[:, known], tokens[known].expand(3, -1))
        assert not (filled == lm.tokenizer.mask_id).any()
        for line in lm.decode(filled):
            assert line.startswith("the") and line.endswith(".") and " sat on the" in line


# -- the family through the CLI ---------------------------------------------------------------


def test_a3_trains_saves_loads_evaluates_and_samples_from_the_cli(tmp_path, cache, capsys):
    from test_cli import run, train_args

    ar_out, out = tmp_path / "ar", tmp_path / "a3"
    code, _, err = run(train_args(ar_out, cache, "--set", "train.steps=20"), capsys)
    assert code == 0, err
    ar_val = [json.loads(line)["val_loss"] for line in (ar_out / "metrics.jsonl").open()
              if "val_loss" in line][-1]  # fmt: skip
    curriculum = "[{steps: 2, grouping: left-to-right}, {steps: 2, group_size: 2}, {grouping: random, group_size: 4}]"  # noqa: E501
    args = train_args(out, cache, "--set", "family=a3", "--set", "train.steps=6",
                      "--set", f"train.init_from={ar_out}", "--set", f"a3.curriculum={curriculum}",
                      "--set", "train.log_every=1")  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # before any step the adapted model is its AR parent
    assert abs(records[0]["val_loss"] - ar_val) < 1e-4
    stages = [r["stage"] for r in records if "stage" in r]
    assert (
        stages == ["1/3 left-to-right:1"] * 2 + ["2/3 left-to-right:2"] * 2 + ["3/3 random:4"] * 2
    )

    lm = hdlm.load(out)
    again = hdlm.load(lm.save(tmp_path / "copy"))
    tokens = lm.sample(2, 20, seed=1)
    assert tokens.shape == (2, 20) and torch.equal(tokens, again.sample(2, 20, seed=1))

    code, text, err = run(["eval", str(out), "--split", "validation", *cache], capsys)
    assert code == 0, err
    ordered = json.loads(text)
    assert ordered["family"] == "a3" and ordered["nelbo_per_token"] > ordered["entropy_floor"]
    code, text, err = run(["eval", str(out), "--split", "validation", "--set",
                           "a3.eval_order=random", *cache], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(text)["nelbo_per_token"] != ordered["nelbo_per_token"]

    code, text, err = run(["sample", str(out), "-n", "2", "--infill", "一丁___[4]丂七___上下",
                           "--order", "confidence", "--group-size", "2"], capsys)  # fmt: skip
    assert code == 0, err
    samples = [s.strip() for s in text.split("=== sample")[1:]]
    assert len(samples) == 2
    for sample in samples:
        body = sample.split("\n", 1)[1]
        # (a filled token may be <|endoftext|>, so positions are checked by the API tests)
        assert body.startswith("一丁") and "丂七" in body and body.endswith("上下")
    code, _, err = run(["sample", str(ar_out), "--infill", "一___丁"], capsys)
    assert code == 2 and "a3" in err


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HDLM_CACHE_DIR_FOR_TESTS", str(tmp_path / "cache"))
    return ["--set", f"data.cache_dir={tmp_path / 'cache'}"]


def test_a_bad_a3_option_is_a_clear_error():
    config = make_config()
    net = A3Transformer(config.model).eval()
    with pytest.raises(HdlmError, match="unknown A3 order"):
        decode(net, random_tokens(1), torch.arange(L) < 2, MASK, order="sideways")
