"""The eps-chain sampler samples the chain the ε-hybrid NELBO bounds (issue 20, part 1).

An enumerable case: V = 4 ids including MASK ('a', UNK, EOS and MASK: N = 3 data ids), blocks of
BOS + 3 tokens, a fixed random network made peaky. Every state of the reverse walk is
enumerated, so the distribution of the sampler's output is known exactly and compared with the
sampler's empirical one; the NELBO, also computed exactly, bounds -log p of the chain it was
derived for (the continuous-time chain: reveals in a uniformly random order, then the
reconstruction) at every sequence.
"""

import dataclasses
import itertools
import math

import pytest
import torch

from hdlm.config import RunConfig, TokenizerConfig, complete
from hdlm.data.tokenizer import build_tokenizer
from hdlm.errors import HdlmError
from hdlm.model import LanguageModel
from hdlm.schedules import from_spec

TOKENIZER = build_tokenizer(TokenizerConfig(kind="char"), ["a"])
MASK, N, POSITIONS = TOKENIZER.mask_id, 3, 3
BOS = TOKENIZER.bos_id
EPS = 0.3  # large, so that the mixture and the reconstruction matter
OUTCOMES = [list(x) for x in itertools.product(range(N), repeat=POSITIONS)]  # MASK is 3 = N


def chain_model(readout: str, eps: float = EPS) -> LanguageModel:
    """A fixed random eps-hybrid model over V = 4 ids with peaky outputs."""
    config = RunConfig(family="eps-hybrid")
    config.data.seq_len = POSITIONS + 1
    config.model = dataclasses.replace(
        config.model, vocab_size=TOKENIZER.vocab_size, max_len=8, n_layers=1, n_heads=2,
        d_model=16, tie_weights=False,
    )  # fmt: skip
    config.diffusion = dataclasses.replace(
        config.diffusion, eps=eps, time="count", readout=readout, schedule="flat:1000"
    )
    config = complete(config)
    torch.manual_seed(1)
    lm = LanguageModel(config, TOKENIZER).eval()
    with torch.no_grad():
        lm.net.head.weight.mul_(6.0)  # far from uniform, so that errors show
    return lm


def clean_probs(lm, states: list[list[int]], level: float) -> torch.Tensor:
    """p_θ(x0 | x) over the N data ids [S, POSITIONS, N] for states x (MASK = N) at `level`."""
    tokens = torch.tensor([[BOS, *x] for x in states])
    x_t = tokens[:, 1:]
    step = torch.full_like(
        x_t, lm.objective.layout.schedule(POSITIONS).num_steps if level == 0 else 1
    )
    log_probs = lm.objective.layout.log_probs(
        lm.net, tokens, x_t, torch.full(x_t.shape, level), step
    )
    return log_probs[..., :N].double().exp()


def reveal_probs(lm, states, reveal: str) -> torch.Tensor:
    p = clean_probs(lm, states, 1.0)
    return (
        p
        if reveal == "model"
        else (1 - lm.objective.process.eps) * p + lm.objective.process.eps / N
    )


def reconstruct(lm, visible: dict[tuple, float], final: str) -> dict[tuple, float]:
    """The law of x0 after the final step from the law of fully visible x_{0+}."""
    states = [list(x) for x in visible]
    p = clean_probs(lm, states, 0.0)
    if final == "greedy":
        p = torch.nn.functional.one_hot(p.argmax(-1), N).double()
    law = dict.fromkeys(map(tuple, OUTCOMES), 0.0)
    for x_plus, row in zip(visible, p, strict=True):
        for x0 in OUTCOMES:
            law[tuple(x0)] += visible[x_plus] * math.prod(
                row[i, v].item() for i, v in enumerate(x0)
            )
    return law


