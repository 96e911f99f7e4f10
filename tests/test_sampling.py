import pytest
import torch

from hdlm.model import Transformer
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.tokens import filter_logits, pick_tokens


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_and_uncached_ar_sampling_agree(tiny_model_config, temperature):
    net = Transformer(tiny_model_config).eval()
    prefix = torch.tensor([[0, 5, 6], [0, 7, 8]])

    def draw(use_cache):
        generator = torch.Generator().manual_seed(11)
        return sample_ar(net, prefix, 24, generator, 36, use_cache, temperature=temperature)

    cached, uncached = draw(True), draw(False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :3], prefix) and cached.shape == (2, 24)


def test_greedy_ar_sampling_follows_the_argmax(tiny_model_config):
    net = Transformer(tiny_model_config).eval()
    tokens = sample_ar(net, torch.tensor([[1]]), 10, None, 36, temperature=0.0)
    logits = net(tokens[:, :-1])[..., :36]  # id 36 is MASK, never drawn
    assert torch.equal(logits.argmax(-1), tokens[:, 1:])


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # nucleus: the smallest prefix whose mass reaches 0.7 is {0.5, 0.3}
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).tolist() == [
        [True, False, False, False]
    ]
    draws = pick_tokens(logits.expand(4000, -1), torch.Generator().manual_seed(0), top_k=2)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.03
