"""Sampling and evaluation in the weights' dtype (`LanguageModel.cast`, `--precision bf16`):
every family's likelihood and logits agree with the float32 reference within bf16's tolerance,
and every registered sampler draws from a cast model."""

import pytest
import torch

import hdlm
from hdlm.cli import main
from hdlm.sampling.registry import samplers_of
from tests.helpers import language_model, random_tokens

FAMILIES = ["ar", "mdlm", "eps-hybrid", "gamma-hybrid", "block-diffusion", "slide", "a3"]
CONDITIONED = {  # noise-level conditioning: additive embedding, and DDiT's adaLN (HDLM-γ input)
    "block-diffusion (time embedding)": ("block-diffusion", {"time_conditioning": True}),
    "gamma-hybrid (adaLN, mixed input)": (
        "gamma-hybrid",
        {"time_conditioning": True, "adaln": "blocks+final", "input_mix_gamma": 0.05},
    ),
}
BF16_RELATIVE = 2e-2  # bf16 keeps 8 bits of mantissa: ~0.4% per rounding


def reference_and_cast(family, model=None):
    """(float32 model, the same weights cast to bf16)."""
    reference = language_model(family, model=model)
    cast = language_model(family, model=model)
    cast.net.load_state_dict(reference.net.state_dict())
    return reference, cast.cast("bf16")


@pytest.mark.parametrize("family", FAMILIES)
def test_nelbo_in_bf16_weights_equals_fp32_within_tolerance(family):
    reference, cast = reference_and_cast(family)
    assert cast.net.embed.weight.dtype == torch.bfloat16
    tokens = random_tokens(2, 25, reference.tokenizer.vocab_size - 1)
    torch.manual_seed(0)
    expected = reference.nelbo(tokens)
    torch.manual_seed(0)
    torch.testing.assert_close(cast.nelbo(tokens), expected, rtol=BF16_RELATIVE, atol=0)


@pytest.mark.parametrize("kind", CONDITIONED)
def test_conditioned_logits_in_bf16_weights_equal_fp32_within_tolerance(kind):
    family, model = CONDITIONED[kind]
    reference, cast = reference_and_cast(family, model)
    tokens = random_tokens(2, 25, reference.tokenizer.vocab_size - 1)
    t = torch.rand(2, 25)
    expected = reference.logits(tokens, t)
    torch.testing.assert_close(cast.logits(tokens, t).float(), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_draws_from_bf16_weights(family):
    _, cast = reference_and_cast(family)
    for sampler in samplers_of(cast.family):
        tokens = cast.sample(2, 20, sampler=sampler, seed=1)
        assert tokens.shape == (2, 20), sampler
        assert (tokens[:, 1:] < cast.tokenizer.mask_id).all(), sampler


def test_load_and_the_command_line_cast_once(tmp_path, capsys):
    path = language_model("block-diffusion").save(tmp_path / "model")
    assert hdlm.load(path, precision="bf16").net.head.weight.dtype == torch.bfloat16
    assert hdlm.load(path).net.head.weight.dtype == torch.float32  # the reference
    assert main(["sample", str(path), "-n", "1", "--length", "12", "--precision", "bf16"]) == 0
    assert "=== sample 0 ===" in capsys.readouterr().out
