"""Llama-family interop: tiny random llama / mistral / qwen2 / qwen3 models written by transformers
import with transformers' logits (with and without the KV cache), export back to the same
architecture, and start A3 and diffusion adaptation exactly at the parent."""

import json
from dataclasses import dataclass

import pytest
import tokenizers
import torch

import hdlm
from hdlm.cli import main
from hdlm.config import load_config
from hdlm.data import synthetic_alphabet
from hdlm.model import KVCache, LanguageModel
from hdlm.model.hf import import_hf, resolve_architecture
from hdlm.readout import clean_log_probs
from hdlm.train import train
from hdlm.train_support import init_weights
from tests.test_cli import TINY

transformers = pytest.importorskip("transformers")
N_STATES = 12  # the synthetic corpus' symbols: the start of every test vocabulary


@dataclass
class Arch:
    """A tiny model of one architecture: its transformers config, its special tokens (after the
    N_STATES symbols), their roles, and the vocabulary padding config.json adds."""

    config: dict
    specials: list[str]
    roles: dict
    padding: int = 0


COMMON = {"hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
          "rms_norm_eps": 1e-5}  # fmt: skip
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>"]  # fmt: skip
LLAMA_ROLES = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
QWEN_ROLES = {"bos_token": None, "eos_token": "<|endoftext|>"}
ARCHS = {
    # GQA, Llama-3 rope scaling that changes every frequency band, untied, reserved MASK
    "llama": Arch({"model_type": "llama", **COMMON, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}, LLAMA_SPECIALS, LLAMA_ROLES),  # fmt: skip
    # multi-query attention, attention biases (q, k, v, output) but none in the MLP, tied
    "llama-mqa-bias": Arch({"model_type": "llama", **COMMON, "num_key_value_heads": 1,
                            "attention_bias": True, "mlp_bias": False,
                            "tie_word_embeddings": True}, LLAMA_SPECIALS, LLAMA_ROLES),  # fmt: skip
    # sliding window shorter than the positions; MASK appended, embedding rows grown
    "mistral": Arch({"model_type": "mistral", **COMMON, "sliding_window": 32},
                    ["<unk>", "<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}),
    # biases on q, k, v only; tied; config.json pads the vocabulary (MASK lands in the padding)
    "qwen2": Arch({"model_type": "qwen2", **COMMON, "tie_word_embeddings": True,
                   "rope_theta": 1000000.0}, ["<|endoftext|>", "<|im_start|>"], QWEN_ROLES, 6),
    # q/k norm, head_dim * heads != hidden_size
    "qwen3": Arch({"model_type": "qwen3", **COMMON, "head_dim": 16},
                  ["<|endoftext|>", "<|im_start|>"], QWEN_ROLES, 3),
}  # fmt: skip


def write_tokenizer(directory, arch: Arch) -> int:
    """tokenizer.json (symbols, then the special tokens) and tokenizer_config.json; the size."""
    vocab = {c: i for i, c in enumerate(synthetic_alphabet(N_STATES))}
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    hf.add_special_tokens(arch.specials)
    hf.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(arch.roles))
    return N_STATES + len(arch.specials)


def make_model(directory, name: str, **save):
    """A random transformers model of `ARCHS[name]` (every weight drawn, norms and biases too,
    so that each matters) saved to `directory`; (model, tokenizer size)."""
    arch = ARCHS[name]
    size = write_tokenizer(directory, arch)
    config = transformers.AutoConfig.for_model(**arch.config, vocab_size=size + arch.padding)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(directory, **save)
    return model, size


@pytest.fixture(scope="module", params=list(ARCHS))
def parent(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model, size = make_model(directory, request.param)
    return request.param, directory, model, size


def random_tokens(size, n=3, length=24):
    return torch.randint(0, size, (n, length))


def their_log_probs(model, tokens, vocab, mask_id):
    """transformers' next-token log-probabilities over our vocabulary, MASK excluded (what an
    hdlm AR model predicts: MASK is never a clean token; an appended one has no logit there)."""
    with torch.no_grad():
        logits = model(tokens).logits[..., :vocab]
    if mask_id < logits.shape[-1]:
        return clean_log_probs(logits, mask_id)
    return logits.log_softmax(-1)


def test_imported_logits_equal_transformers_with_and_without_the_cache(parent, tmp_path, capsys):
    name, directory, model, size = parent
    assert main(["import", str(directory), str(tmp_path / "imported")]) == 0
    log = capsys.readouterr().out
    lm = hdlm.load(tmp_path / "imported")
    tokens = random_tokens(size)
    columns = [i for i in range(min(lm.config.model.vocab_size, size)) if i != lm.tokenizer.mask_id]
    with torch.no_grad():
        expected = model(tokens).logits[..., columns]
        torch.testing.assert_close(lm.net(tokens)[..., columns], expected, rtol=1e-5, atol=1e-5)
        cache = KVCache.empty(lm.net.config, 3, "cpu", torch.float32)
        pieces = [lm.net(tokens[:, :7], cache=cache, commit=True)]  # a prompt, then single tokens
        pieces += [lm.net(tokens[:, i : i + 1], cache=cache, commit=True) for i in range(7, 24)]
    cached = torch.cat(pieces, dim=1)[..., columns]
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)
    on_the_fly = hdlm.load(directory)  # a transformers directory is imported when loaded
    assert torch.equal(on_the_fly.net(tokens), lm.net(tokens))
    mask = lm.tokenizer.roles["mask"]
    if name.startswith("llama"):
        assert mask == "<|reserved_special_token_0|>" and lm.config.model.vocab_size == size
        assert f"MASK reuses the vocabulary's reserved special token {mask}" in log
    elif name == "mistral":
        assert lm.tokenizer.mask_id == size and lm.config.model.max_len == 32  # the window
        assert f"embedding rows grown from {size} to {size + 1}" in log
    else:
        assert lm.tokenizer.mask_id == size and "padding rows" in log
    assert lm.tokenizer.bos_id == lm.tokenizer.hf.token_to_id(ARCHS[name].roles["bos_token"]
                                                              or "<|endoftext|>")  # fmt: skip


def test_export_loads_in_transformers_as_the_same_architecture(parent, tmp_path, capsys):
    name, directory, model, size = parent
    assert main(["import", str(directory), str(tmp_path / "imported")]) == 0
    assert main(["export", str(tmp_path / "imported"), str(tmp_path / "hf")]) == 0
    exported_class = type(model).__name__.replace("Mistral", "Llama")  # no window within context
    assert exported_class in capsys.readouterr().out
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(loaded).__name__ == exported_class
    lm = hdlm.load(tmp_path / "imported")
    tokens = random_tokens(size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, lm.net(tokens), rtol=1e-5, atol=1e-5)
    again = import_hf(tmp_path / "hf")  # and back: the very same weights
    for key, value in lm.net.state_dict().items():
        assert torch.equal(again.weights[key], value), key
    # the files as they are (AutoTokenizer would rebuild Qwen's own pre-tokenizer around them)
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    text = synthetic_alphabet(N_STATES)[::-1]
    assert tokenizer.encode(text, add_special_tokens=False) == lm.tokenizer.encode(text)
    assert tokenizer.mask_token_id == lm.tokenizer.mask_id


def run_settings(directory, out, family_config="configs/ar-tiny.yaml", *extra):
    """A one-step, lr-0 run from the Hugging Face model in `directory` (model.from_hf)."""
    settings = [*TINY[1::2], f"data.cache_dir={out / 'cache'}", f"out_dir={out}",
                f"data.synthetic.n_states={N_STATES}", f"train.init_from=hf:{directory}",
                f"data.tokenizer.path={directory}", f"model.from_hf={directory}",
                "model.max_len=32", "train.steps=1", "train.lr=0", "train.eval_every=1",
                *extra]  # fmt: skip
    return load_config(family_config, settings)


def parent_nll(model, lm, tokens):
    log_probs = their_log_probs(model, tokens, lm.config.model.vocab_size, lm.tokenizer.mask_id)
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None]).sum((1, 2))


