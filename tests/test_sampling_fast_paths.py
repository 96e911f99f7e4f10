"""The samplers' fast paths are exact: skipping the network when its input did not change, and
proposing tokens only for the entries a reverse step actually changes."""

import pytest
import torch
from helpers import TOKENIZER, language_model

from hdlm.processes import Absorbing
from hdlm.sampling import sample


def count_calls(lm, monkeypatch) -> list[int]:
    """A counter of the network's forward calls."""
    calls = [0]
    original = lm.net.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(lm.net, "forward", counted)
    return calls


@pytest.mark.parametrize(
    ("family", "sampler", "options"),
    [("mdlm", "ancestral", {}), ("gamma-hybrid", "tweedie", {"gamma": 0.0})],
)
def test_skipping_the_network_when_nothing_changed_is_exact(family, sampler, options, monkeypatch):
    """An unconditioned model's output depends on the tokens only: a step whose tokens did not
    change reuses the last output. Declaring the model conditioned (it then ignores the levels
    it is given) turns the skip off: same tokens, more network calls."""
    lm = language_model(family, **options)
    calls = count_calls(lm, monkeypatch)
    runs = {}
    for conditioned in (False, True):
        lm.objective.layout.conditioned = conditioned
        calls[0] = 0
        tokens = sample(lm, 2, 25, sampler=sampler, schedule="flat:48", seed=5)
        runs[conditioned] = tokens, calls[0]
    assert torch.equal(runs[False][0], runs[True][0])
    assert runs[False][1] < runs[True][1] == 48


@pytest.mark.parametrize("correction", ["none", "acs", "remask"])
def test_reverse_step_proposes_exactly_the_tokens_it_changes(correction):
    process = Absorbing(mask_id=TOKENIZER.mask_id)
    generator = torch.Generator().manual_seed(0)
    current = torch.randint(0, 5, (6, 40))
    current[:, ::2] = TOKENIZER.mask_id
    t, s = torch.full((40,), 0.6), torch.full((40,), 0.3)
    asked = []

    def propose(needed):
        asked.append(needed.clone())
        return 10 + torch.arange(int(needed.sum()))  # distinct ids, in row-major order

    updated, events = process.reverse_step(current, t, s, propose, generator, correction, 0.5)
    (needed,) = asked
    assert torch.equal(needed, events["revealed"] | (needed & (current != TOKENIZER.mask_id)))
    assert torch.equal(updated[needed], 10 + torch.arange(int(needed.sum())))
    assert set(events) == {"revealed"} | {"acs": {"corrected"}, "remask": {"remasked"}}.get(
        correction, set()
    )  # an event a correction cannot cause is not reported
    unchanged = ~needed & ~events.get("remasked", torch.zeros_like(needed))
    assert torch.equal(updated[unchanged], current[unchanged])
    assert events["revealed"].any()
    if correction == "acs":
        assert events["corrected"].any() and torch.equal(
            events["corrected"], needed & (current != TOKENIZER.mask_id)
        )


@pytest.mark.parametrize("method", ["tweedie_step", "euler_step"])
def test_tau_leaping_steps_read_unnormalised_scores_as_their_softmax(method):
    """The τ-leaping steps normalise only the rows they read: unnormalised log-scores (a constant
    per position off, MASK at any value) give the same step as the log-probabilities."""
    from hdlm.processes import GammaHybrid, SigmaSchedule

    vocab, mask_id = 12, 11
    process = GammaHybrid(0.3, mask_id, vocab, SigmaSchedule.parse("loglinear"))
    scores = torch.randn(3, 30, vocab, generator=torch.Generator().manual_seed(0))
    data = scores.clone()
    data[..., mask_id] = float("-inf")
    log_probs = data.log_softmax(-1)
    shifted = scores + 5 * torch.randn(3, 30, 1)  # unnormalised, MASK with a finite score
    x_t = torch.randint(0, vocab, (3, 30), generator=torch.Generator().manual_seed(1))
    t, s = torch.full((3, 30), 0.7), torch.full((3, 30), 0.4)
    steps = [
        getattr(process, method)(lp, x_t, t, s, torch.Generator().manual_seed(2))
        for lp in (log_probs, shifted)
    ]
    assert torch.equal(steps[0], steps[1])
    assert (steps[0] != x_t).any()


def test_categorical_draws_follow_the_probabilities_and_never_a_zero(monkeypatch):
    from hdlm.sampling.tokens import categorical

    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    draws = categorical(probs.expand(20000, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=6).float() / 20000
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)
    # the extreme uniforms, 0 and the largest float below 1, still draw tokens of positive mass
    for u in (0.0, 1 - 2**-24):

        def rand(shape, generator=None, device=None, dtype=None, u=u):
            return torch.full(shape, u, device=device, dtype=dtype)

        monkeypatch.setattr(torch, "rand", rand)
        assert categorical(probs[None] * 7, None).item() == (1 if u == 0 else 4)
