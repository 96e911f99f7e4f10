"""The γ-hybrid chain, its score-entropy NELBO and τ-leaping samplers (docs/math.md §8)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import MASK as MASK_ID
from helpers import L, random_tokens, tiny_objective
from helpers import V as VOCAB
from test_processes import DATA, ENTROPY, MASK, P_DATA, N, V, assert_losses_finite_at_the_edges
from test_processes import random_case as shared_random_case

import hdlm
from hdlm import processes
from hdlm.cli import main
from hdlm.config import load_config
from hdlm.errors import ConfigError
from hdlm.families import family
from hdlm.objectives import DiffusionObjective, ScoreEntropyObjective
from hdlm.processes import Absorbing, GammaHybrid, SigmaSchedule, score_entropy
from hdlm.sampling.tau_leaping import tau_leaping
from hdlm.schedules import block, flat

SCHEDULES = ["loglinear", "loglinear:0.001", "geometric:1e-4:20", "geometric:0.01:3"]


def chain(gamma: float, sigma: str = "loglinear", vocab: int = V, mask_id: int = MASK):
    return GammaHybrid(gamma, mask_id, vocab, SigmaSchedule.parse(sigma))


def rate_matrix(gamma: float, vocab: int = V, mask_id: int = MASK) -> torch.Tensor:
    """Q[x, y] from the definition: data -> MASK at 1 - γ, data -> each data id at γ / N."""
    n = vocab - 1
    q = torch.zeros(vocab, vocab, dtype=torch.float64)
    data = [i for i in range(vocab) if i != mask_id]
    for x in data:
        q[x, mask_id] = 1 - gamma
        q[x, data] += gamma / n
        q[x, x] -= q[x].sum()
    return q


# -- the chain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.01, 0.3, 0.9])
def test_transition_probabilities_are_the_matrix_exponential(gamma):
    process = chain(gamma)
    ids = torch.arange(V)
    for sigma in [0.0, 1e-6, 0.3, 2.0, 40.0]:
        rows = process.transition_probs(ids, torch.tensor(sigma, dtype=torch.float64))
        torch.testing.assert_close(rows.sum(-1), torch.ones(V, dtype=torch.float64))
        assert (rows >= 0).all()
        expected = torch.linalg.matrix_exp(sigma * rate_matrix(gamma))
        torch.testing.assert_close(rows, expected, rtol=0, atol=1e-12)
    for s1, s2 in [(0.2, 0.5), (1.5, 0.01), (3.0, 4.0)]:
        p1 = process.transition_probs(ids, torch.tensor(s1, dtype=torch.float64))
        p2 = process.transition_probs(ids, torch.tensor(s2, dtype=torch.float64))
        both = process.transition_probs(ids, torch.tensor(s1 + s2, dtype=torch.float64))
        torch.testing.assert_close(p1 @ p2, both, rtol=0, atol=1e-12)


def test_transition_probabilities_need_no_vocabulary_square():
    """A GPT-2-size vocabulary: a few rows, never a V x V matrix."""
    process = chain(0.01, vocab=50258, mask_id=50257)
    rows = process.transition_probs(torch.tensor([0, 17, 50257]), torch.tensor(0.5))
    assert rows.shape == (3, 50258)
    torch.testing.assert_close(rows.sum(-1), torch.ones(3, dtype=torch.float64))
    x_t = process.corrupt(torch.randint(50257, (4, 1024)), torch.rand(4, 1024))
    assert x_t.shape == (4, 1024) and (x_t <= 50257).all()


@pytest.mark.parametrize("sigma", SCHEDULES)
def test_sigma_schedules(sigma):
    schedule = SigmaSchedule.parse(sigma)
    t = torch.linspace(0, 0.99, 100, dtype=torch.float64)
    values = schedule.sigma(t)
    assert values[0] == 0 and (values.diff() > 0).all()
    h = 1e-6
    numeric = (schedule.sigma(t[1:] + h) - schedule.sigma(t[1:] - h)) / (2 * h)
    torch.testing.assert_close(schedule.rate(t[1:]), numeric, rtol=1e-6, atol=0)
    assert SigmaSchedule.parse(schedule.spec) == schedule


@pytest.mark.parametrize("bad", ["cosine", "loglinear:1", "geometric:3:1", "geometric:1"])
def test_bad_sigma_schedules_are_config_errors(bad):
    with pytest.raises(ConfigError, match="bad sigma schedule"):
        SigmaSchedule.parse(bad)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_corrupt_matches_the_transition_probabilities(t):
    n, process = 200_000, chain(0.3, "geometric:0.01:3", vocab=11, mask_id=4)
    x0 = torch.full((n,), 7)
    x_t = process.corrupt(x0, torch.full((n,), t), torch.Generator().manual_seed(3))
    counts = torch.bincount(x_t, minlength=11).double() / n
    sigma = process.schedule.sigma(torch.tensor(t, dtype=torch.float64))
    expected = process.transition_probs(torch.tensor(7), sigma)
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-12
    assert ((counts - expected).abs() <= tolerance).all(), (counts, expected)


# -- γ = 0 is the absorbing chain ---------------------------------------------------------------


def random_case(seed: int):
    return shared_random_case(seed, mask_excluded=True)


def every_kind_of_token(x0, g, vocab=11, mask_id=4):
    """x_t with masked, clean and swapped positions (all possible when γ > 0)."""
    coin = torch.rand(x0.shape, generator=g)
    swapped = processes.random_data_tokens(x0, mask_id, vocab - 1, g)
    x_t = torch.where(coin < 0.3, mask_id, torch.where(coin < 0.6, x0, swapped))
    assert (x_t == mask_id).any() and (x_t == x0).any() and ((x_t != x0) & (x_t != mask_id)).any()
    return x_t


def sedd_absorbing_score_entropy(log_score, sigma, dsigma, x0, x_t, mask_id):
    """SEDD's absorbing `score_entropy` times dσ, written as in its reference code: on masked
    positions, Σ_{y != MASK} exp(score_y) - score_x0 / (e^σ - 1) + K(1 / (e^σ - 1))."""
    ratio = 1 / torch.expm1(sigma)
    positive = torch.cat((log_score[..., :mask_id], log_score[..., mask_id + 1 :]), -1).exp()
    negative = ratio * log_score.gather(-1, x0[..., None])[..., 0]
    constant = ratio * (ratio.log() - 1)
    entropy = positive.sum(-1) - negative + constant
    return dsigma * torch.where(x_t == mask_id, entropy, 0.0)


@pytest.mark.parametrize("sigma", SCHEDULES)
def test_gamma_zero_is_sedd_absorbing(sigma):
    process = chain(0.0, sigma, vocab=11, mask_id=4)
    g, x0, log_probs, t, _ = random_case(0)
    t = t.clamp(0.01, 0.99)
    # transitions: masked with probability 1 - e^-σ, kept otherwise
    values = torch.tensor([0.0, 0.4, 3.0], dtype=torch.float64)
    rows = process.transition_probs(torch.tensor(7), values)
    expected = torch.zeros(3, 11, dtype=torch.float64)
    expected[:, 4], expected[:, 7] = -torch.expm1(-values), torch.exp(-values)
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-15)
    # the loss is SEDD's absorbing score entropy, for the model's scores and for any scores
    x_t = process.corrupt(x0, t, g)
    assert ((x_t == x0) | (x_t == 4)).all() and (x_t == 4).any()
    dt = torch.rand(t.shape, generator=g, dtype=torch.float64)
    level_sigma, dsigma = process.schedule.sigma(t), dt * process.schedule.rate(t)
    model = process.log_score(log_probs, x_t, t)
    masked = x_t == 4
    # at γ = 0 the model's score from MASK is p̃(y) / (e^σ - 1) (RADD's form of SEDD)
    scaled = log_probs - torch.log(torch.expm1(level_sigma))[..., None]
    data = [i for i in range(11) if i != 4]
    torch.testing.assert_close(model[masked][:, data], scaled[masked][:, data])
    sedd = sedd_absorbing_score_entropy(model, level_sigma, dsigma, x0, x_t, 4)
    torch.testing.assert_close(process.rate_loss(log_probs, x0, x_t, t, dt), sedd)
    anything = torch.randn(model.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        score_entropy(process, anything, x0, x_t, t, dt),
        sedd_absorbing_score_entropy(anything, level_sigma, dsigma, x0, x_t, 4),
    )


def test_gamma_zero_loglinear_is_the_absorbing_process_exactly():
    process, absorbing = chain(0.0, vocab=11, mask_id=4), Absorbing(4)
    g, x0, log_probs, t, s = random_case(1)
    x_abs = absorbing.corrupt(x0, t, torch.Generator().manual_seed(7))
    assert torch.equal(process.corrupt(x0, t, torch.Generator().manual_seed(7)), x_abs)
    torch.testing.assert_close(
        process.step_loss(log_probs, x0, x_abs, t, s),
        absorbing.step_loss(log_probs, x0, x_abs, t, s),
    )
    dt = torch.rand(t.shape, generator=g, dtype=torch.float64)
    t = t.clamp(max=0.999)  # the γ-hybrid clamps levels to 1 - T_EPS, `Absorbing` does not
    torch.testing.assert_close(
        process.rate_loss(log_probs, x0, x_abs, t, dt),
        absorbing.rate_loss(log_probs, x0, x_abs, t, dt),
    )
    assert (process.prior_loss(x0) == 0).all()


# -- the NELBO ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SCHEDULES)
@pytest.mark.parametrize("gamma", [0.01, 0.3])
def test_rate_loss_is_score_entropy_in_closed_form(gamma, sigma):
    process = chain(gamma, sigma, vocab=11, mask_id=4)
    g, x0, log_probs, t, _ = random_case(2)
    t = t.clamp(0.01, 0.99)
    x_t = every_kind_of_token(x0, g)
    dt = torch.rand(t.shape, generator=g, dtype=torch.float64)
    reference = score_entropy(process, process.log_score(log_probs, x_t, t), x0, x_t, t, dt)
    torch.testing.assert_close(process.rate_loss(log_probs, x0, x_t, t, dt), reference)


@pytest.mark.parametrize("sigma", ["loglinear", "geometric:1e-4:20"])
def test_rate_loss_is_the_limit_of_step_loss(sigma):
    process = chain(0.3, sigma, vocab=11, mask_id=4)
    g, x0, log_probs, t, _ = random_case(4)
    t = 0.05 + 0.9 * t
    x_t = every_kind_of_token(x0, g)
    dt = 0.5 + torch.rand(t.shape, generator=g, dtype=torch.float64)
    h = 1e-7
    ratio = process.step_loss(log_probs, x0, x_t, t, t - dt * h) / h
    torch.testing.assert_close(
        ratio, process.rate_loss(log_probs, x0, x_t, t, dt), rtol=1e-5, atol=1e-5
    )


def enumeration(process, t: float, model: str = "exact"):
    """Every (x0, x_t) pair for L = 1 with its probability p_data(x0) q_t(x_t | x0), and the
    network's p̃: the data distribution (the oracle: L = 1 has no other positions) or not."""
    sigma = process.schedule.sigma(torch.tensor(t, dtype=torch.float64))
    joint = P_DATA[:, None] * process.transition_probs(torch.tensor(DATA), sigma)  # [N, V]
    log_probs = torch.full((V,), -math.inf, dtype=torch.float64)
    log_probs[DATA] = P_DATA.log()
    if model != "exact":
        log_probs[DATA] = (0.6 * P_DATA.log() + 0.4 * torch.linspace(-1, 1, N)).log_softmax(-1)
    x0 = torch.tensor(DATA).repeat_interleave(V)[:, None]
    x_t = torch.arange(V).repeat(N)[:, None]
    return joint.reshape(-1, 1), x0, x_t, log_probs.expand(N * V, 1, V)


