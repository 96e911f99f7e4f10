"""Noise processes: sampling marginals, eps = 0 reductions, and exact NELBO identities."""

import math

import numpy as np
import pytest
import torch

from hdlm import processes
from hdlm.processes import Absorbing, EpsHybrid, Uniform, clean_log_prob

V = 5
MASK = 2  # not the last id, so the data-id bookkeeping is exercised
DATA = [i for i in range(V) if i != MASK]
N = len(DATA)
P_DATA = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)  # over DATA
ENTROPY = -(P_DATA * P_DATA.log()).sum().item()

PROCESSES = {
    "absorbing": Absorbing(MASK),
    "uniform": Uniform(V, MASK),
    "hybrid0": EpsHybrid(0.0, MASK, V),
    "hybrid05": EpsHybrid(0.05, MASK, V),
    "hybrid30": EpsHybrid(0.3, MASK, V),
}


def marginal(process, t: float) -> torch.Tensor:
    """q_t(x_t | x0) as an [N, V] table (rows: data ids x0), written from the definitions."""
    q = torch.zeros(N, V, dtype=torch.float64)
    for row, x0 in enumerate(DATA):
        if isinstance(process, Uniform):
            q[row, DATA] = t / N
            q[row, x0] += 1 - t
        else:
            eps = process.eps if isinstance(process, EpsHybrid) and t > 0 else 0.0
            q[row, MASK] = t
            q[row, DATA] = (1 - t) * eps / N
            q[row, x0] += (1 - t) * (1 - eps)
    return q


def enumeration(process, t: float, model: str = "exact"):
    """Every (x0, x_t) pair for L = 1 with its probability p_data(x0) q_t(x_t | x0), and the
    network's log_probs on x_t: the Bayes posterior p(x0 | x_t) ("exact") or a distorted one."""
    q = marginal(process, t)
    joint = P_DATA[:, None] * q  # [N, V]
    posterior = torch.zeros(V, V, dtype=torch.float64)  # [x_t, x0 over all V ids]
    evidence = joint.sum(0)
    posterior[:, DATA] = torch.where(evidence[:, None] > 0, (joint / evidence).T, 1.0 / N)
    log_post = posterior.log().clamp_min(-300.0)
    if model != "exact":
        log_post = 0.6 * log_post + 0.4 * torch.linspace(-1, 1, V, dtype=torch.float64)
    log_post[:, MASK] = -math.inf
    log_post = log_post.log_softmax(-1)
    x0 = torch.tensor(DATA).repeat_interleave(V)[:, None]
    x_t = torch.arange(V).repeat(N)[:, None]
    return joint.reshape(-1, 1), x0, x_t, log_post[x_t]


def discrete_nelbo(process, grid: list[float], model: str = "exact") -> float:
    """sum over steps t -> s of E_{x0, x_t} step_loss, exactly (grid from 1 down to 0)."""
    total = 0.0
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        weight, x0, x_t, log_probs = enumeration(process, t, model)
        level = torch.full(x0.shape, t, dtype=torch.float64)
        loss = process.step_loss(log_probs, x0, x_t, level, torch.full_like(level, s))
        total += (weight * loss).sum().item()
    return total


GRIDS = [
    [1.0, 0.0],
    [1.0, 0.5, 0.0],
    [1.0, 0.93, 0.6, 0.41, 0.2, 0.07, 0.01, 0.0],
    list(np.linspace(1.0, 0.0, 33)),
]


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"S{len(g) - 1}")
def test_discrete_nelbo_of_the_true_posterior_is_the_entropy(name, grid):
    assert discrete_nelbo(PROCESSES[name], grid) == pytest.approx(ENTROPY, abs=1e-10)


@pytest.mark.parametrize("name", PROCESSES)
def test_discrete_nelbo_of_a_wrong_model_is_larger(name):
    for grid in GRIDS:
        assert discrete_nelbo(PROCESSES[name], grid, model="wrong") > ENTROPY + 1e-3