def test_a3_adapted_from_each_parent_starts_as_that_parent(parent, tmp_path):
    """Before any adaptation step (lr 0) the A3 log-likelihood left to right in groups of one is
    the parent's own (MASK excluded from its softmax, as in every hdlm model)."""
    _, directory, model, size = parent
    lm = hdlm.load(train(run_settings(directory, tmp_path, "configs/a3-tiny.yaml"), progress=False))
    tokens = random_tokens(N_STATES, length=32)  # symbols: never MASK
    tokens[:, 0] = lm.tokenizer.bos_id
    torch.testing.assert_close(
        lm.nelbo(tokens), parent_nll(model, lm, tokens), rtol=1e-5, atol=1e-4
    )


def adapted(directory, family, *settings):
    """A `family` model of the architecture in `directory` holding its weights (init_from)."""
    tokenizer = import_hf(directory).tokenizer
    settings = [f"family={family}", f"model.from_hf={directory}", "model.max_len=32",
                "data.seq_len=32", *settings]  # fmt: skip
    config = resolve_architecture(load_config(None, settings))
    config.model.vocab_size = tokenizer.vocab_size
    lm = LanguageModel(config, tokenizer).eval()
    init_weights(lm, f"hf:{directory}")
    return lm


def test_quenched_causal_shifted_diffusion_from_a_parent_is_that_parent(parent):
    """Diffusion adaptation with the shifted read-out: quenched AR + absorbing + causal attention
    is the parent itself, so its NELBO is the parent's NLL before any step."""
    _, directory, model, _ = parent
    lm = adapted(directory, "hyperschedule", "diffusion.schedule=quenched_ar",
                 "diffusion.attention=causal", "diffusion.readout=shifted")  # fmt: skip
    tokens = random_tokens(N_STATES, length=32)
    tokens[:, 0] = lm.tokenizer.bos_id
    torch.testing.assert_close(
        lm.nelbo(tokens), parent_nll(model, lm, tokens), rtol=1e-5, atol=1e-4
    )


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    model, size = make_model(directory, "llama")
    return directory, model, size


