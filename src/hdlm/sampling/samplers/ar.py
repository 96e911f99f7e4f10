"""`ar`: left to right with a KV cache, one token per step (AR checkpoints; the speed baseline)."""

from __future__ import annotations

from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.options import TRACE, USE_CACHE
from hdlm.sampling.registry import Sampler, register


@register
class Autoregressive(Sampler):
    name = "ar"
    summary = "left to right, x_i ~ p_θ(x_i | x_<i), with a KV cache"
    objectives = ("ar",)
    options = (USE_CACHE, TRACE)

    def run(self, denoiser, tokens, known, generator, options, pick, trace) -> Tensor:
        given = int(known.sum())
        if not known[:given].all():
            raise HdlmError("ar checkpoints continue a prompt; infill with an a3 or masked model")
        return sample_ar(
            denoiser.net, tokens[:, :given], len(known), generator, denoiser.mask_id,
            options["use_cache"], trace, **pick,
        )  # fmt: skip
