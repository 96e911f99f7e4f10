"""Scoring a continuation given a context (`hdlm.eval.scoring`): exact identities for ar and a3, the
conditional bound for masked diffusion, windows that score every token once, multiple choice."""

import pytest
import torch
from helpers import TOKENIZER, language_model

from hdlm import a3
from hdlm.errors import HdlmError
from hdlm.eval.scoring import a3_groups, encode_pair, score_requests, windows
from hdlm.sampling import fill

CONTEXT, CONTINUATION = "quickbrownfox", "jumpsover"  # 22 tokens: fits the window (24)


def request(lm, context=CONTEXT, continuation=CONTINUATION):
    return encode_pair(lm.tokenizer, context, continuation)


def row(lm, context_ids, continuation_ids):
    """[BOS, context, continuation] and the continuation's positions [1, L-1]."""
    tokens = torch.tensor([[lm.tokenizer.bos_id, *context_ids, *continuation_ids]])
    hidden = torch.zeros(1, tokens.shape[1] - 1, dtype=torch.bool)
    hidden[:, len(context_ids) :] = True
    return tokens, hidden


def test_ar_loglikelihood_is_the_models_own_nll_of_the_continuation():
    lm = language_model("ar")
    context, continuation = request(lm)
    tokens, hidden = row(lm, context, continuation)
    [score] = score_requests(lm, [(context, continuation)])
    # the model's own NLL of the continuation (nelbo scores a suffix for ar): exactly equal
    assert score.logprob == -lm.nelbo(tokens, hidden).item()
    own = lm.objective.token_nll(lm.net, tokens)[:, len(context) :].sum()  # summed in another order
    assert score.logprob == pytest.approx(-own.item(), abs=1e-5)
    # batched with longer and shorter requests (right padding): the same up to float rounding
    others = [request(lm, "ab", "cdefghijklmnopqrst"), request(lm, "", "a")]
    batched = score_requests(lm, [*others, (context, continuation)], batch_size=3)
    assert batched[-1].logprob == pytest.approx(score.logprob, abs=1e-4)
    assert [s.tokens for s in batched] == [18, 1, len(continuation)]


def test_a3_left_to_right_equals_ar_style_scoring_of_the_same_network():
    lm = language_model("a3", a3={"eval_order": "left-to-right"})
    context, continuation = request(lm)
    tokens, _ = row(lm, context, continuation)
    groups = a3.left_to_right(1, tokens.shape[1])
    per_token = a3.token_log_likelihood(lm.net, tokens, groups, lm.tokenizer.mask_id)
    [score] = score_requests(lm, [(context, continuation)])
    assert score.logprob == pytest.approx(per_token[:, len(context) :].sum().item(), abs=1e-5)
    padded = score_requests(
        lm, [request(lm, "ab", "cdefghijklmnopqrstuv"), (context, continuation)]
    )
    assert padded[1].logprob == pytest.approx(score.logprob, abs=1e-4)


def test_a3_random_order_is_the_exact_conditional_of_the_models_evaluation_grouping():
    """Without padding `a3_groups` is `a3.context_first` with the same keys, so the score is
    `LanguageModel.nelbo(tokens, hidden)` under `a3.eval_order=random` (same seed)."""
    lm = language_model("a3", a3={"eval_order": "random", "eval_group_size": 2})
    context, continuation = request(lm)
    tokens, hidden = row(lm, context, continuation)
    [score] = score_requests(lm, [(context, continuation)])
    assert score.logprob == pytest.approx(-lm.nelbo(tokens, hidden).item(), abs=1e-5)
    # and padding never changes what a real position sees
    keys = torch.rand(2, 6)
    scored = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    real = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    groups = a3_groups(scored, real, 1, keys)
    assert groups[0, 5:].tolist() == [7, 7] and groups[0, :3].tolist() == [0, 1, 2]
    assert sorted(groups[0, 3:5].tolist()) == [3, 4]
    assert sorted(groups[1, 2:].tolist()) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("family", ["ar", "a3"])
