import dataclasses

import pytest
import torch

from hdlm.errors import HdlmError
from hdlm.model import KVCache, Transformer

LLAMA_SHAPED = {"mlp": "swiglu", "d_ff": 24, "n_kv_heads": 1, "qk_norm": True, "head_dim": 8,
                "qkv_bias": True, "bias": False, "norm_eps": 1e-5}  # fmt: skip


@pytest.mark.parametrize(
    ("norm", "position", "llama"),
    [("rmsnorm", "rope", False), ("layernorm", "rope", False), ("layernorm", "learned", False),
     ("rmsnorm", "rope", True)],
)  # fmt: skip
def test_kv_cache_decoding_equals_full_causal_forward(tiny_model_config, norm, position, llama):
    config = dataclasses.replace(tiny_model_config, norm=norm, position=position, bias=True)
    if llama:  # grouped-query (multi-query) attention: the cache holds 1 key/value head
        config = dataclasses.replace(config, **LLAMA_SHAPED)
    net = Transformer(config).eval()
    tokens = torch.randint(0, 37, (3, 20))
    full = net(tokens)
    cache = KVCache.empty(net.config, 3, "cpu", torch.float32)
    pieces = [net(tokens[:, :7], cache=cache, commit=True)]  # a prompt, then one token per step
    pieces += [net(tokens[:, i : i + 1], cache=cache, commit=True) for i in range(7, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    assert cache.keys[0].shape[1] == (1 if llama else 2)


def test_the_cache_grows_on_demand_up_to_the_context(tiny_model_config, monkeypatch):
    monkeypatch.setattr(KVCache, "INITIAL", 4)
    net = Transformer(tiny_model_config).eval()
    tokens = torch.randint(0, 37, (2, 32))
    cache = KVCache.empty(net.config, 2, "cpu", torch.float32)
    assert cache.keys[0].shape[2] == 4
    pieces = [net(tokens[:, i : i + 3], cache=cache, commit=True) for i in range(0, 30, 3)]
    pieces.append(net(tokens[:, 30:], cache=cache, commit=True))
    torch.testing.assert_close(torch.cat(pieces, dim=1), net(tokens), rtol=1e-5, atol=1e-5)
    assert cache.keys[1].shape[2] == 32  # 4, 8, 16, then capped at max_len


def test_reading_the_cache_without_commit_leaves_it_unchanged(tiny_model_config):
    net = Transformer(tiny_model_config).eval()
    tokens = torch.randint(0, 37, (2, 12))
    cache = KVCache.empty(net.config, 2, "cpu", torch.float32)
    net(tokens[:, :8], cache=cache, commit=True)
    # four in-flight positions with full attention among themselves and to the cache
    peek = net(tokens[:, 8:], cache=cache, attn_mask=torch.ones(4, 12, dtype=torch.bool))
    assert cache.length == 8
    full = net(
        tokens,
        causal=False,
        attn_mask=torch.ones(12, 12, dtype=torch.bool)
        .tril()
        .logical_or(torch.arange(12)[:, None] >= 8),
    )
    torch.testing.assert_close(peek, full[:, 8:], rtol=1e-5, atol=1e-5)


def test_explicit_causal_mask_equals_is_causal(tiny_model_config):
    net = Transformer(tiny_model_config).eval()
    tokens = torch.randint(0, 37, (2, 16))
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    torch.testing.assert_close(net(tokens, attn_mask=mask), net(tokens), rtol=1e-5, atol=1e-5)


def test_future_tokens_do_not_change_causal_outputs(tiny_model_config):
    net = Transformer(tiny_model_config).eval()
    tokens = torch.randint(0, 37, (1, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 37
    torch.testing.assert_close(net(tokens)[:, :10], net(changed)[:, :10])
    assert not torch.allclose(net(tokens, causal=False)[:, :10], net(changed, causal=False)[:, :10])


def test_noise_level_conditioning_starts_as_the_identity(tiny_model_config):
    plain = Transformer(tiny_model_config).eval()
    conditioned = Transformer(dataclasses.replace(tiny_model_config, time_conditioning=True)).eval()
    conditioned.load_state_dict(plain.state_dict(), strict=False)
    tokens = torch.randint(0, 37, (2, 10))
    t = torch.rand(2, 10)
    torch.testing.assert_close(conditioned(tokens, noise_level=t), plain(tokens))
    with pytest.raises(HdlmError, match="noise_level"):
        conditioned(tokens)


def test_weight_tying(tiny_model_config):
    tied = Transformer(tiny_model_config)
    untied = Transformer(dataclasses.replace(tiny_model_config, tie_weights=False))
    assert tied.head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 37 * 32


def test_sequence_longer_than_context_is_a_clear_error(tiny_model_config):
    net = Transformer(tiny_model_config)
    with pytest.raises(HdlmError, match="longer than the model's context"):
        net(torch.zeros(1, 33, dtype=torch.long))


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(tiny_model_config, monkeypatch):
    from hdlm.hardware import compile_network

    def broken_compile(function):
        def compiled(*args, **kwargs):
            raise RuntimeError("C++ compiler not found\n(long traceback)")

        return compiled

    net = Transformer(tiny_model_config)
    tokens = torch.randint(0, 30, (2, 9))
    expected = net(tokens)
    monkeypatch.setattr(torch, "compile", broken_compile)
    warnings = []
    compile_network(net, warnings.append)
    torch.testing.assert_close(net(tokens), expected)
    torch.testing.assert_close(net(tokens), expected)
    assert warnings == [
        "warning: torch.compile failed (RuntimeError: C++ compiler not found); running eager"
    ]
    assert set(net.state_dict()) == set(Transformer(tiny_model_config).state_dict())


def test_cpu_bf16_attention_matches_sdpa():
    from hdlm.model.transformer import attention

    q, k, v = (torch.randn(2, 3, 9, 8).bfloat16() for _ in range(3))
    rows = torch.rand(9, 9) < 0.5
    rows |= torch.eye(9, dtype=torch.bool)
    per_sequence = torch.stack([rows, rows.T])[:, None]
    additive = torch.zeros(9, 9).masked_fill(~rows, float("-inf"))
    for mask, causal in [(None, True), (None, False), (rows, False), (per_sequence, False),
                         (additive, False)]:  # fmt: skip
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal and mask is None
        )
        ours = attention(q, k, v, mask, causal, 0.0)
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), expected, atol=2e-2, rtol=2e-2)
    # grouped-query: query heads 0-2 read one key/value head, both paths (matmuls and SDPA)
    one_k, one_v = k[:, :1], v[:, :1]
    expected = attention(q.float(), one_k.float().expand_as(q), one_v.float().expand_as(q),
                         rows, False, 0.0)  # fmt: skip
    torch.testing.assert_close(attention(q, one_k, one_v, rows, False, 0.0).float(), expected,
                               atol=2e-2, rtol=2e-2)  # fmt: skip
    torch.testing.assert_close(attention(q.float(), one_k.float(), one_v.float(), rows, False, 0.0),
                               expected)  # fmt: skip
