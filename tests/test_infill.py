"""Infilling for every family that can: the conditional likelihoods (A3 exact, masked diffusion
a bound) and the samplers (given tokens never change; given tokens play the role clean tokens had
in training; the cache changes nothing)."""

import itertools
import math

import pytest
import torch
from helpers import TOKENIZER, language_model
from test_a3 import sharpen

from hdlm.errors import HdlmError
from hdlm.eval.perplexity import infill_metrics, middle_span
from hdlm.readout import clean_log_probs
from hdlm.sampling import fill
from hdlm.sampling.prompt import fixed_template

TEMPLATE = "ab___[3]cd___[2]e"


def template(lm, n=3):
    tokens, known = fixed_template(lm, TEMPLATE)
    return tokens.expand(n, -1).clone(), known


@pytest.mark.parametrize(
    "family, options, sampler",
    [
        ("mdlm", {}, "ancestral"),
        ("mdlm", {}, "acs"),
        ("eps-hybrid", {"eps": 0.1}, "acs"),
        ("hyperschedule", {"schedule": "slide:4:3", "attention": "schedule"}, "ancestral"),
        ("gamma-hybrid", {"gamma": 0.2}, "tweedie"),
    ],
)
def test_masked_infilling_keeps_given_tokens_and_the_cache_changes_nothing(
    family, options, sampler
):
    lm = language_model(family, **options)
    tokens, known = template(lm)
    schedule = options.get("schedule", "flat:8")
    eta = {"eta": 0.3} if sampler == "acs" else {}  # the other samplers have no eta
    cache = [{"use_cache": True}, {"use_cache": False}] if sampler != "tweedie" else [{}, {}]
    runs = [fill(lm, tokens, known, sampler, seed=3, schedule=schedule, **eta, **c) for c in cache]
    assert torch.equal(runs[0], runs[1])
    filled = runs[0]
    assert torch.equal(filled[:, known], tokens[:, known])
    assert not (filled == TOKENIZER.mask_id).any()


def test_given_tokens_see_every_position_in_a_full_attention_model(monkeypatch):
    """For a model trained with full attention (mdlm) the sampler's first step must compute
    exactly the training forward pass on the template: given tokens clean, blanks masked."""
    from hdlm.sampling import hyperschedule

    lm = language_model("mdlm")
    sharpen(lm.net)
    tokens, known = template(lm, n=2)
    seen = []
    original = hyperschedule.NetworkView.hidden_at

    def spy(self, *args):
        hidden = original(self, *args)
        seen.append(self.log_probs(hidden))
        return hidden

    monkeypatch.setattr(hyperschedule.NetworkView, "hidden_at", spy)
    fill(lm, tokens, known, "ancestral", schedule="flat:4")
    x_t = torch.where(known, tokens, TOKENIZER.mask_id)[:, 1:]
    t = torch.ones_like(x_t, dtype=torch.float)
    expected = lm.objective.layout.log_probs(lm.net, tokens, x_t, t, torch.ones_like(x_t))
    blanks = ~known[1:]
    torch.testing.assert_close(seen[0], expected[:, blanks])


def test_free_blanks_and_ar_infilling_are_clear_errors():
    lm = language_model("mdlm")
    with pytest.raises(HdlmError, match=r"___\[N\]"):
        lm.sample(1, infill="ab___cd")
    ar = language_model("ar")
    tokens, known = template(ar, n=1)
    with pytest.raises(HdlmError, match="infill with an a3 or masked model"):
        fill(ar, tokens, known, "ar")


# -- conditional likelihoods --------------------------------------------------------------------


def all_fills(tokens, hidden, vocab):
    """Every way of filling the hidden positions of one block with ids < vocab, [vocab^h, L]."""
    where = hidden.nonzero()[:, 0] + 1
    rows = []
    for values in itertools.product(range(vocab), repeat=len(where)):
        row = tokens.clone()
        row[where] = torch.tensor(values)
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("order", ["left-to-right", "random"])
def test_a3_infilling_likelihood_is_a_distribution_over_the_blanks(order):
    """Σ over every filling of the blanks of p(blanks | the rest) = 1, exactly. (Rows are scored
    one at a time: a random order is drawn per row, and the sum must use one order.)"""
    lm = language_model("a3", a3={"eval_order": order})
    sharpen(lm.net, 0.5)
    tokens, _ = template(lm, n=1)
    tokens = torch.where(tokens == TOKENIZER.mask_id, 9, tokens)[0, :8]
    hidden = torch.tensor([False, True, False, False, True, False, False])
    fills = all_fills(tokens, hidden, TOKENIZER.mask_id)  # every id but MASK
    nll = torch.cat([lm.nelbo(row[None], hidden[None]) for row in fills])
    torch.testing.assert_close(nll.double().neg().exp().sum(), torch.tensor(1.0).double())