def quadrature(n: int = 64):
    """Nodes and weights on [0, 1]: Gauss-Legendre on [1/2, 1] and, in log t, on [1/2 e^-30, 1/2]
    (the uniform process's integrand grows like log(1/t) near 0)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    u, w = (nodes + 1) / 2, weights / 2
    small = 0.5 * np.exp(-30 * u)
    return np.concatenate([small, 0.5 + 0.5 * u]), np.concatenate([30 * small * w, 0.5 * w])


@pytest.mark.parametrize("name", PROCESSES)
def test_continuous_nelbo_of_the_true_posterior_is_the_entropy(name, monkeypatch):
    """integral_0^1 E[rate_loss] dt (+ E[reconstruction] at t = 0+ for the hybrid) = H(p_data)."""
    monkeypatch.setattr(processes.base, "T_EPS", 1e-15)  # test the formulas, not the clamp
    process = PROCESSES[name]
    total = 0.0
    for t, w in zip(*quadrature(), strict=True):
        weight, x0, x_t, log_probs = enumeration(process, float(t))
        level = torch.full(x0.shape, float(t), dtype=torch.float64)
        rate = process.rate_loss(log_probs, x0, x_t, level, torch.ones_like(level))
        total += w * (weight * rate).sum().item()
    if process.has_reconstruction:
        weight, x0, x_t, log_probs = enumeration(process, 1e-300)  # level 0+: no mask, resampled
        total += (weight * -clean_log_prob(log_probs, x0, process.mask_id)).sum().item()
    assert total == pytest.approx(ENTROPY, abs=1e-9)


def random_case(
    seed: int,
    batch: int = 6,
    length: int = 9,
    vocab: int = 11,
    mask_id: int = 4,
    mask_excluded: bool = False,
):
    """Random tokens, log-probabilities (MASK at -inf when `mask_excluded`) and levels t >= s,
    with the edge cases every loss must handle in the first rows."""
    g = torch.Generator().manual_seed(seed)
    data = torch.tensor([i for i in range(vocab) if i != mask_id])
    x0 = data[torch.randint(len(data), (batch, length), generator=g)]
    logits = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2
    if mask_excluded:
        logits[..., mask_id] = -math.inf
    t = torch.rand(batch, length, generator=g, dtype=torch.float64)
    s = t * torch.rand(batch, length, generator=g, dtype=torch.float64)
    t[0, :3], s[0, :3] = 0.0, 0.0  # settled positions
    t[1, :3], s[1, :3] = 0.7, 0.7  # positions that do not move in this step
    t[2, :], s[2, :] = 1.0, 0.0  # a single step from full noise
    s[3, :4] = 0.0  # final steps
    return g, x0, logits.log_softmax(-1), t, s


def test_eps_zero_hybrid_is_absorbing_exactly():
    absorbing = Absorbing(4)
    hybrid = EpsHybrid(0.0, 4, 11)
    g, x0, log_probs, t, s = random_case(0)
    x_abs = absorbing.corrupt(x0, t, torch.Generator().manual_seed(7))
    x_hyb = hybrid.corrupt(x0, t, torch.Generator().manual_seed(7))
    assert torch.equal(x_abs, x_hyb)
    x_t = x_abs
    assert torch.equal(
        absorbing.step_loss(log_probs, x0, x_t, t, s), hybrid.step_loss(log_probs, x0, x_t, t, s)
    )
    dt = torch.rand(t.shape, generator=g, dtype=torch.float64)
    assert torch.equal(
        absorbing.rate_loss(log_probs, x0, x_t, t, dt), hybrid.rate_loss(log_probs, x0, x_t, t, dt)
    )
    assert not hybrid.has_reconstruction
    official = hybrid.official_rate_loss(log_probs, x0, x_t, t.clamp(0.01, 0.99), dt)
    exact = absorbing.rate_loss(log_probs, x0, x_t, t.clamp(0.01, 0.99), dt)
    torch.testing.assert_close(official, exact)


def test_hybrid_scores_visible_positions():
    hybrid = EpsHybrid(0.1, 4, 11)
    g, x0, log_probs, t, s = random_case(1)
    t = t.clamp_min(0.05)
    x_t = hybrid.corrupt(x0, t, g)
    visible = x_t != 4
    final = hybrid.step_loss(log_probs, x0, x_t, t, torch.zeros_like(t))
    assert (final[visible] > 0).all()
    # between two positive levels a visible token is certain to stay: no loss there
    assert (hybrid.step_loss(log_probs, x0, x_t, t, t / 2)[visible] == 0).all()
    assert (hybrid.rate_loss(log_probs, x0, x_t, t, torch.ones_like(t))[visible] == 0).all()
    assert (-clean_log_prob(log_probs, x0, hybrid.mask_id) > 0).all()
    assert (hybrid.official_rate_loss(log_probs, x0, x_t, t, torch.ones_like(t))[visible] > 0).all()


def test_hybrid_revealed_term_is_below_the_official_masked_term():
    """KL(pi_eps || (1-eps) p + eps u) <= (1-eps) (-log p(x0)) by joint convexity of KL."""
    hybrid = EpsHybrid(0.2, 4, 11)
    _, x0, log_probs, t, _ = random_case(2)
    t = t.clamp(0.05, 0.95)
    x_t = torch.full_like(x0, 4)
    one = torch.ones_like(t)
    exact = hybrid.rate_loss(log_probs, x0, x_t, t, one)
    official = hybrid.official_rate_loss(log_probs, x0, x_t, t, one)
    assert (exact <= (1 - hybrid.eps) * official + 1e-12).all()


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_corrupt_matches_the_marginals(t):
    n, vocab, mask_id, eps = 200_000, 11, 4, 0.2
    x0 = torch.full((n,), 7)
    level = torch.full((n,), t)
    g = torch.Generator().manual_seed(3)

    def check(rate, p):
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12

    x_t = Absorbing(mask_id).corrupt(x0, level, g)
    check((x_t == mask_id).double().mean().item(), t)
    assert ((x_t == mask_id) | (x_t == 7)).all()

    x_t = Uniform(vocab, mask_id).corrupt(x0, level, g)
    assert (x_t != mask_id).all()
    counts = torch.bincount(x_t, minlength=vocab).double() / n
    for token in range(vocab):
        if token != mask_id:
            check(counts[token].item(), t / (vocab - 1) + (1 - t) * (token == 7))

    x_t = EpsHybrid(eps, mask_id, vocab).corrupt(x0, level, g)
    counts = torch.bincount(x_t, minlength=vocab).double() / n
    check(counts[mask_id].item(), t)
    for token in range(vocab):
        if token != mask_id:
            check(counts[token].item(), (1 - t) * (eps / (vocab - 1) + (1 - eps) * (token == 7)))
    assert torch.equal(EpsHybrid(eps, mask_id, vocab).corrupt(x0, torch.zeros(n), g), x0)


@pytest.mark.parametrize("name", ["absorbing", "uniform", "hybrid30"])
def test_rate_loss_is_the_limit_of_step_loss(name):
    process = {
        "absorbing": Absorbing(4),
        "uniform": Uniform(11, 4),
        "hybrid30": EpsHybrid(0.3, 4, 11),
    }[name]
    g, x0, log_probs, t, _ = random_case(4)
    t = 0.05 + 0.9 * t
    x_t = process.corrupt(x0, t, g)
    dt = 0.5 + torch.rand(t.shape, generator=g, dtype=torch.float64)
    h = 1e-7
    ratio = process.step_loss(log_probs, x0, x_t, t, t - dt * h) / h
    torch.testing.assert_close(
        ratio, process.rate_loss(log_probs, x0, x_t, t, dt), rtol=1e-5, atol=1e-6
    )


def assert_losses_finite_at_the_edges(process) -> None:
    """step_loss / rate_loss at t, s in {0, 1, equal, tiny, almost 1}: finite, non-negative, 0
    where t == s, with finite gradients (shared with the gamma-hybrid tests)."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.tensor(DATA)[torch.randint(N, (4, 8), generator=g)]
    logits = torch.randn(4, 8, V, generator=g).index_fill(-1, torch.tensor([MASK]), -math.inf)
    logits.requires_grad_(True)
    t = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.3, 0.3, 1e-9, 1 - 1e-9]).expand(4, 8)
    s = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.3, 0.0, 0.0, 0.5]).expand(4, 8)
    x_t = process.corrupt(x0, t, g)
    log_probs = logits.log_softmax(-1)
    step = process.step_loss(log_probs, x0, x_t, t, s)
    rate = process.rate_loss(log_probs, x0, x_t, t, torch.ones_like(t))
    assert torch.isfinite(step).all() and torch.isfinite(rate).all()
    assert (step[:, :2] == 0).all() and (step[:, 4] == 0).all()  # t == s
    assert (step >= -1e-6).all() and (rate >= 0).all()
    (step.sum() + rate.sum()).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", PROCESSES)
