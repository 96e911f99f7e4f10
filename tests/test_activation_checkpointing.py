"""`train.activation_checkpointing`: the same loss and gradients with and without (dropout
included: its random state is replayed), and fewer activations kept for the backward pass."""

import pytest
import torch

from hdlm.config import load_config
from hdlm.errors import ConfigError
from tests.helpers import language_model, random_tokens

# one family per kind of pass: causal, two-copy layout, adaLN conditioning, A3's two streams
FAMILIES = {
    "ar": {},
    "block-diffusion": {},
    "gamma-hybrid (adaLN)": {"adaln": "blocks+final", "time_conditioning": True},
    "a3": {"mlp": "swiglu", "n_kv_heads": 1},
}


def loss_and_grads(lm, tokens, checkpointing: bool):
    lm.net.set_checkpointing(checkpointing)
    lm.net.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # dropout
    loss = lm.objective.loss(lm.net, tokens, torch.Generator().manual_seed(3))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in lm.net.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("kind", FAMILIES)
def test_checkpointing_gives_the_same_loss_and_gradients(kind):
    family = kind.split()[0]
    lm = language_model(family, model={"dropout": 0.1, **FAMILIES[kind]}).train()
    tokens = random_tokens(3, 25, lm.tokenizer.vocab_size - 1)
    loss, grads = loss_and_grads(lm, tokens, checkpointing=False)
    checkpointed_loss, checkpointed_grads = loss_and_grads(lm, tokens, checkpointing=True)
    assert checkpointed_loss == loss
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=0, msg=name)


def saved_bytes(lm, tokens) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training loss."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm.objective.loss(lm.net, tokens, torch.Generator().manual_seed(3))
    return sum(sizes)


def test_checkpointing_keeps_fewer_activations():
    lm = language_model("ar", model={"n_layers": 4}).train()
    tokens = random_tokens(8, 25, lm.tokenizer.vocab_size - 1)
    plain = saved_bytes(lm, tokens)
    lm.net.set_checkpointing(True)
    assert saved_bytes(lm, tokens) < 0.5 * plain


def test_no_recomputation_outside_training():
    """Evaluation and sampling (eval mode, or no gradients) never checkpoint."""
    lm = language_model("ar")
    lm.net.set_checkpointing(True)
    tokens = random_tokens(2, 25, lm.tokenizer.vocab_size - 1)
    with torch.no_grad():
        assert torch.isfinite(lm.nelbo(tokens)).all()


def test_the_new_keys_are_checked_with_one_line_errors():
    with pytest.raises(ConfigError, match="did you mean 'activation_checkpointing'"):
        load_config("configs/ar-tiny.yaml", ["train.activation_checkpoint=true"])
    with pytest.raises(ConfigError, match="model.attention must be one of auto, sdpa, flex"):
        load_config("configs/ar-tiny.yaml", ["model.attention=flash"])
    config = load_config("configs/ar-tiny.yaml", ["train.activation_checkpointing=true"])
    assert config.train.activation_checkpointing is True