def prior_gap(process) -> float:
    """KL(q_1 || p(x_1)): what the oracle's NELBO exceeds the entropy by when σ(1) < ∞ (the
    prior is (1 - a_1) MASK + a_1 uniform, the true marginal has data in its visible part)."""
    sigma = torch.tensor(process.schedule.sigma_one, dtype=torch.float64)
    marginal = (P_DATA[:, None] * process.transition_probs(torch.tensor(DATA), sigma)).sum(0)
    a = process.rates(sigma)["a"].item()
    prior = torch.full((V,), a / N, dtype=torch.float64)
    prior[MASK] = 1 - a
    return (torch.xlogy(marginal, marginal) - torch.xlogy(marginal, prior)).sum().item()


def discrete_nelbo(process, grid, model="exact") -> float:
    total = process.prior_loss(torch.zeros(1, 1, dtype=torch.long), torch.float64).item()
    for t, s in zip(grid[:-1], grid[1:], strict=True):
        weight, x0, x_t, log_probs = enumeration(process, t, model)
        level = torch.full(x0.shape, t, dtype=torch.float64)
        loss = process.step_loss(log_probs, x0, x_t, level, torch.full_like(level, s))
        total += (weight * loss).sum().item()
    return total


def continuous_nelbo(process, model="exact") -> float:
    """prior + ∫_0^1 E[rate_loss] dt by Gauss-Legendre on [1/4, 3/4] and, log-graded, towards
    both ends (the integrand grows like log(1/t) at 0 and like (1 - t)^-γ at 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    u, w = (nodes + 1) / 2, weights / 2
    d = 0.25 * np.exp(-32 * u)  # distances to an end, in (e^-32 / 4, 1/4]
    levels = np.concatenate([d, 1 - d, 0.25 + 0.5 * u])
    quadrature = np.concatenate([32 * d * w, 32 * d * w, 0.5 * w])
    total = process.prior_loss(torch.zeros(1, 1, dtype=torch.long), torch.float64).item()
    for t, weight_t in zip(levels, quadrature, strict=True):
        weight, x0, x_t, log_probs = enumeration(process, float(t), model)
        level = torch.full(x0.shape, float(t), dtype=torch.float64)
        rate = process.rate_loss(log_probs, x0, x_t, level, torch.ones_like(level))
        total += weight_t * (weight * rate).sum().item()
    return total


GRIDS = [[1.0, 0.0], [1.0, 0.6, 0.2, 0.0], list(np.linspace(1.0, 0.0, 17))]


@pytest.mark.parametrize("sigma", SCHEDULES)
@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.5])
def test_nelbo_of_the_oracle_is_the_entropy_plus_the_prior_gap(gamma, sigma, monkeypatch):
    monkeypatch.setattr(processes.base, "T_EPS", 1e-15)  # test the formulas, not the clamp
    process = chain(gamma, sigma)
    gap = prior_gap(process)
    assert (gap == 0) == (sigma == "loglinear")
    for grid in GRIDS:
        assert discrete_nelbo(process, grid) == pytest.approx(ENTROPY + gap, abs=1e-12)
        assert discrete_nelbo(process, grid, "wrong") > ENTROPY + gap + 1e-2
    assert continuous_nelbo(process) == pytest.approx(ENTROPY + gap, abs=1e-8)
    assert continuous_nelbo(process, "wrong") > ENTROPY + gap + 1e-2


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_losses_are_finite_with_finite_gradients_at_the_edges(gamma):
    assert_losses_finite_at_the_edges(chain(gamma))


# -- τ-leaping with an oracle ------------------------------------------------------------------


def oracle_denoiser(process, sequences, probs):
    """p̃_i(j) = p(x0^i = j | x_t^{-i}) by enumeration of the data distribution `probs` over
    `sequences` [M, L]: the network that makes the model's reverse steps exact."""

    def denoise(x, levels, step):
        n, length = x.shape
        sigma = process.schedule.sigma(levels.double())[:, None, :].expand(-1, len(sequences), -1)
        q = process.transition_probs(sequences[None].expand(n, -1, -1), sigma)  # [n, M, L, V]
        index = x[:, None, :, None].expand(-1, len(sequences), -1, 1)
        likelihood = q.gather(-1, index)[..., 0]  # q(x_t^k | x0^k = sequence[m, k])
        out = torch.full((n, length, V), -math.inf, dtype=torch.float64)
        for i in range(length):
            others = torch.cat((likelihood[..., :i], likelihood[..., i + 1 :]), -1).prod(-1)
            mass = torch.zeros(n, V, dtype=torch.float64)
            mass.index_add_(1, sequences[:, i], probs * others)
            out[:, i] = (mass / mass.sum(-1, keepdim=True)).log()
        return out

    return denoise