def test_losses_are_finite_with_finite_gradients_at_the_edges(name):
    assert_losses_finite_at_the_edges(PROCESSES[name])


@pytest.mark.parametrize("process", [Absorbing(MASK), EpsHybrid(0.1, MASK, V)])
def test_quenched_ar_step_is_the_next_token_nll(process):
    """With t, s in {0, 1} (quenched AR), the step loss is -log p(x0) where 1 -> 0, else 0."""
    length = 6
    g = torch.Generator().manual_seed(6)
    x0 = torch.tensor(DATA)[torch.randint(N, (3, length), generator=g)]
    table = (torch.arange(length)[None, :] >= torch.arange(length + 1)[:, None]).double()
    total = torch.zeros(3, length, dtype=torch.float64)
    for step in range(1, length + 1):
        t, s = table[step - 1].expand(3, length), table[step].expand(3, length)
        x_t = process.corrupt(x0, t, g)
        assert torch.equal(x_t, torch.where(t == 1, MASK, x0))
        logits = torch.randn(3, length, V, generator=g, dtype=torch.float64)
        log_probs = logits.index_fill(-1, torch.tensor([MASK]), -math.inf).log_softmax(-1)
        loss = process.step_loss(log_probs, x0, x_t, t, s)
        nll = -log_probs.gather(-1, x0[..., None])[..., 0]
        expected = torch.where(torch.arange(length) == step - 1, nll, 0.0)
        assert torch.equal(loss, expected)
        total += loss
    assert (total > 0).all()  # every position scored exactly once
