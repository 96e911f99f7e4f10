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
    unchanged = ~needed & ~events["remasked"]
    assert torch.equal(updated[unchanged], current[unchanged])
    assert events["revealed"].any()
    if correction == "acs":
        assert events["corrected"].any() and torch.equal(
            events["corrected"], needed & (current != TOKENIZER.mask_id)
        )