@torch.no_grad()
def walk_law(lm, steps: int, reveal: str, final: str) -> dict[tuple, float]:
    """The exact law of the sampler's output: each step t -> s reveals every masked position
    independently with probability (t - s) / t from the reveal distribution at x_t."""
    table = from_spec(f"flat:{steps}", POSITIONS).table.double()
    law = {(MASK,) * POSITIONS: 1.0}
    for k in range(1, steps + 1):
        t, s = table[k - 1, 0].item(), table[k, 0].item()
        p = (t - s) / t
        states = list(law)
        q = reveal_probs(lm, [list(x) for x in states], reveal)
        new = {}
        for x, row in zip(states, q, strict=True):
            options = [
                [(v, 1.0, 0.0)]
                if v != MASK
                else [(MASK, 1 - p, 0)] + [(u, p * row[i, u].item(), 0) for u in range(N)]
                for i, v in enumerate(x)
            ]
            for choice in itertools.product(*options):
                weight = law[x] * math.prod(c[1] for c in choice)
                if weight > 0:
                    key = tuple(c[0] for c in choice)
                    new[key] = new.get(key, 0.0) + weight
        law = new
    return reconstruct(lm, law, final) if final != "none" else law


@torch.no_grad()
def continuous_chain_law(lm) -> dict[tuple, float]:
    """The chain the continuous-time NELBO is the bound of: positions revealed one at a time in
    a uniformly random order from (1 - ε) p_θ + ε u, then the reconstruction."""
    visible: dict[tuple, float] = {}
    for order in itertools.permutations(range(POSITIONS)):
        law = {(MASK,) * POSITIONS: 1.0 / math.factorial(POSITIONS)}
        for i in order:
            states = list(law)
            q = reveal_probs(lm, [list(x) for x in states], "mixture")
            new = {}
            for x, row in zip(states, q, strict=True):
                for u in range(N):
                    key = tuple(u if j == i else v for j, v in enumerate(x))
                    new[key] = new.get(key, 0.0) + law[x] * row[i, u].item()
            law = new
        for x, w in law.items():
            visible[x] = visible.get(x, 0.0) + w
    return reconstruct(lm, visible, "sample")


@torch.no_grad()
def exact_nelbo(lm, x0: list[int]) -> float:
    """The count-time NELBO of x0 by enumeration: k ~ U{1..C} masked positions, a uniform subset
    of them, the visible others resampled with probability ε, (C / k) Σ_masked KL_i; plus the
    reconstruction E_{x_{0+}} Σ_i -log p_θ(x0_i | x_{0+})."""
    process, eps = lm.objective.process, lm.objective.process.eps
    x = torch.tensor(x0)

    def corruptions(keep: list[int]):
        """(x_{0+} on `keep`, probability): each kept token resampled with probability ε."""
        for values in itertools.product(range(N), repeat=len(keep)):
            prob = math.prod(
                (1 - eps) * (v == x0[i]) + eps / N for i, v in zip(keep, values, strict=True)
            )
            yield values, prob

    diffusion = 0.0
    for k in range(1, POSITIONS + 1):
        subsets = list(itertools.combinations(range(POSITIONS), k))
        for masked in subsets:
            keep = [i for i in range(POSITIONS) if i not in masked]
            for values, prob in corruptions(keep):
                state = [MASK] * POSITIONS
                for i, v in zip(keep, values, strict=True):
                    state[i] = v
                tokens = torch.tensor([[BOS, *state]])
                log_probs = lm.objective.layout.log_probs(
                    lm.net,
                    tokens,
                    tokens[:, 1:],
                    torch.ones(1, 3),
                    torch.ones(1, 3, dtype=torch.long),
                )
                from hdlm.processes import data_log_probs, revealed_token_kl

                kl = revealed_token_kl(data_log_probs(log_probs, MASK), x[None], eps)[0]
                weight = (1 / POSITIONS) * (1 / len(subsets)) * prob * POSITIONS / k
                diffusion += weight * kl[list(masked)].sum().item()
    reconstruction = 0.0
    for values, prob in corruptions(list(range(POSITIONS))):
        p = clean_probs(lm, [list(values)], 0.0)[0]
        reconstruction -= prob * sum(math.log(p[i, v].item()) for i, v in enumerate(x0))
    del process
    return diffusion + reconstruction


def empirical(lm, n: int, **options) -> dict[tuple, float]:
    tokens = lm.sample(n, POSITIONS + 1, seed=3, **options)[:, 1:]
    counts: dict[tuple, float] = {}
    for row in tokens.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1 / n
    return counts


def total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