FAMILIES = {"ar": "ar-tiny", "mdlm": "mdlm-tiny", "eps-hybrid": "eps-hybrid-tiny",
            "gamma-hybrid": "gamma-hybrid-tiny", "block-diffusion": "block-diffusion-tiny",
            "slide": "slide-tiny", "a3": "a3-tiny"}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_a_step_from_an_imported_llama(llama, tmp_path, family):
    directory, _, _ = llama
    extra = ["train.lr=1e-3", "train.warmup_steps=1"]
    if family == "block-diffusion":  # the two-copy layout holds 2 L - 1 positions
        extra += ["diffusion.schedule=block:8:4", "model.max_len=64"]
    config = run_settings(directory, tmp_path, f"configs/{FAMILIES[family]}.yaml", *extra)
    lm = hdlm.load(train(config, progress=False))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor([r["loss"] for r in records if "loss" in r])).all()
    assert lm.config.model.n_kv_heads == 2 and lm.config.model.mlp == "swiglu"
    assert lm.sample(1, 12, seed=0).shape == (1, 12)


def test_samplers_with_grouped_query_attention_give_the_same_tokens_with_and_without_cache(llama):
    directory, _, _ = llama
    cases = [("ar", []), ("block-diffusion", ["diffusion.schedule=block:4:2"]), ("a3", [])]
    for family, settings in cases:
        lm = adapted(directory, family, *settings)
        for options in ({}, {"order": "random", "group_size": 2}) if family == "a3" else ({},):
            cached = lm.sample(2, 20, seed=3, **options)
            assert torch.equal(cached, lm.sample(2, 20, seed=3, use_cache=False, **options))


