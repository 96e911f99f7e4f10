"""`a3`: A3 decoding in any order and group size, and infilling (`sampling.a3`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hdlm.denoiser import Denoiser
from hdlm.sampling.a3 import ORDERS, decode
from hdlm.sampling.a3_groups import parse_groups
from hdlm.sampling.options import TRACE, USE_CACHE, Option
from hdlm.sampling.registry import Sampler, register

OPTIONS = (
    USE_CACHE,
    TRACE,
    Option(
        "order",
        None,
        "left-to-right (default) | random | confidence | entropy (the last "
        "two: commit the positions whose sampled distribution is surest)",
        choices=ORDERS,
    ),  # fmt: skip
    Option("group_size", 1, "tokens committed per step", int, low=1),
    Option(
        "groups",
        None,
        "explicit order instead of --order: groups of positions (BOS = 0) in "
        "decoding order, e.g. '1-3,4-7,8+10,9' (',' between groups, '+' within, A-B ranges), "
        "or @FILE",
        object,
        parse=parse_groups,
    ),  # fmt: skip
    Option(
        "eos_stop",
        True,
        "keep decoding after EOS (default: a row ends at its first generated EOS)",
        bool,
        flag_name="--no-eos-stop",
    ),  # fmt: skip
    Option("blank_max", 8, "longest free-length blank", int, low=1, template=True, cli=False),
)


@register
class A3Decoding(Sampler):
    name = "a3"
    summary = "commit groups of positions in any order from the two-stream network (A3)"
    objectives = ("a3",)
    options = OPTIONS

    def resolve(self, denoiser: Denoiser, options: dict[str, Any]) -> dict[str, Any]:
        groups = options["groups"]
        if isinstance(groups, Tensor):
            options["groups"] = groups.tolist()  # (JSON-able, as the report shows it)
        if groups is None:
            options["order"] = options["order"] or "left-to-right"
        return options

    def run(self, denoiser, tokens, known, generator, options, pick, trace) -> Tensor:
        if trace is not None:
            trace.title = "hdlm A3 decoding trace (each row: the group committed at that step)"
        stop = denoiser.eos_id if options["eos_stop"] else None
        return decode(
            denoiser.net, tokens, known, denoiser.mask_id, generator, options["order"],
            options["group_size"], options["use_cache"], groups=options["groups"], stop_id=stop,
            trace=trace, **pick,
        )  # fmt: skip