@pytest.mark.parametrize(
    "readout,reveal,final",
    [("shifted", "mixture", "sample"), ("aligned", "mixture", "sample"),
     ("shifted", "model", "sample"), ("shifted", "mixture", "greedy"),
     ("shifted-copy", "mixture", "sample")],
)  # fmt: skip
def test_eps_chain_samples_the_enumerated_chain(readout, reveal, final):
    lm = chain_model(readout)
    exact = walk_law(lm, steps=4, reveal=reveal, final=final)
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-6)
    drawn = empirical(lm, 20000, sampler="eps-chain", steps=4, reveal=reveal, final=final)
    # E[TV] of 20000 draws over 27 outcomes is below ~0.015; a wrong chain is far off
    assert total_variation(drawn, exact) < 0.03
    assert all(exact.get(k, 0.0) > 0 for k in drawn)


def test_eps_chain_is_not_the_ancestral_sampler_and_the_difference_shows():
    lm = chain_model("shifted")
    chain = walk_law(lm, steps=4, reveal="mixture", final="sample")
    ancestral = empirical(lm, 20000, sampler="ancestral", steps=4)
    assert total_variation(ancestral, walk_law(lm, 4, "model", "none")) < 0.03
    assert total_variation(ancestral, chain) > 0.1


def test_nelbo_bounds_the_chain_and_the_samples_of_the_eps_chain_sampler():
    lm = chain_model("shifted")
    chain = continuous_chain_law(lm)
    nelbo = {tuple(x): exact_nelbo(lm, x) for x in OUTCOMES}
    for x in OUTCOMES:  # the bound holds at every sequence, not only on average
        assert nelbo[tuple(x)] >= -math.log(chain[tuple(x)]) - 1e-9
    # the objective's Monte Carlo NELBO (one reconstruction draw per call) agrees on average
    tokens = torch.tensor([[BOS, *x] for x in OUTCOMES])
    lm.objective.options.eval_steps = 20
    generator = torch.Generator().manual_seed(0)
    runs = torch.stack([lm.objective.nelbo(lm.net, tokens, generator=generator) for _ in range(40)])
    exact = torch.tensor([nelbo[tuple(x)] for x in OUTCOMES], dtype=torch.float64)
    error = (runs.double().mean(0) - exact).abs() / (runs.double().std(0) / math.sqrt(40))
    assert error.max() < 4.5
    # many steps approach the continuous chain, and the sampler's own samples cost less than
    # the NELBO claims: E_samples[NELBO] >= E_samples[-log p_sampler] (its entropy)
    walk = walk_law(lm, steps=64, reveal="mixture", final="sample")
    assert total_variation(walk, chain) < 0.02
    expected_nelbo = sum(walk[k] * nelbo[k] for k in walk)
    entropy = -sum(p * math.log(p) for p in walk.values() if p > 0)
    assert expected_nelbo >= entropy


def test_eps_chain_refuses_other_models_and_discrete_time():
    from helpers import language_model

    with pytest.raises(HdlmError, match="cannot draw"):
        language_model("mdlm").sample(1, 8, sampler="eps-chain")
    discrete = chain_model("shifted")
    discrete.objective.options.time = "discrete"
    with pytest.raises(HdlmError, match="time=discrete"):
        discrete.sample(1, 4, sampler="eps-chain", steps=2)


@pytest.mark.parametrize("readout", ["shifted", "shifted-copy"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_the_sampler_reads_out_what_the_objective_trains(monkeypatch, readout, use_cache):
    """At every step the sampler's log-probabilities of the active positions (masked and
    visible: ACS re-draws visible ones) are the objective's layout's on the same tokens."""
    from hdlm.sampling import hyperschedule

    seen = []
    original = hyperschedule.NetworkView.hidden_at

    def spy(self, tokens, levels, settled, computed, targets):
        hidden = original(self, tokens, levels, settled, computed, targets)
        levels = torch.zeros(tokens.shape) if levels is None else levels.clone()
        seen.append((tokens.clone(), levels, targets.clone(), self.log_probs(hidden)))
        return hidden

    monkeypatch.setattr(hyperschedule.NetworkView, "hidden_at", spy)
    lm = chain_model(readout)
    lm.sample(5, POSITIONS + 1, sampler="acs", eta=0.5, steps=3, seed=2, use_cache=use_cache)
    assert len(seen) == 3
    for tokens, levels, targets, out in seen:
        step = torch.ones_like(tokens[:, 1:])
        ref = lm.objective.layout.log_probs(lm.net, tokens, tokens[:, 1:], levels[:, 1:], step)
        torch.testing.assert_close(out, ref[:, targets - 1], rtol=1e-4, atol=1e-4)
