"""`acs`: HDLM's Adaptive Correction Sampler along a hyperschedule."""

from hdlm.sampling.hyperschedule import MaskingSampler
from hdlm.sampling.options import ETA
from hdlm.sampling.registry import register


@register
class AdaptiveCorrection(MaskingSampler):
    name = "acs"
    summary = "ancestral, and each visible in-flight token re-drawn with probability η (1 - p)"
    correction = "acs"
    options = (*MaskingSampler.options, ETA.with_default(0.015))  # the official code's η
