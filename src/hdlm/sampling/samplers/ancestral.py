"""`ancestral`: the masking reverse step along a hyperschedule, no correction (MDLM)."""

from hdlm.sampling.hyperschedule import MaskingSampler
from hdlm.sampling.registry import register


@register
class Ancestral(MaskingSampler):
    name = "ancestral"
    summary = "reveal each masked token with probability (t - s) / t from p_θ (MDLM)"
    correction = "none"
