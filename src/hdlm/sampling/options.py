"""Which sampler uses which option: the one table `fill`, `sample` and the CLI check against.

An option is *given* when it is not None (the API's defaults and the CLI's argparse defaults are
None for every option below). A given option that the chosen sampler does not use is an error
naming the option and the model's family, never silently ignored; an option that is not given
takes its default here.
"""

from __future__ import annotations

from typing import Any

from hdlm.errors import HdlmError

DIFFUSION = ("ancestral", "acs", "remask", "eps-chain", "tweedie", "euler")

# option: (the samplers that use it, its default when not given)
OPTIONS: dict[str, tuple[tuple[str, ...], Any]] = {
    "schedule": (DIFFUSION, None),  # None: the model's own (`schedule_spec`)
    "steps": (DIFFUSION, None),  # None: 128 for a flat schedule (`schedule_spec`)
    "eta": (("acs", "remask"), None),  # None: the sampler's default (`DEFAULT_ETA`)
    "use_cache": (("ar", "ancestral", "acs", "remask", "eps-chain", "a3"), True),
    "trace": (("ancestral", "acs", "remask", "eps-chain", "a3"), None),
    "order": (("a3",), None),  # None: left-to-right, unless groups are given
    "group_size": (("a3",), 1),
    "groups": (("a3",), None),
    "eos_stop": (("a3",), True),
    "blank_max": (("a3",), 8),
    "reveal": (("eps-chain",), "mixture"),  # (1 - ε) p_θ + ε u, or "model": p_θ alone
    "final": (("eps-chain",), "sample"),  # the reconstruction step: sample, greedy or none
}
# command-line spellings that are not "--" + the name with dashes
FLAGS = {"use_cache": "--no-cache", "eos_stop": "--no-eos-stop"}


def flag(name: str) -> str:
    """The command-line spelling of option `name`."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def sampler_options(family: str, sampler: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of `OPTIONS` that `sampler` uses, `given` values first, defaults otherwise.

    Raises `HdlmError` for a given option (not None) that `sampler` does not use."""
    used = {}
    for name, value in given.items():
        samplers, default = OPTIONS[name]
        if sampler in samplers:
            used[name] = default if value is None else value
        elif value is not None:
            which = ", ".join(samplers)
            raise HdlmError(
                f"{flag(name)} does not apply to {family} models (sampler {sampler}); it is an "
                f"option of the {which} sampler{'s' if len(samplers) > 1 else ''}"
            )
    return used