def test_one_hidden_token_has_the_exact_conditional_under_mdlm():
    """With one hidden position the count estimator has k = 1 always: the bound is exactly
    -log p(x_i | every other token clean, x_i masked), one forward pass."""
    lm = language_model("mdlm")
    sharpen(lm.net)
    tokens, _ = template(lm, n=2)
    tokens = torch.where(tokens == TOKENIZER.mask_id, 5, tokens)
    hidden = torch.zeros(tokens.shape[1] - 1, dtype=torch.bool)
    hidden[4] = True
    bound = lm.nelbo(tokens, hidden.expand(2, -1))
    x_t = tokens[:, 1:].clone()
    x_t[:, 4] = TOKENIZER.mask_id
    out = lm.net(torch.cat((tokens[:, :1], x_t), 1), causal=False)
    read = lm.objective.layout.read_index(tokens.shape[1], tokens.device)[4]
    exact = -clean_log_probs(out[:, read], TOKENIZER.mask_id).gather(-1, tokens[:, 5:6])[:, 0]
    torch.testing.assert_close(bound, exact)


def test_conditional_nelbo_with_nothing_given_is_the_nelbo():
    lm = language_model("eps-hybrid", eps=0.1)
    tokens, _ = template(lm, n=2)
    tokens = torch.where(tokens == TOKENIZER.mask_id, 7, tokens)
    everything = torch.ones(2, tokens.shape[1] - 1, dtype=torch.bool)
    torch.testing.assert_close(lm.nelbo(tokens, everything), lm.nelbo(tokens))


def test_infilling_nelbo_needs_a_model_that_has_one():
    tokens = torch.zeros(1, 25, dtype=torch.long)
    hidden = torch.ones(1, 24, dtype=torch.bool)
    middle = hidden.clone()
    middle[:, -3:] = False  # text after the hidden span: an ar model never sees it
    for family, mask, error in [("ar", middle, "continuation"), ("gamma-hybrid", hidden, "gamma")]:
        with pytest.raises(HdlmError, match=error):
            language_model(family).nelbo(tokens, mask)
    block = language_model("hyperschedule", schedule="block:6:3", attention="schedule")
    with pytest.raises(HdlmError, match="time=count"):
        block.nelbo(tokens, hidden)


# -- the infilling metrics ----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["a3", "mdlm"])
def test_infill_metrics_of_a_uniform_model(family):
    """A model with zero weights predicts uniformly over the V - 1 non-MASK ids: its span NLL is
    log(V - 1) per token exactly (A3 exact, mdlm's count bound too), and a greedy fill writes id
    0 everywhere, so the accuracy is the share of hidden tokens that are 0."""
    lm = language_model(family, a3={"eval_order": "random"} if family == "a3" else None)
    with torch.no_grad():
        for p in lm.net.parameters():
            p.zero_()
    blocks = torch.randint(1, TOKENIZER.mask_id, (6, 25))
    blocks[:, 0] = TOKENIZER.bos_id
    tokens, hidden = middle_span(blocks, 21, 6)
    assert hidden.nonzero()[:, 0].tolist() == [7, 8, 9, 10, 11, 12]
    tokens[:, 8:14:2] = 0  # half the hidden tokens are id 0
    result = infill_metrics(lm, tokens, hidden, batch_size=4, progress=False)
    assert result["span_nll_per_token"] == pytest.approx(math.log(TOKENIZER.mask_id), rel=1e-6)
    assert result["accuracy"] == 0.5
    assert result["spans"] == 6 and result["span_tokens"] == 6


def test_a_bad_infilling_task_is_a_clear_error():
    with pytest.raises(HdlmError, match="span"):
        middle_span(torch.zeros(2, 16, dtype=torch.long), 16, 15)
