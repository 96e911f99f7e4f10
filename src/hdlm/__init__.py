"""hdlm: language models between autoregressive and diffusion generation.

`hdlm.load(path)` returns a `LanguageModel` with `.nelbo(tokens)`, `.sample(...)`, `.save(path)`.
"""

from hdlm.version import __version__

__all__ = ["LanguageModel", "__version__", "load"]


def __getattr__(name: str):
    # imported lazily so that `hdlm --help` does not pay for importing torch
    if name in ("LanguageModel", "load"):
        from hdlm import model

        return getattr(model, name)
    raise AttributeError(f"module 'hdlm' has no attribute {name!r}")
