"""Hyperschedule sampler identities: cache = no cache, quenched AR = AR, ACS(η=0) = ancestral."""

import pytest
import torch
from helpers import TOKENIZER, language_model

from hdlm.sampling import sample
from hdlm.sampling.hyperschedule import Trace


@pytest.mark.parametrize("schedule", ["block:6:3", "slide:4:3", "block:5:1"])
@pytest.mark.parametrize("prompt", [None, "abcdefg"])
@pytest.mark.parametrize("sampler", ["ancestral", "acs"])
def test_cached_and_uncached_sampling_are_identical(schedule, prompt, sampler):
    lm = language_model("hyperschedule", schedule=schedule, attention="schedule")
    options = dict(sampler=sampler, prompt=prompt, schedule=schedule, seed=4)
    options |= {"eta": 0.3} if sampler == "acs" else {}  # (ancestral has no eta)
    traces = Trace(), Trace()
    cached = sample(lm, 3, 25, use_cache=True, trace=traces[0], **options)
    uncached = sample(lm, 3, 25, use_cache=False, trace=traces[1], **options)
    assert torch.equal(cached, uncached)
    assert not (cached == TOKENIZER.mask_id).any()
    assert len(traces[0].tokens) == len(traces[1].tokens) > 1


def test_cached_logits_equal_uncached_logits_at_every_step(monkeypatch):
    from hdlm.sampling import hyperschedule

    logged = {True: [], False: []}
    original = hyperschedule.NetworkView.log_probs

    def spy(self, *args):
        out = original(self, *args)
        logged[self.cache is not None].append(out)
        return out

    monkeypatch.setattr(hyperschedule.NetworkView, "log_probs", spy)
    lm = language_model("hyperschedule", schedule="slide:4:3", attention="schedule")
    for use_cache in (True, False):
        sample(lm, 2, 25, sampler="ancestral", prompt="abc", seed=1, use_cache=use_cache)
    assert len(logged[True]) == len(logged[False]) > 5
    for a, b in zip(logged[True], logged[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_quenched_ar_walk_reproduces_the_ar_sampler(temperature):
    lm = language_model("ar")
    for prompt in (None, "hello"):
        ar = sample(lm, 3, 25, sampler="ar", prompt=prompt, seed=7, temperature=temperature)
        walked = sample(lm, 3, 25, sampler="ancestral", schedule="quenched_ar", prompt=prompt,
                        seed=7, temperature=temperature)  # fmt: skip
        assert torch.equal(ar, walked)


def test_acs_with_eta_zero_is_ancestral_and_corrects_only_in_flight_tokens():
    lm = language_model("eps-hybrid", schedule="flat:1000", eps=0.05)
    options = dict(prompt="abcd", seed=2, steps=24)
    ancestral = sample(lm, 4, 25, sampler="ancestral", **options)
    assert torch.equal(ancestral, sample(lm, 4, 25, sampler="acs", eta=0.0, **options))
    trace = Trace()
    corrected = sample(lm, 4, 25, sampler="acs", eta=0.5, trace=trace, **options)
    assert torch.stack(trace.corrected).any()  # previously visible tokens were re-drawn
    assert (corrected[:, 1:5] == torch.tensor(TOKENIZER.encode("abcd"))).all()
    assert not torch.stack(trace.corrected)[:, :, :4].any()  # never the prompt


def test_remasking_remasks_and_still_finishes():
    lm = language_model("mdlm", schedule="flat:1000")
    trace = Trace()
    tokens = sample(lm, 4, 25, sampler="remask", eta=0.2, steps=32, trace=trace)
    assert torch.stack(trace.remasked).any()
    assert not (tokens == TOKENIZER.mask_id).any()


def test_trace_is_drawn_as_html_and_png(tmp_path):
    from hdlm.sampling.trace import trace_states, write_trace

    lm = language_model("eps-hybrid", schedule="flat:1000", eps=0.05)
    trace = Trace()
    sample(lm, 2, 25, sampler="acs", eta=0.5, steps=12, trace=trace, prompt="ab")
    states = trace_states(trace, TOKENIZER.mask_id)
    assert states.shape == (12, 24) and (states[-1] != 0).all()  # nothing masked at the end
    assert (states[:, :2] == 1).all()  # the prompt is visible throughout
    page = write_trace(trace, TOKENIZER, tmp_path / "t.html").read_text()
    assert page.count("<tr>") == 12 and "corrected" in page
    assert write_trace(trace, TOKENIZER, tmp_path / "t.png").stat().st_size > 1000
