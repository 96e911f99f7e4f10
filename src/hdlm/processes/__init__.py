"""Forward noising processes, their exact NELBO terms and their reverse steps (docs/math.md).

One noise level per position, t in [0, 1] (0 clean, 1 fully noised):

* `Absorbing` (absorbing.py): x_t = MASK with probability t, x0 otherwise (MDLM);
* `Uniform` (uniform.py): x_t = a uniform data id with probability t, x0 otherwise;
* `EpsHybrid` (eps_hybrid.py): masked with probability t; a token still visible at t > 0 is a
  uniform draw with probability ε (HDLM's ε-hybrid; ε = 0 is `Absorbing`);
* `GammaHybrid` (gamma_hybrid.py): HDLM's γ-hybrid CTMC, Q = (1 - γ) Q_absorb + γ Q_uniform under
  a σ schedule (SEDD's score entropy; γ = 0 is SEDD's absorbing chain).

Each process owns `corrupt` (sample q(x_t | x0)), `step_loss` (the exact KL of a discrete reverse
step t -> s), `rate_loss` (the continuous-time integrand), `prior_loss` and, for the processes a
sampler can walk, the reverse steps of a protocol of `hdlm.denoiser` (`MaskingReverse`:
`Absorbing`, `EpsHybrid`; `ChainReverse`: `EpsHybrid`; `LeapingReverse`: `GammaHybrid`).
`base.py` holds the conventions and shared helpers.
"""

from __future__ import annotations

from hdlm.processes.absorbing import CORRECTIONS, Absorbing
from hdlm.processes.base import (
    T_EPS,
    NoiseProcess,
    alpha,
    clean_log_prob,
    data_index,
    data_log_probs,
    log1mexp,
    random_data_tokens,
    resample,
    reveal_fraction,
)
from hdlm.processes.eps_hybrid import FINALS, REVEALS, EpsHybrid, revealed_token_kl
from hdlm.processes.gamma_hybrid import GammaHybrid, SigmaSchedule, score_entropy
from hdlm.processes.uniform import Uniform, log_push_forward, poisson_divergence, uniform_marginal

__all__ = [
    "CORRECTIONS", "FINALS", "REVEALS", "T_EPS", "Absorbing", "EpsHybrid", "GammaHybrid",
    "NoiseProcess", "SigmaSchedule", "Uniform", "alpha", "build_process", "clean_log_prob",
    "data_index", "data_log_probs", "log1mexp", "log_push_forward", "poisson_divergence",
    "random_data_tokens", "resample", "reveal_fraction", "revealed_token_kl", "score_entropy",
    "uniform_marginal",
]  # fmt: skip


def build_process(options, vocab_size: int, mask_id: int) -> NoiseProcess:
    """The noise process a `DiffusionConfig` names (`process`, `eps`, `gamma`, `sigma`)."""
    if options.process == "absorbing":
        return Absorbing(mask_id, vocab_size)
    if options.process == "uniform":
        return Uniform(vocab_size, mask_id)
    if options.process == "gamma-hybrid":
        return GammaHybrid(options.gamma, mask_id, vocab_size, SigmaSchedule.parse(options.sigma))
    return EpsHybrid(options.eps, mask_id, vocab_size)
