"""Uniform resampling: each token is replaced by a uniform data id with probability t."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hdlm.processes import base
from hdlm.processes.base import (
    NoiseProcess,
    alpha,
    data_index,
    data_log_probs,
    levels,
    resample,
)


def step_resample_prob(t: Tensor, s: Tensor) -> Tensor:
    """Probability that the uniform chain resamples a token between levels s < t:
    1 - alpha_t / alpha_s = (t - s) / (1 - s)."""
    return (t - s) / alpha(s)


def uniform_marginal(x: Tensor, r: Tensor, num_data: int) -> Tensor:
    """(1 - r) e_x + r u over the data ids (u uniform): [B, L, N].

    As a function of its last index j this is q(j | x) for the kernel that resamples its input
    uniformly with probability r; the kernel is symmetric, so it is also q(x | j).
    """
    one_hot = torch.nn.functional.one_hot(x, num_data).to(r.dtype)
    r = r.unsqueeze(-1)
    return (1 - r) * one_hot + r / num_data


def log_push_forward(log_w: Tensor, r: Tensor) -> Tensor:
    """log sum_i w_i q(j | i) for the uniform kernel q(j | i) = (1 - r) e_i(j) + r / N."""
    num_data = log_w.shape[-1]
    spread = torch.log(r) - math.log(num_data) + torch.logsumexp(log_w, dim=-1)
    return torch.logaddexp(torch.log1p(-r).unsqueeze(-1) + log_w, spread.unsqueeze(-1))


def poisson_divergence(log_rate: Tensor, log_model_rate: Tensor) -> Tensor:
    """r_hat - r + r log(r / r_hat) = r phi(log r_hat - log r), phi(y) = e^y - 1 - y >= 0.

    The KL rate between two jump processes per target state; written with phi so that it stays
    accurate when r_hat is close to r.
    """
    y = log_model_rate - log_rate
    return log_rate.exp() * (torch.expm1(y) - y)


@dataclass(frozen=True)
class Uniform(NoiseProcess):
    """Uniform resampling: q(x_t | x0) = alpha(t) e_x0 + (1 - alpha(t)) u, u uniform on data ids.

    The chain: between levels s < t a token is kept with probability alpha_t / alpha_s and
    resampled uniformly otherwise. MASK is never produced (x0 and x_t are data ids).
    """

    vocab_size: int
    mask_id: int

    def corrupt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t = a uniform data id with probability t (possibly x0 again), x0 otherwise."""
        return resample(x0, t, self.mask_id, self.num_data, generator)

    def step_loss(self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Exact KL of the posterior against the model's reverse, over the N data ids:

        q(x_s = j | x_t, x0) = q(x_t | j) q_s(j | x0) / q_t(x_t | x0),
        p_theta(x_s = j | x_t) = q(x_t | j) sum_i w_i q_s(j | i),
        w_i = p_theta(i | x_t) / q_t(x_t | i), with q(x_t | j) the step kernel (it resamples with
        probability 1 - alpha_t / alpha_s).
        """
        moving = levels(t, x0, log_probs) > levels(s, x0, log_probs)
        # Positions that do not move are evaluated as a dummy step t -> 0 (finite) and zeroed.
        t = levels(t, x0, log_probs).clamp_min(base.T_EPS)
        s = torch.where(moving, levels(s, x0, log_probs), 0.0)
        lp = data_log_probs(log_probs, self.mask_id)
        i0, it = data_index(x0, self.mask_id), data_index(x_t, self.mask_id)
        n = self.num_data
        step_kernel = uniform_marginal(it, step_resample_prob(t, s), n)  # q(x_t | x_s = j)
        likelihood = uniform_marginal(it, t, n)  # q_t(x_t | x0 = i)
        evidence = likelihood.gather(-1, i0.unsqueeze(-1))  # q_t(x_t | x0)
        posterior = step_kernel * uniform_marginal(i0, s, n) / evidence
        log_model = step_kernel.log() + log_push_forward(lp - likelihood.log(), s)
        kl = (torch.xlogy(posterior, posterior) - posterior * log_model).sum(-1)
        return torch.where(moving, kl, 0.0)

    def rate_loss(
        self, log_probs: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, dt: Tensor
    ) -> Tensor:
        """dt (beta_t / N) sum_j [r_hat_j - r_j + r_j log(r_j / r_hat_j)], beta_t = 1 / alpha_t,

        with the reverse jump rates to j (in units of beta_t / N)
        r_j = q_t(j | x0) / q_t(x_t | x0)  (truth) and  r_hat_j = sum_i w_i q_t(j | i)  (model),
        w_i = p_theta(i | x_t) / q_t(x_t | i). t is clamped to [T_EPS, 1 - T_EPS].
        """
        t = levels(t, x0, log_probs).clamp(base.T_EPS, 1 - base.T_EPS)
        dt = levels(dt, x0, log_probs)
        lp = data_log_probs(log_probs, self.mask_id)
        i0, it = data_index(x0, self.mask_id), data_index(x_t, self.mask_id)
        likelihood = uniform_marginal(it, t, self.num_data)  # q_t(x_t | i)
        log_evidence = likelihood.gather(-1, i0.unsqueeze(-1)).log()
        log_rate = uniform_marginal(i0, t, self.num_data).log() - log_evidence
        log_model_rate = log_push_forward(lp - likelihood.log(), t)
        divergence = poisson_divergence(log_rate, log_model_rate).sum(-1)
        return dt / (alpha(t) * self.num_data) * divergence
