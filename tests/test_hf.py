"""Hugging Face interop: a transformers GPT-2 imports with the same logits, trains from there,
and exports back to a GPT2LMHeadModel (or, for other models, to a directory hdlm.load reads
bit for bit)."""

import json

import pytest
import tokenizers
import torch

import hdlm
from hdlm.cli import main
from hdlm.config import RunConfig, load_config
from hdlm.data import synthetic_alphabet
from hdlm.data.tokenizer import EOS, Tokenizer
from hdlm.model import LanguageModel
from hdlm.model.hf import import_hf
from hdlm.train import train
from tests.test_cli import TINY

transformers = pytest.importorskip("transformers")
N_STATES = 12  # the synthetic corpus' symbols: GPT-2's vocabulary here is them + EOS


def gpt2_tokenizer(directory):
    """A tokenizer.json as a GPT-2 directory holds it: no MASK, EOS last."""
    vocab = {c: i for i, c in enumerate(synthetic_alphabet(N_STATES))} | {EOS: N_STATES}
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    hf.add_special_tokens([EOS])
    hf.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def gpt2(request, tmp_path_factory):
    """A random GPT2LMHeadModel (every weight and bias drawn, so all of them matter) saved
    with save_pretrained, as model.safetensors or pytorch_model.bin."""
    directory = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=N_STATES + 1, n_positions=64, n_embd=32,
                                     n_layer=2, n_head=4, bos_token_id=N_STATES,
                                     eos_token_id=N_STATES)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(directory, safe_serialization=request.param == "safetensors")
    gpt2_tokenizer(directory)
    return directory, model


def test_imported_gpt2_has_the_same_logits(gpt2, tmp_path, capsys):
    directory, model = gpt2
    tokens = torch.randint(0, N_STATES + 1, (3, 40))
    with torch.no_grad():
        expected = model(tokens).logits
    imported = import_hf(directory)
    assert imported.tokenizer.mask_id == N_STATES + 1 == imported.config.vocab_size - 1  # appended
    assert main(["import", str(directory), str(tmp_path / "imported")]) == 0
    lm = hdlm.load(tmp_path / "imported")
    with torch.no_grad():
        logits = lm.net(tokens)
    torch.testing.assert_close(logits[..., : N_STATES + 1], expected, rtol=1e-4, atol=1e-4)
    mask_row = lm.net.embed.weight[-1]  # the new MASK row: the mean of GPT-2's rows
    torch.testing.assert_close(mask_row, model.transformer.wte.weight.mean(0))
    # and a KV cache with learned positions continues exactly
    assert torch.equal(lm.sample(2, 20, seed=1), lm.sample(2, 20, seed=1, use_cache=False))


def from_gpt2(directory, out):
    """Overrides of a one-step, lr-0 run that starts from the GPT-2 in `directory`."""
    return [*TINY[1::2], f"data.cache_dir={out / 'cache'}", f"out_dir={out}",
            f"data.synthetic.n_states={N_STATES}", f"train.init_from=hf:{directory}",
            f"data.tokenizer.path={directory}", "model.position=learned", "model.norm=layernorm",
            "model.bias=true", "model.d_model=32", "model.n_heads=4", "model.max_len=32",
            "train.steps=1", "train.lr=0"]  # fmt: skip


def test_training_starts_from_a_local_gpt2(gpt2, tmp_path):
    directory, model = gpt2
    settings = from_gpt2(directory, tmp_path / "run")
    run = train(load_config("configs/ar-tiny.yaml", settings), progress=False)
    net = hdlm.load(run).net  # lr 0: still GPT-2, with 32 of its 64 positions
    tokens = torch.randint(0, N_STATES + 1, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(
            net(tokens)[..., :-1], model(tokens).logits, rtol=1e-4, atol=1e-4
        )
    other = [*settings, "model.n_heads=2", f"out_dir={tmp_path / 'b'}"]
    mismatch = load_config("configs/ar-tiny.yaml", other)
    with pytest.raises(hdlm.errors.CheckpointError, match="does not fit this run's model"):
        train(mismatch, progress=False)


def test_a3_adapted_from_a_local_gpt2_starts_as_that_gpt2(gpt2, tmp_path):
    """Issue 7's exactness with a Hugging Face parent: before any adaptation step (lr 0), the A3
    log-likelihood left to right in groups of one is GPT-2's own."""
    directory, model = gpt2
    settings = from_gpt2(directory, tmp_path / "a3")
    lm = hdlm.load(train(load_config("configs/a3-tiny.yaml", settings), progress=False))
    tokens = torch.randint(0, N_STATES + 1, (3, 32))
    tokens[:, 0] = N_STATES  # BOS (= EOS)
    with torch.no_grad():
        log_probs = model(tokens).logits.log_softmax(-1)
    expected = -log_probs[:, :-1].gather(-1, tokens[:, 1:, None]).sum((1, 2))
    torch.testing.assert_close(lm.nelbo(tokens), expected, rtol=1e-4, atol=1e-4)


def tiny_lm(**model):
    config = RunConfig()
    config.model.__dict__.update(vocab_size=N_STATES + 3, max_len=32, n_layers=2, n_heads=2,
                                 d_model=32, **model)  # fmt: skip
    vocab = {c: i for i, c in enumerate(synthetic_alphabet(N_STATES + 1))}
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    torch.manual_seed(0)
    lm = LanguageModel(config, Tokenizer(hf))
    with torch.no_grad():
        for p in lm.net.parameters():
            p.normal_(0, 0.3)
    return lm


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_shaped_export_loads_in_transformers_with_the_same_logits(tmp_path, capsys, tie):
    lm = tiny_lm(position="learned", norm="layernorm", bias=True, tie_weights=tie)
    lm.save(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, N_STATES + 3, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, lm.net(tokens), rtol=1e-4, atol=1e-4)
    text = synthetic_alphabet(N_STATES)[::-1] + EOS
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.encode(text) == lm.tokenizer.encode(text)
    assert tokenizer.mask_token_id == lm.tokenizer.mask_id


def test_rope_export_is_an_hdlm_directory_that_round_trips_bit_exactly(tmp_path, capsys):
    lm = tiny_lm()
    lm.save(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    assert "not a stock transformers architecture" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "hdlm"
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "model.safetensors"} <= {p.name for p in (tmp_path / "out").iterdir()}  # fmt: skip
    again = hdlm.load(tmp_path / "out")
    for (name, p), q in zip(
        lm.net.state_dict().items(), again.net.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_import_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "hdlm imports model_type gpt2, llama" in capsys.readouterr().err
