"""hdlm: language models between autoregressive and diffusion generation.

`hdlm.load(path)` returns a `LanguageModel` with `.nelbo(tokens)`, `.sample(...)`, `.save(path)`.
"""

__version__ = "0.1.0"
__all__ = ["LanguageModel", "load"]


def __getattr__(name: str):
    # imported lazily so that `hdlm --help` does not pay for importing torch
    if name in __all__:
        from hdlm import model

        return getattr(model, name)
    raise AttributeError(f"module 'hdlm' has no attribute {name!r}")
