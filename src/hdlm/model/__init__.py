"""The backbone (`Transformer`, its `KVCache`), A3's two-stream network, checkpoints, Hugging Face
interop, and `LanguageModel` (`hdlm.load`)."""

from hdlm.model.language_model import NETWORKS, LanguageModel, load
from hdlm.model.transformer import KVCache, Transformer

__all__ = ["NETWORKS", "KVCache", "LanguageModel", "Transformer", "load"]
