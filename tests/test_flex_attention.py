"""`model.attention: flex` equals SDPA with the dense mask for every kind of mask the families use:
hyperschedule masks, the two-copy block-diffusion layout, slide annealing, A3's two streams and
KV-cache decoding (uncompiled FlexAttention on CPU; one compiled check is marked slow)."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from hdlm import masks
from hdlm.config import ModelConfig, validate_model
from hdlm.errors import ConfigError, HdlmError
from hdlm.model import flex
from hdlm.model.transformer import Transformer
from tests.helpers import language_model, random_tokens

FAMILIES = {
    "hyperschedule (block, schedule mask)": ("block-diffusion", {"attention": "schedule"}),
    "block two-copy": ("block-diffusion", {}),
    "slide": ("slide", {}),
    "a3 two streams": ("a3", {}),
}


def count_flex_calls(monkeypatch) -> list:
    """Record every call of `flex.attend` (so a test knows the flex path ran)."""
    calls, attend = [], flex.attend
    monkeypatch.setattr(flex, "attend", lambda *a, **k: calls.append(1) or attend(*a, **k))
    return calls


def with_attention(lm, choice: str):
    lm.net.config.attention = choice
    return lm


@torch.no_grad()  # torch's FlexAttention has no backward pass on CPU (gpu-check compares them)
def training_loss(lm, tokens):
    return lm.objective.loss(lm.net, tokens, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", FAMILIES)
def test_flex_training_loss_equals_sdpa(kind, monkeypatch):
    family, diffusion = FAMILIES[kind]
    lm = language_model(family, **diffusion).train()
    tokens = random_tokens(3, 25, lm.tokenizer.vocab_size - 1)
    loss = training_loss(with_attention(lm, "sdpa"), tokens)
    calls = count_flex_calls(monkeypatch)
    torch.testing.assert_close(training_loss(with_attention(lm, "flex"), tokens), loss)
    assert calls


def test_flex_training_on_cpu_is_a_one_line_error():
    lm = with_attention(language_model("block-diffusion"), "flex").train()
    with pytest.raises(HdlmError, match="no backward pass on CPU"):
        lm.objective.loss(lm.net, random_tokens(1, 25, 20), None)


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("block-diffusion", {"schedule": "block:4:2"}),  # cached block-causal decoding
        ("slide", {}),
        ("a3", {"group_size": 2}),  # committed groups' content rows in the cache
    ],
)
def test_flex_cached_sampling_equals_sdpa(family, options, monkeypatch):
    lm = language_model(family)
    sdpa = with_attention(lm, "sdpa").sample(2, 20, seed=5, **options)
    calls = count_flex_calls(monkeypatch)
    flexed = with_attention(lm, "flex").sample(2, 20, seed=5, **options)
    assert torch.equal(flexed, sdpa) and calls


def test_flex_nelbo_equals_sdpa():
    lm = language_model("block-diffusion")
    tokens = random_tokens(2, 25, lm.tokenizer.vocab_size - 1)
    torch.manual_seed(0)
    with torch.no_grad():
        reference = with_attention(lm, "sdpa").nelbo(tokens)
        torch.manual_seed(0)
        torch.testing.assert_close(with_attention(lm, "flex").nelbo(tokens), reference)


@torch.no_grad()
def test_kv_cache_forward_with_a_mask_equals_sdpa(tiny_model_config):
    """A pass of 6 new rows over 10 cached ones, block-causal: the decoding shape (Lq < Lk)."""
    net = Transformer(tiny_model_config).eval()
    tokens = torch.randint(0, 37, (2, 16))
    mask = masks.block_causal(16, 3)[10:]
    outputs = []
    for choice in ("sdpa", "flex"):
        net.config.attention = choice
        cache = net.new_cache(2, "cpu")
        net(tokens[:, :10], cache=cache, commit=True)
        outputs.append(net(tokens[:, 10:], attn_mask=mask, cache=cache))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)


def test_skipped_fraction_counts_the_tiles_without_a_visible_pair():
    mask = masks.two_copy_block_diffusion(512, 16)  # [1024, 1024]: 8 x 8 tiles of 128
    tiles = mask.view(8, 128, 8, 128).any(dim=(1, 3))
    expected = 1 - tiles.float().mean().item()
    assert expected > 0.3
    assert flex.skipped_fraction(flex.block_mask(mask, 1024)) == pytest.approx(expected)


def test_auto_picks_flex_on_cuda_for_full_passes_and_never_with_dropout():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not flex.use_flex("auto", cpu) and flex.use_flex("auto", cuda)
    assert flex.use_flex("flex", cpu) and not flex.use_flex("sdpa", cuda)
    assert not flex.use_flex("auto", cuda, dropout=0.1)
    assert not flex.use_flex("auto", cuda, q_len=16) and flex.use_flex("flex", cpu, q_len=16)


def test_flex_with_dropout_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="model.attention=flex has no dropout"):
        validate_model(ModelConfig(attention="flex", dropout=0.1))


@pytest.mark.slow
def test_compiled_flex_equals_sdpa_and_a_new_mask_reuses_the_kernel():
    """Compiled once: masks built afresh (new closures over new tensors) of the same shape add
    no graph, so a training run compiles its attention once."""
    torch._dynamo.reset()
    counters.clear()
    q, k, v = (torch.randn(1, 2, 512, 16) for _ in range(3))
    for width in (16, 8):
        mask = masks.two_copy_block_diffusion(256, width)
        out = flex.attend(q, k, v, flex.block_mask(mask, 512), compiled=True)
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
