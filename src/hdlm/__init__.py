"""hdlm: language models between autoregressive and diffusion generation.

`hdlm.load(path)` returns a `LanguageModel` with `.nelbo(tokens)`, `.sample(...)`, `.save(path)`.
"""

from hdlm.model import LanguageModel, load
from hdlm.version import __version__

__all__ = ["LanguageModel", "__version__", "load"]
