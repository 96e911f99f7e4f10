"""Exact identities of the diffusion NELBO (design.md §2, docs/math.md)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MASK, L, V, random_tokens, tiny_objective

from hdlm.processes import clean_log_prob


def make(family="hyperschedule", time_conditioning=False, **diffusion):
    return tiny_objective(family, V, MASK, L, time_conditioning, **diffusion)


def test_quenched_ar_absorbing_causal_nelbo_equals_the_ar_nll_of_the_same_network():
    net, diffusion = make(
        schedule="quenched_ar", attention="causal", readout="shifted", eval_steps=L,
    )  # fmt: skip
    _, ar = make("ar")
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(diffusion.nelbo(net, tokens), ar.nelbo(net, tokens))
        # the schedule's own mask reduces to the causal one, so it gives the same numbers
        _, scheduled = make(
            schedule="quenched_ar", attention="schedule", readout="shifted", eval_steps=L
        )
        torch.testing.assert_close(scheduled.nelbo(net, tokens), ar.nelbo(net, tokens))


@pytest.mark.parametrize("readout", ["aligned", "shifted"])
def test_two_copy_layout_equals_stepping_through_the_block_schedule(readout):
    # one step per block makes the noise deterministic, so the identity is exact per sample
    options = dict(family="block-diffusion", schedule="block:4:1", readout=readout)
    net, two_copy = make(attention="two-copy", **options)
    _, stepped = make(attention="schedule", **options)
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(two_copy.nelbo(net, tokens), stepped.nelbo(net, tokens))


def mdlm_reference(net, tokens, generator):
    """MDLM's continuous-time NELBO written out directly: E_t E_xt Σ_i 1[masked] (1/t) CE_i,
    one Monte Carlo draw per row of `tokens`."""
    x0 = tokens[:, 1:]
    t = torch.rand(len(tokens), 1, generator=generator)
    masked = torch.rand(x0.shape, generator=generator) < t
    x_t = torch.where(masked, MASK, x0)
    logits = net(torch.cat((tokens[:, :1], x_t), 1), causal=False)[:, 1:].float()
    logits[..., MASK] = float("-inf")
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
    return (masked * ce / t).sum(-1)


def test_flat_absorbing_matches_the_mdlm_continuous_nelbo_in_expectation():
    net, mdlm = make(family="mdlm", time="continuous")
    copies = random_tokens(1).expand(4000, -1)  # many draws for one sequence, in one batch
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        reference = mdlm_reference(net, copies, generator)
        ours = mdlm.terms(net, copies, torch.rand(len(copies), generator=generator), generator)
    difference = ours.mean() - reference.mean()
    standard_error = (ours.var() / len(ours) + reference.var() / len(reference)).sqrt()
    assert difference.abs() < 4 * standard_error, (difference, standard_error)
    # integrating t out given the number of masked tokens gives the same bound, lower variance
    _, counted = make(family="mdlm", time="count")
    with torch.no_grad():
        count = counted.terms(net, copies, torch.rand(len(copies), generator=generator), generator)
    error = (count.var() / len(count) + reference.var() / len(reference)).sqrt()
    assert (count.mean() - reference.mean()).abs() < 4 * error
    assert count.var() < reference.var() / 2
    # a discrete flat schedule with many steps is the same bound up to O(1/S)
    _, discrete = make(family="mdlm", schedule="flat:1000", time="discrete")
    with torch.no_grad():
        estimate = discrete.terms(
            net, copies, torch.rand(len(copies), generator=generator), generator
        )
    standard_error = (estimate.var() / len(estimate) + reference.var() / len(reference)).sqrt()
    assert (estimate.mean() - reference.mean()).abs() < 4 * standard_error


@pytest.mark.parametrize("time", ["discrete", "continuous", "count"])
def test_eps_zero_is_the_absorbing_nelbo_exactly(time):
    net, hybrid = make(family="eps-hybrid", eps=0.0, time=time)
    _, absorbing = make(family="mdlm", time=time)
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(hybrid.nelbo(net, tokens), absorbing.nelbo(net, tokens))
        gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        torch.testing.assert_close(
            hybrid.loss(net, tokens, gen()), absorbing.loss(net, tokens, gen())
        )


def test_a_hybrid_with_eps_puts_loss_on_visible_positions():
    net, hybrid = make(family="eps-hybrid", eps=0.05, time="continuous")
    tokens = random_tokens()
    x0 = tokens[:, 1:]
    visible = hybrid.process.corrupt_visible(x0, torch.Generator().manual_seed(0))
    log_probs = hybrid.layout.log_probs(
        net, tokens, visible, torch.zeros(x0.shape), torch.ones_like(x0)
    )
    assert (-clean_log_prob(log_probs, x0, hybrid.process.mask_id) > 0).all()
    _, absorbing = make(family="mdlm")
    with torch.no_grad():
        assert (hybrid.nelbo(net, tokens) > absorbing.nelbo(net, tokens)).all()


def test_noise_level_conditioning_changes_nothing_at_initialisation():
    net, plain = make(family="mdlm", time="continuous")
    conditioned_net, conditioned = make(family="mdlm", time="continuous", time_conditioning=True)
    conditioned_net.load_state_dict(net.state_dict(), strict=False)
    tokens = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(
            conditioned.nelbo(conditioned_net, tokens), plain.nelbo(net, tokens)
        )


@pytest.mark.parametrize("family", ["mdlm", "block-diffusion", "slide", "eps-hybrid"])
def test_training_loss_is_finite_and_differentiable(family):
    net, objective = make(family=family)
    net.train()
    loss = objective.loss(net, random_tokens(8), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None
    )


def exact_count_nelbo(net, objective, tokens):
    """The ε-hybrid's count-time NELBO D + R of each row, by enumerating every noised input:
    D = E_k E_{k masked} E_visible [(C/k) Σ_masked rate terms], R = E_{x_{0+}} [reconstruction]."""
    process, (_, length), n_data = objective.process, tokens.shape, MASK
    noised = torch.cartesian_prod(*[torch.arange(V)] * (length - 1))
    total = []
    for row in tokens:
        x0 = row[1:].expand(len(noised), -1)
        masked = noised == MASK
        k = masked.sum(-1)
        kept = (1 - process.eps) * (noised == x0) + process.eps / n_data
        probability = torch.where(masked, 1.0, kept).prod(-1)
        subsets = torch.tensor([math.comb(length - 1, int(i)) for i in k]) * (length - 1)
        log_probs = objective.layout.log_probs(
            net, row.expand(len(noised), -1), noised, torch.zeros(x0.shape), torch.ones_like(x0)
        )
        weight = ((length - 1) / k.clamp_min(1))[:, None].float()
        rate = process.rate_loss(log_probs, x0, noised, torch.ones(x0.shape), weight).sum(-1)
        rec = -clean_log_prob(log_probs, x0, process.mask_id).sum(-1)
        diffusion = (probability * rate / subsets)[k > 0].sum()
        total.append(diffusion + (probability * rec)[k == 0].sum())
    return torch.stack(total)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_one_pass_eps_hybrid_loss_is_unbiased_for_the_exact_nelbo(fraction):
    length = 4  # BOS + 3 positions: 6^3 noised inputs to enumerate
    net, hybrid = tiny_objective(
        "eps-hybrid", V, MASK, length, eps=0.3, reconstruction_fraction=fraction
    )
    tokens = torch.randint(0, MASK, (4, length))
    tokens[:, 0] = 0
    with torch.no_grad():
        exact = exact_count_nelbo(net, hybrid, tokens).mean() / (length - 1)
        batch = tokens.repeat(100, 1)  # the split is random per call: 100 copies of each row
        losses = torch.stack(
            [hybrid.loss(net, batch, torch.Generator().manual_seed(s)) for s in range(40)]
        )
    standard_error = losses.std() / len(losses) ** 0.5
    assert (losses.mean() - exact).abs() < 4 * standard_error, (losses.mean(), exact)
    assert standard_error < 0.02 * exact  # the check has power


def test_fused_cross_entropy_equals_log_softmax_and_gather_with_its_gradient():
    from hdlm.readout import MaskedCrossEntropy, clean_log_probs

    logits = torch.randn(2, 150, V, dtype=torch.float64, requires_grad=True)  # 300 rows: 3 chunks
    target = torch.randint(0, MASK, (2, 150))
    before = logits.detach().clone()
    fused = MaskedCrossEntropy.apply(logits, target, MASK)
    reference = -clean_log_probs(logits * 1, MASK).gather(-1, target[..., None]).squeeze(-1)
    weights = torch.rand(2, 150)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(fused_grad, reference_grad.to(fused_grad.dtype))
    assert (fused_grad[..., MASK] == 0).all() and torch.equal(logits.detach(), before)


def test_visible_weights_are_hdlms_lambda_weights():
    from hdlm.processes.eps_hybrid import EpsHybrid

    hybrid = EpsHybrid(eps=0.1, mask_id=MASK, vocab_size=V)
    x0, x_t = torch.tensor([1, 2, 3]), torch.tensor([1, MASK, 0])
    weights = hybrid.visible_weights(x0, x_t, torch.full((3,), 0.5), lam=2.0)
    # clean: λ ε / (1 - t) = 0.4; masked: 0; corrupted: λ (1 - ε) / (1 - t) = 3.6
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.0, 3.6]))


@pytest.mark.parametrize("time", ["count", "continuous"])
def test_visible_weight_trains_visible_positions_and_leaves_the_nelbo_alone(time):
    net, plain = make(family="eps-hybrid", eps=0.3, time=time)
    _, weighted = make(family="eps-hybrid", eps=0.3, time=time, visible_weight=1.0)
    tokens = random_tokens(8)
    draws = torch.linspace(0.2, 0.8, 8)  # some positions masked, some visible in every row

    def terms(objective, lam):
        generator = torch.Generator().manual_seed(0)
        return objective.terms(net, tokens, draws, generator, visible_weight=lam)

    with torch.no_grad():
        extra = terms(plain, 1.0) - terms(plain, 0.0)
        assert (extra > 0).all()  # every row keeps some visible positions at these draws
        torch.testing.assert_close(terms(plain, 2.0) - terms(plain, 0.0), 2 * extra)
        torch.testing.assert_close(weighted.nelbo(net, tokens), plain.nelbo(net, tokens))
        seed = torch.Generator().manual_seed
        assert weighted.loss(net, tokens, seed(2)) > plain.loss(net, tokens, seed(2))


def test_visible_weight_needs_the_eps_hybrid():
    from hdlm.config import ConfigError

    with pytest.raises(ConfigError, match="visible_weight=1.0 .* needs diffusion.process"):
        make(family="mdlm", visible_weight=1.0)


@pytest.mark.parametrize("mask_id", [4, 10])
def test_fused_mixture_kl_equals_the_unfused_terms_with_their_gradient(mask_id):
    from hdlm.processes.base import MixtureKL, data_index, data_log_probs
    from hdlm.readout import clean_log_probs

    torch.manual_seed(0)
    vocab = 11
    logits = (3 * torch.randn(4, 100, vocab)).requires_grad_()  # 400 rows: several chunks
    x0, x = (torch.randint(0, vocab - 1, (4, 100)) for _ in range(2))
    x0, x = (ids + (ids >= mask_id).long() for ids in (x0, x))  # data ids only
    rows = torch.rand(4, 100) < 0.6
    b = torch.rand(4, 100).clamp_min(0.05)
    b[0] = 1.0  # no mixture at all: the plain cross-entropy
    weights = torch.rand(2, 4, 100)
    data = data_log_probs(clean_log_probs(logits.clone(), mask_id), mask_id)  # fills in place
    floor = ((1 - b) / (vocab - 1))[..., None]
    log_mix = torch.logaddexp(data + b.log()[..., None], floor.log())
    target = floor + b[..., None] * F.one_hot(data_index(x0, mask_id), vocab - 1)
    kl = (torch.xlogy(target, target) - target * log_mix).sum(-1)  # KL(π || P)
    at_x = log_mix.gather(-1, data_index(x, mask_id)[..., None])[..., 0]
    reference = [torch.where(rows, kl, 0.0), torch.where(rows, at_x, 0.0)]
    loss = sum((w * r).sum() for w, r in zip(weights, reference, strict=True))
    (grad,) = torch.autograd.grad(loss, logits)
    fused = MixtureKL.apply(logits, x0, x, rows, b, mask_id)
    (fused_grad,) = torch.autograd.grad(
        sum((w * f).sum() for w, f in zip(weights, fused, strict=True)), logits
    )
    for f, r in zip(fused, reference, strict=True):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_grad, grad, atol=1e-6, rtol=1e-5)
    assert (fused_grad[~rows] == 0).all()


@pytest.mark.parametrize("family", ["eps-hybrid", "gamma-hybrid"])
def test_the_hybrids_fused_rate_terms_equal_their_rate_loss(family):
    _, objective = make(family=family, time="continuous", eps=0.3, gamma=0.2)
    process = objective.process
    torch.manual_seed(1)
    logits = 2 * torch.randn(3, 16, V)
    x0 = torch.randint(0, MASK, (3, 16))
    t, dt = torch.rand(3, 16), torch.rand(3, 16)
    x_t = process.corrupt(x0, t)
    log_probs = logits.clone()
    log_probs[..., MASK] = float("-inf")
    expected = process.rate_loss(log_probs.log_softmax(-1), x0, x_t, t, dt)
    fused = process.rate_loss_of_logits(logits, x0, x_t, t, dt)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-4)
    assert (expected[x_t != MASK] != 0).any() == (family == "gamma-hybrid")