def chi2_quantile(dof: int, tail: float) -> float:
    """x with P(χ²_dof > x) = tail (bisection on the regularised incomplete gamma function)."""
    lo, hi = 0.0, 10.0 * dof + 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        cdf = torch.special.gammainc(torch.tensor(dof / 2), torch.tensor(mid / 2)).item()
        lo, hi = (mid, hi) if cdf < 1 - tail else (lo, mid)
    return hi


def draw(process, length, table, method, n, prompt=()):
    """n sequences by τ-leaping with the oracle; their frequencies and the target distribution."""
    sequences = torch.tensor(list(itertools.product(DATA, repeat=length)))
    probs = torch.rand(len(sequences), generator=torch.Generator().manual_seed(1)) + 0.5
    probs = (probs / probs.sum()).double()
    generator = torch.Generator().manual_seed(0)
    x = process.sample_prior((n, length), "cpu", generator)
    fixed = torch.arange(length) < len(prompt)
    x[:, fixed] = torch.tensor(prompt, dtype=torch.long)
    table = table.double().masked_fill(fixed, 0.0)
    denoise = oracle_denoiser(process, sequences, probs)
    out = tau_leaping(denoise, process, x, table, generator, method)
    which = (out[:, None, :] == sequences[None]).all(-1)
    assert which.sum(1).eq(1).all()  # every sample is a clean sequence
    frequencies = which.double().mean(0)
    target = torch.where((sequences[:, fixed] == torch.tensor(prompt)).all(-1), probs, 0.0)
    return frequencies, target / target.sum()


