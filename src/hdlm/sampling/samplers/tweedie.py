"""`tweedie`: analytic (Tweedie) τ-leaping for γ-hybrid models (SEDD's default sampler)."""

from hdlm.sampling.registry import register
from hdlm.sampling.tau_leaping import LeapingSampler


@register
class Tweedie(LeapingSampler):
    name = "tweedie"
    summary = "x_s ~ Σ_x0 p_θ(x0 | x_t) q(x_s | x_t, x0), exactly, per position"
    method = "tweedie"
