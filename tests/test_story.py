"""Story infilling (`hdlm.eval.story`, `hdlm eval --metrics story-infill`): layouts, ROUGE, every
family's sampler, and the CLI."""

import copy
import json
import string

import pytest
import torch
from helpers import TOKENIZER, language_model
from test_cli import error_line
from test_zero_shot import run

import hdlm.sampling
from hdlm.config import TokenizerConfig
from hdlm.data.tokenizer import build_tokenizer
from hdlm.eval.story import (
    encode_story,
    load_stories,
    rouge_scores,
    split_sentences,
    story_infill_metrics,
    token_accuracy,
)
from hdlm.model import LanguageModel

STORIES = [
    ["ab cd.", "ef gh.", "ij kl.", "mn op.", "qr st."],
    ["a b.", "c d.", "e f g.", "h i.", "j k."],
    ["ab cd.", "ef gh.", "ij kx.", "mn op.", "qr st."],  # the layout of the first story
]


def text_model(family):
    """A random tiny model whose character tokenizer covers the stories' text (lossless)."""
    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), [string.ascii_letters + " .!?"])
    config = copy.deepcopy(language_model(family).config)
    config.model.vocab_size = tokenizer.vocab_size
    return LanguageModel(config, tokenizer).eval()


def test_a_story_filled_with_its_own_ground_truth_scores_one(monkeypatch):
    """An oracle sampler that leaves the true sentence 3 in place: ROUGE-1/2/L and token
    accuracy are 1.0, through the whole pipeline (layouts, batches, decoding)."""
    calls = []

    def oracle(lm, tokens, known, **options):
        calls.append((len(tokens), int((~known).sum())))
        return tokens  # story rows carry the reference in the blank

    monkeypatch.setattr(hdlm.sampling, "fill", oracle)
    stories = [
        ["A cat sat.", "It was tired.", "It slept.", "No one woke it.", "The end."],
        *STORIES,
    ]
    lm = text_model("a3")
    result = story_infill_metrics(lm, stories, progress=False)
    assert result["rouge1"] == result["rouge2"] == result["rougeL"] == 1.0
    assert result["token_accuracy"] == 1.0 and result["stories"] == 4
    assert sorted(calls) == [(1, 7), (1, 10), (2, 7)]  # stories 1 and 3 share a layout
    assert rouge_scores(["The cat sat."], ["a dog ran"]) == dict.fromkeys(
        ("rouge1", "rouge2", "rougeL"), 0.0
    )


def test_rouge_and_accuracy_of_partial_matches():
    scores = rouge_scores(["the cat sat on the mat"], ["the cat sat"])
    assert scores["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # precision 1, recall 1/2
    assert token_accuracy([[1, 2, 3, 4]], [[1, 9, 3]]) == 0.5  # a missing token counts wrong


@pytest.mark.parametrize(
    "family, options",
    [("ar", {}), ("a3", {}), ("mdlm", {}), ("eps-hybrid", {"sampler": "acs"}),
     ("gamma-hybrid", {"sampler": "tweedie"})],
)  # fmt: skip
def test_every_family_fills_sentence_three_keeping_the_rest(family, options, monkeypatch):
    lm = language_model(family)
    seen = []
    real_fill = hdlm.sampling.fill

    def spy(lm, tokens, known, **kwargs):
        out = real_fill(lm, tokens, known, **kwargs)
        seen.append(torch.equal(out[:, known], tokens[:, known]))
        return out

    monkeypatch.setattr(hdlm.sampling, "fill", spy)
    result = story_infill_metrics(lm, STORIES, progress=False, **options)
    assert all(seen) and len(seen) == 2  # two layouts
    assert result["reference_tokens"] == sum(len(TOKENIZER.encode(" " + s[2])) for s in STORIES)
    assert 0 <= result["token_accuracy"] <= 1 and set(result) >= {"rouge1", "rouge2", "rougeL"}
    has_nll = family in ("ar", "a3", "mdlm", "eps-hybrid")
    assert ("span_nll_per_token" in result) == has_nll
    assert result["context"] == (
        "sentences 1-2 only" if family == "ar" else "sentences 1-2 and 4-5"
    )


def test_ar_sees_sentences_one_and_two_only_and_its_span_nll_is_exact():
    lm = language_model("ar")
    story = encode_story(lm.tokenizer, STORIES[1])
    result = story_infill_metrics(lm, [STORIES[1]], progress=False)
    tokens = torch.tensor([[lm.tokenizer.bos_id, *story.prefix, *story.middle]])
    hidden = torch.zeros(1, tokens.shape[1] - 1, dtype=torch.bool)
    hidden[:, len(story.prefix) :] = True
    exact = lm.nelbo(tokens, hidden).item() / len(story.middle)
    assert result["span_nll_per_token"] == pytest.approx(exact, rel=1e-6)


def test_a3_picks_the_length_of_sentence_three_when_it_is_free():
    lm = language_model("a3")
    result = story_infill_metrics(lm, STORIES, length="free", blank_max=5, progress=False)
    assert result["length"] == "free" and result["fill"]["blank_max"] == 5
    with pytest.raises(Exception, match="a3 model"):
        story_infill_metrics(language_model("mdlm"), STORIES, length="free", progress=False)


def test_stories_from_sentence_fields_or_split_text(tmp_path):
    path = tmp_path / "stories.jsonl"
    rows = [
        {f"sentence{i + 1}": s for i, s in enumerate(STORIES[0])},
        {"text": 'One. Two is here! Three? Four "quoted." Five.'},
        {"text": "Only two. Sentences here."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stories, skipped = load_stories(str(path))
    assert stories[0] == STORIES[0] and skipped == 1
    assert stories[1] == ["One.", "Two is here!", "Three?", 'Four "quoted."', "Five."]
    assert split_sentences("It is 3.5 m. Then e.g. x. Yes") == [
        "It is 3.5 m.",
        "Then e.g. x.",
        "Yes",
    ]


def test_story_infill_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "stories.jsonl"
    rows = [{f"sentence{i + 1}": sentence for i, sentence in enumerate(s)} for s in STORIES]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "bad.jsonl").write_text('{"title": "no sentences"}\n')
    for family in ("ar", "mdlm", "a3"):
        checkpoint = str(language_model(family).save(tmp_path / family))
        args = ["eval", checkpoint, "--metrics", "story-infill", "--data", str(path),
                "--json", str(tmp_path / f"{family}.json")]  # fmt: skip
        code, out, err = run(args, capsys)
        assert code == 0, err
        result = json.loads(out)["story_infill"]
        assert result["stories"] == 3 and result["fill"]["temperature"] == 0.0
    a3 = str(tmp_path / "a3")
    free = ["eval", a3, "--metrics", "story-infill", "--data", str(path), "--story-length", "free"]
    code, out, err = run([*free, "--blank-max", "4"], capsys)
    assert code == 0 and json.loads(out)["story_infill"]["length"] == "free", err
    for extra, message in [
        (["--data", str(tmp_path / "bad.jsonl")], "sentence1"),
        (["--data", str(tmp_path / "none.jsonl")], "not found"),
        (["--data", str(path), "--metrics", "story-infill,ppl"], "separately"),
    ]:
        code, _, err = run(["eval", str(tmp_path / "mdlm"), "--metrics", "story-infill", *extra],
                           capsys)  # fmt: skip
        assert code == 2 and message in error_line(err), err
    code, _, err = run(["eval", str(tmp_path / "mdlm"), "--metrics", "story-infill"], capsys)
    assert code == 2 and "--data" in error_line(err)