def assert_chi_square(frequencies, target, n, tail=1e-3):
    support = target > 0
    assert (frequencies[~support] == 0).all()
    statistic = (n * (frequencies - target)[support] ** 2 / target[support]).sum().item()
    assert statistic < chi2_quantile(int(support.sum()) - 1, tail), statistic


@pytest.mark.parametrize("gamma", [0.0, 0.3])
@pytest.mark.parametrize(
    ("length", "schedule", "prompt"),
    [(1, flat(1, 5), ()), (2, block(2, 1, 4), ()), (2, block(2, 1, 3), (3,))],
    ids=["one-position-flat", "two-positions-block", "with-prompt"],
)
def test_tweedie_with_an_oracle_recovers_the_data_distribution(gamma, length, schedule, prompt):
    """Exact whenever one position moves at a time (any number of steps per position): with
    n samples the chi-square statistic is below its 0.999 quantile."""
    n = 4000
    process = chain(gamma, "loglinear" if gamma == 0 else "geometric:1e-3:8")
    frequencies, target = draw(process, length, schedule.table, "tweedie", n, prompt)
    assert_chi_square(frequencies, target, n)


def test_euler_with_an_oracle_recovers_the_data_distribution():
    """γ = 0 log-linear: Euler is MDLM's exact step. γ > 0: first order in the step, so the
    total variation may exceed the sampling noise (E TV <= sqrt(K / n) / 2) by O(1 / S)."""
    n = 4000
    frequencies, target = draw(chain(0.0), 1, flat(1, 5).table, "euler", n)
    assert_chi_square(frequencies, target, n)
    frequencies, target = draw(chain(0.3), 1, flat(1, 64).table, "euler", n)
    total_variation = 0.5 * (frequencies - target).abs().sum().item()
    assert total_variation < 3 * math.sqrt(len(target) / n) / 2 + 0.02, total_variation


