"""`remask`: ReMDM remasking ("cap" schedule) along a hyperschedule."""

from hdlm.sampling.hyperschedule import MaskingSampler
from hdlm.sampling.options import ETA
from hdlm.sampling.registry import register


@register
class Remask(MaskingSampler):
    name = "remask"
    summary = "ancestral, and each visible in-flight token masked again w.p. min(η, s / (1 - t))"
    correction = "remask"
    options = (*MaskingSampler.options, ETA.with_default(0.02))
