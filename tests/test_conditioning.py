"""The DDiT options of the backbone (`model.adaln`, `hdlm.model.conditioning`) and
`LanguageModel.logits` on models trained by hdlm."""

import dataclasses

import pytest
import torch
from helpers import TOKENIZER, language_model, random_tokens

from hdlm.config import RunConfig, complete
from hdlm.errors import ConfigError, HdlmError
from hdlm.model import LanguageModel, Transformer


def ddit_config(**options):
    config = RunConfig(family="gamma-hybrid")
    config.data.seq_len = 17
    config.model = dataclasses.replace(
        config.model, vocab_size=TOKENIZER.vocab_size, max_len=64, n_layers=2, n_heads=2,
        d_model=32, norm="layernorm", bias=False, mlp_bias=True, head_bias=True,
        tie_weights=False, cond_dim=16, adaln="blocks+final", time_conditioning=True,
        cond_sigma="loglinear:0.001", **options,
    )  # fmt: skip
    return complete(config)


def test_adaln_starts_as_identity_blocks():
    """DiT's initialisation: zero modulation, so every block is the identity and the output is
    head(LayerNorm(embedding)) whatever the noise level."""
    torch.manual_seed(0)
    net = Transformer(ddit_config().model).eval()
    tokens = random_tokens(2, 17, TOKENIZER.vocab_size - 1)
    t = torch.rand(2, 17)
    expected = net.head(net.norm(net.embed(tokens)))
    torch.testing.assert_close(net(tokens, causal=False, noise_level=t), expected)


def test_adaln_conditions_per_position_and_trains():
    torch.manual_seed(0)
    lm = LanguageModel(ddit_config(input_mix_gamma=0.1), TOKENIZER)
    for p in lm.net.parameters():  # leave the zero initialisation: make conditioning matter
        torch.nn.init.normal_(p, std=0.2)
    tokens = random_tokens(2, 17, TOKENIZER.vocab_size - 1)
    t = torch.rand(2, 17)
    out = lm.logits(tokens, t)
    changed = t.clone()
    changed[:, 5] = 0.9
    moved = (lm.logits(tokens, changed) - out).abs().amax(-1)
    assert moved[:, 5].min() > 1e-3  # its own level moves position 5 ...
    assert moved.max() > 1e-3  # ... and, through attention, the others
    loss = lm.objective.loss(lm.net, tokens, torch.Generator().manual_seed(0))
    loss.backward()
    assert lm.net.blocks[0].modulation.linear.weight.grad.abs().sum() > 0
    assert lm.net.cond_embed.mlp[0].weight.grad.abs().sum() > 0


def test_input_mix_needs_adaln():
    config = ddit_config()
    config.model = dataclasses.replace(config.model, adaln="none", input_mix_gamma=0.1)
    with pytest.raises(ConfigError, match="input_mix_gamma"):
        complete(config)


def test_logits_of_hdlm_models_are_the_network_output():
    tokens = random_tokens(2, 25, TOKENIZER.vocab_size - 1)
    ar = language_model("ar")
    torch.testing.assert_close(ar.logits(tokens), ar.net(tokens, causal=True))
    mdlm = language_model("mdlm")
    torch.testing.assert_close(mdlm.logits(tokens, 0.5), mdlm.net(tokens, causal=False))
    for offset in (0, 1):  # blocks over the positions after BOS; offset 1: BOS in block 0
        block = language_model("block-diffusion", schedule=f"block:4:4:{offset}")
        ids = torch.tensor([(p - 1 + offset) // 4 for p in range(25)])  # BOS: p = 0
        mask = ids[None, :] <= ids[:, None]
        expected = block.net(tokens, attn_mask=mask, causal=False)
        torch.testing.assert_close(block.logits(tokens), expected)
    with pytest.raises(HdlmError, match="attention=schedule"):
        language_model("slide").logits(tokens)
    with pytest.raises(HdlmError, match="a3 models"):
        language_model("a3").logits(tokens)
    gamma = LanguageModel(ddit_config(), TOKENIZER)
    with pytest.raises(HdlmError, match="pass t"):
        gamma.logits(tokens[:, :17])