# -- the objective and the family ---------------------------------------------------------------


def make(family="gamma-hybrid", time_conditioning=False, **diffusion):
    return tiny_objective(family, VOCAB, MASK_ID, L, time_conditioning, **diffusion)


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_gamma_zero_family_is_mdlm(time):
    net, gamma = make(gamma=0.0, time=time)
    _, mdlm = make(family="mdlm", time=time)
    tokens = random_tokens()
    with torch.no_grad():  # float32: the γ-hybrid goes through σ(t) = -log(1 - t) and back
        torch.testing.assert_close(
            gamma.nelbo(net, tokens), mdlm.nelbo(net, tokens), rtol=1e-5, atol=0
        )


@pytest.mark.parametrize("gamma", [0.0, 0.2])
def test_quenched_ar_gamma_hybrid_is_the_ar_nll(gamma):
    """Levels are 0 or 1 (σ = ∞: all MASK), so nothing visible is ever swapped."""
    net, diffusion = make(
        gamma=gamma, schedule="quenched_ar", attention="causal", readout="shifted",
        time="discrete", eval_steps=L,
    )  # fmt: skip
    _, ar = make("ar")
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(diffusion.nelbo(net, tokens), ar.nelbo(net, tokens))


def test_prior_term_is_in_the_nelbo():
    net, objective = make(gamma=0.05, sigma="loglinear:0.01")
    assert isinstance(objective, ScoreEntropyObjective)
    assert family("gamma-hybrid").default_sampler == "tweedie"
    tokens = random_tokens()
    prior = objective.process.prior_loss(tokens[:, 1:]).sum(-1)
    assert (prior > 0).all()
    with torch.no_grad():
        torch.testing.assert_close(
            objective.nelbo(net, tokens),
            DiffusionObjective.nelbo_terms(objective, net, tokens)["diffusion"] + prior,
        )


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_training_loss_is_finite_and_differentiable(time):
    net, objective = make(gamma=0.05, time=time, time_conditioning=True)
    net.train()
    loss = objective.loss(net, random_tokens(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None
    )


def test_config_checks():
    config = load_config("configs/gamma-hybrid-tiny.yaml")
    assert config.diffusion.process == "gamma-hybrid" and config.diffusion.gamma == 0.01
    assert config.model.time_conditioning
    assert load_config("configs/gamma-hybrid-gpt2-small.yaml").data.tokenizer.kind == "gpt2"
    with pytest.raises(ConfigError, match="goes with family gamma-hybrid"):
        load_config("configs/gamma-hybrid-tiny.yaml", ["diffusion.process=absorbing"])
    with pytest.raises(ConfigError, match="goes with family gamma-hybrid"):
        load_config(
            None, ["family=mdlm", "diffusion.process=gamma-hybrid", "diffusion.time=continuous"]
        )
    with pytest.raises(ConfigError, match="diffusion.gamma"):
        load_config("configs/gamma-hybrid-tiny.yaml", ["diffusion.gamma=1.0"])
    with pytest.raises(ConfigError, match="bad sigma schedule"):
        load_config("configs/gamma-hybrid-tiny.yaml", ["diffusion.sigma=cosine"])


TINY = [
    "--set", "data.corpus=synthetic",
    "--set", "data.tokenizer.kind=char",
    "--set", "data.seq_len=24",
    "--set", "data.synthetic.n_docs=200",
    "--set", "data.synthetic.doc_len=48",
    "--set", "data.synthetic.n_states=12",
    "--set", "model.max_len=32",
    "--set", "model.n_layers=1",
    "--set", "model.d_model=32",
    "--set", "model.n_heads=2",
    "--set", "train.batch_size=8",
    "--set", "train.steps=4",
    "--set", "train.warmup_steps=2",
    "--set", "train.eval_every=4",
    "--set", "train.eval_batches=2",
    "--set", "train.save_every=4",
    "--set", "train.precision=fp32",
    "--set", "diffusion.schedule=flat:100",
    "--set", "diffusion.eval_steps=4",
]  # fmt: skip


def test_cli_trains_samples_and_evaluates(tmp_path, capsys):
    out, cache = tmp_path / "run", ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    args = ["train", "--config", "configs/gamma-hybrid-tiny.yaml", "--out", str(out),
            "--no-progress", *TINY, *cache]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "test", "--max-blocks", "4", *cache]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "gamma-hybrid"
    assert math.isfinite(result["nelbo_per_token"])
    assert result["nelbo_per_token"] > result["entropy_floor"]
    assert main(["sample", str(out), "-n", "2", "--length", "12", "--steps", "4"]) == 0
    assert capsys.readouterr().out.count("=== sample") == 2

    lm = hdlm.load(out)
    prompt = [3, 4, 5]
    for sampler in ["tweedie", "euler"]:
        tokens = lm.sample(3, 16, sampler=sampler, prompt=prompt, steps=6, seed=1)
        assert tokens[:, 1:4].tolist() == [prompt] * 3  # the prompt is never changed
        assert not (tokens == lm.tokenizer.mask_id).any()  # every position ends on a data id
        again = lm.sample(3, 16, sampler=sampler, prompt=prompt, steps=6, seed=1)
        assert torch.equal(tokens, again)
    assert main(["sample", str(out), "--sampler", "acs"]) == 2
    assert "tweedie or euler" in capsys.readouterr().err