def test_is_greedy_says_whether_greedy_decoding_produces_the_continuation(family):
    lm = language_model(family)
    context, _ = request(lm)
    prompt = torch.tensor([[lm.tokenizer.bos_id, *context, *[lm.tokenizer.mask_id] * 5]])
    known = torch.arange(prompt.shape[1]) <= len(context)
    greedy = fill(lm, prompt, known, temperature=0.0)[0, 1 + len(context) :].tolist()
    wrong = [*greedy[:-1], (greedy[-1] + 1) % lm.tokenizer.mask_id]
    scores = score_requests(lm, [(context, greedy), (context, wrong)])
    assert [s.is_greedy for s in scores] == [True, False]


def test_masked_diffusion_scores_the_conditional_nelbo_with_its_monte_carlo_budget():
    lm = language_model("mdlm")
    context, continuation = request(lm)
    tokens, hidden = row(lm, context, continuation)
    for samples in (4, 96):
        [score] = score_requests(lm, [(context, continuation)], mc_samples=samples)
        bound = lm.nelbo(tokens, hidden, samples=samples).item()
        assert score.logprob == pytest.approx(-bound, abs=1e-5)
    assert lm.nelbo(tokens, hidden, samples=4).item() != pytest.approx(bound, abs=1e-6)


def test_families_without_a_conditional_bound_score_whole_windows_only():
    lm = language_model("block-diffusion", schedule="block:8:4")
    context, continuation = request(lm)
    [whole] = score_requests(lm, [([], continuation)])
    tokens, _ = row(lm, [], continuation)
    assert whole.logprob == pytest.approx(-lm.nelbo(tokens).item(), abs=1e-5)
    assert not whole.is_greedy  # no one-step greedy reading for these families
    with pytest.raises(HdlmError, match="no likelihood bound of a continuation"):
        score_requests(lm, [(context, continuation)])


def test_windows_score_every_continuation_token_once_with_the_context_that_fits():
    context, continuation = list(range(100, 105)), list(range(12))
    for width, stride in [(4, None), (4, 2), (6, 1), (20, None), (3, 3)]:
        spans = windows(context, continuation, width, stride)
        scored = [i for ids, n in spans for i in ids[len(ids) - n :]]
        assert scored == continuation
        assert all(len(ids) <= width for ids, _ in spans)
    # stride = width: fixed blocks, no context; smaller strides: width - stride tokens of context
    assert windows([], list(range(7)), 3, 3) == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6], 1)]
    assert windows([9], [0, 1, 2], 3, 1) == [([9, 0], 1), ([9, 0, 1], 1), ([0, 1, 2], 1)]
    # a continuation that fits is one window with as much context as fits
    assert windows(context, [0, 1], 4) == [([103, 104, 0, 1], 2)]


def test_score_choices_batches_choices_and_normalises_by_length():
    lm = language_model("ar")
    choices = ["abc", "defgh", "i"]
    scores = lm.score_choices("xyz", choices, batch_size=2)
    alone = [lm.score_choices("xyz", [c])[0] for c in choices]
    for score, single, choice in zip(scores, alone, choices, strict=True):
        assert score.choice == choice and score.tokens == len(choice)  # one char per token
        assert score.logprob == pytest.approx(single.logprob, abs=1e-4)
        assert score.logprob_per_token == pytest.approx(score.logprob / len(choice))
        assert score.logprob_per_byte == pytest.approx(score.logprob / len(choice.encode()))
    with pytest.raises(HdlmError, match="at least one choice"):
        lm.score_choices("xyz", [])


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation():
    assert encode_pair(TOKENIZER, "ab ", "cd") == (TOKENIZER.encode("ab"), TOKENIZER.encode(" cd"))
    assert encode_pair(TOKENIZER, "", "cd") == ([], TOKENIZER.encode("cd"))
