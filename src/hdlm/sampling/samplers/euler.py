"""`euler`: SEDD's Euler τ-leaping step for γ-hybrid models."""

from hdlm.sampling.registry import register
from hdlm.sampling.tau_leaping import LeapingSampler


@register
class Euler(LeapingSampler):
    name = "euler"
    summary = "jump with the reverse rates frozen at t; the last step to 0 a Tweedie one"
    method = "euler"