def test_sharded_checkpoints_import_and_a_missing_or_partial_shard_is_refused(tmp_path, capsys):
    model, size = make_model(tmp_path, "llama", max_shard_size="20KB")
    capsys.readouterr()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    imported = import_hf(tmp_path)
    tokens = random_tokens(size)
    settings = [f"model.from_hf={tmp_path}", "model.max_len=64", "data.seq_len=64"]
    config = resolve_architecture(load_config(None, settings))
    config.model.vocab_size = imported.tokenizer.vocab_size
    lm = LanguageModel(config, imported.tokenizer)
    lm.net.load_state_dict(imported.weights)
    columns = [i for i in range(size) if i != lm.tokenizer.mask_id]
    with torch.no_grad():
        expected = model(tokens).logits[..., columns]
        torch.testing.assert_close(lm.net(tokens)[..., columns], expected, rtol=1e-5, atol=1e-5)
    last = tmp_path / shards[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 100])  # a cut download
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hdlm: error:") and "truncated" in err and len(err.splitlines()) == 1
    last.unlink()
    assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"shard {shards[-1]} listed in model.safetensors.index.json is missing" in err


def test_bad_directories_are_one_line_errors(tmp_path, capsys):
    make_model(tmp_path, "qwen2")
    capsys.readouterr()
    config = json.loads((tmp_path / "config.json").read_text())

    def fails(match):
        assert main(["import", str(tmp_path), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hdlm: error:") and len(err.splitlines()) == 1, err
        assert match in err, err

    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    fails("mlp.gate_proj.weight is [40, 32] but config.json implies [48, 32]")
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    fails("(model_type 'mamba'); hdlm imports model_type gpt2, llama, mistral, qwen2, qwen3")
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 10}))
    fails("tokenizer.json holds 14 ids but config.json has vocab_size=10")
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "rope_scaling": {"rope_type": "yarn"}})
    )
    fails("RoPE scaling 'yarn' is not supported")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    fails("has no model.safetensors")
    (tmp_path / "tokenizer.json").unlink()
    fails("has no tokenizer.json")


def test_model_from_hf_fills_the_architecture_and_keeps_the_run_s_context(llama):
    directory, _, _ = llama
    settings = [f"model.from_hf={directory}", "model.max_len=48", "data.seq_len=48"]
    assert load_config(None, settings).model.mlp == "gelu"  # filled when training starts
    m = resolve_architecture(load_config(None, settings)).model
    assert (m.n_kv_heads, m.d_ff, m.mlp, m.norm_eps, m.max_len) == (2, 40, "swiglu", 1e-5, 48)
    assert m.rope_scaling.original_max_position_embeddings == 16 and not m.tie_weights


@pytest.mark.parametrize(
    ("name", "arch"),
    [("a3-llama-3.2-1b", "llama"), ("a3-qwen3-0.6b", "qwen3"), ("mdlm-qwen3-0.6b", "qwen3")],
)
def test_the_pretrained_model_configs_train_from_a_local_directory(tmp_path, name, arch):
    """The GPU configs as a user runs them (paths given with --set), on a tiny parent and a tiny
    synthetic corpus for one step."""
    make_model(tmp_path, arch)
    paths = [f"model.from_hf={tmp_path}", f"data.tokenizer.path={tmp_path}",
             f"train.init_from=hf:{tmp_path}"]  # fmt: skip
    config = resolve_architecture(load_config(f"configs/{name}.yaml", paths))
    assert (config.model.max_len, config.data.seq_len, config.model.mlp) == (1024, 1024, "swiglu")
    small = ["data.corpus=synthetic", f"data.synthetic.n_states={N_STATES}", "data.seq_len=32",
             "data.synthetic.n_docs=100", "data.val_fraction=0.1", "train.batch_size=4",
             "train.grad_accum=1", "train.steps=1", "train.eval_batches=1",
             f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    lm = hdlm.load(train(load_config(f"configs/{name}.yaml", [*paths, *small]), progress=False))
    assert lm.config.family == name.split("-")[0]
