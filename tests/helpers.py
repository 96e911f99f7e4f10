"""Small builders shared by the test files."""

import dataclasses

import torch

from hdlm.config import RunConfig, TokenizerConfig, complete
from hdlm.data.tokenizer import build_tokenizer
from hdlm.model import LanguageModel, Transformer
from hdlm.objectives import build_objective

# the tiny block the objective, gamma and A3 tests share: 23 ids with MASK last, BOS + 16 tokens
V, MASK, L = 23, 22, 17


def random_tokens(n=4, length=L, vocab=MASK):
    """Random blocks [n, length] of ids below `vocab` (so never MASK), BOS (0) first."""
    tokens = torch.randint(0, vocab, (n, length))
    tokens[:, 0] = 0  # BOS
    return tokens


def tiny_objective(family, vocab, mask_id, length, time_conditioning=False, **diffusion):
    """(random 2-layer network, objective) of `family` for blocks of `length` tokens."""
    config = RunConfig(family=family)
    config.data.seq_len = length
    config.model = dataclasses.replace(
        config.model, vocab_size=vocab, max_len=64, n_layers=2, n_heads=2, d_model=32,
        time_conditioning=time_conditioning,
    )  # fmt: skip
    config.diffusion = dataclasses.replace(config.diffusion, **diffusion)
    config = complete(config)
    torch.manual_seed(0)
    return Transformer(config.model).eval(), build_objective(config, mask_id)


TOKENIZER = build_tokenizer(TokenizerConfig(kind="char"), ["abcdefghijklmnopqrstuvwxyz"])


def language_model(family, a3=None, model=None, **diffusion):
    """A random 2-layer `LanguageModel` of `family` over lower-case letters, blocks of 25
    (`model`: other model settings)."""
    config = RunConfig(family=family)
    config.data.seq_len = 25
    shape = {"vocab_size": TOKENIZER.vocab_size, "max_len": 64, "n_layers": 2, "n_heads": 2,
             "d_model": 32}  # fmt: skip
    config.model = dataclasses.replace(config.model, **shape | (model or {}))
    config.diffusion = dataclasses.replace(config.diffusion, **diffusion)
    config.a3 = dataclasses.replace(config.a3, **(a3 or {}))
    config = complete(config)
    torch.manual_seed(0)
    return LanguageModel(config, TOKENIZER).eval()
