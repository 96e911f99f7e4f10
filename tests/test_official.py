"""Importing the released checkpoints (HDLM ε/γ, MDLM, SEDD, BD3-LM): hdlm's network must
compute what the official code computed on the fixtures in tests/fixtures/official/ (tiny models
with random weights in each release's layout; reference outputs of the official code, CPU fp32;
made by tests/fixtures/official/make_fixtures.py, see the README there and each meta.json).
Every reference tensor is compared with hdlm's counterpart here."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hdlm
from hdlm import masks
from hdlm.cli import main
from hdlm.errors import CheckpointError
from hdlm.model import official
from hdlm.processes import Absorbing
from hdlm.processes.gamma_hybrid import score_entropy
from hdlm.readout import clean_log_probs

FIXTURES = Path(__file__).parent / "fixtures" / "official"
FORMATS = {"hdlm_epsilon": "eps-hybrid", "hdlm_gamma": "gamma-hybrid", "mdlm": "mdlm",
           "sedd": "gamma-hybrid", "bd3lm": "block-diffusion"}  # fmt: skip
TOLERANCE = 1e-5  # measured max |diff| 0.7e-6 .. 1.4e-6; a LayerNorm eps of 1e-6 moves 1.7e-5


def fixture(name: str):
    return hdlm.load(FIXTURES / name), load_file(FIXTURES / name / "reference.safetensors")


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", FORMATS)
def test_imported_logits_equal_the_official_forward(name):
    lm, ref = fixture(name)
    assert lm.config.family == FORMATS[name]
    assert lm.tokenizer.mask_id == lm.config.model.vocab_size - 1 == 50
    if name == "bd3lm":  # sampling forward: clean prefix of whole blocks + the noisy block
        for key in ("sample_full", "sample_prefix"):
            assert max_diff(lm.logits(ref[f"x_{key}"]), ref[f"logits_{key}"]) < TOLERANCE
        return
    out = lm.logits(ref["xt"], ref.get("t"))  # t: per position (γ), per sequence (SEDD, MDLM)
    expected = ref["network_logits"] if "network_logits" in ref else ref["logits"]
    assert max_diff(out, expected) < TOLERANCE


def test_without_the_rotary_permutation_the_logits_differ(monkeypatch):
    """The check above can fail: importing q/k rows unpermuted (interleaved rotary) is far off."""
    monkeypatch.setattr(official, "half_split_to_pairs", lambda d: torch.arange(d))
    lm, ref = fixture("hdlm_epsilon")
    assert max_diff(lm.logits(ref["xt"]), ref["logits"]) > 1e-2


def test_epsilon_block_causal_mask_and_log_probs():
    lm, ref = fixture("hdlm_epsilon")
    assert max_diff(lm.logits(ref["xt"]).log_softmax(-1), ref["log_probs"]) < TOLERANCE
    may_attend = ~ref["attn_mask_block_causal"].bool()[:, None]  # official: True = blocked
    out = lm.net(ref["xt"], attn_mask=may_attend, causal=False)
    assert max_diff(out, ref["logits_block_causal"]) < TOLERANCE


@pytest.mark.parametrize("name", ["hdlm_gamma", "sedd"])
def test_log_score_read_out(name):
    """σ(t) inside the network is the official σ; the official score read-out reproduced."""
    lm, ref = fixture(name)
    sigma = lm.net.cond_embed.sigma(ref["t"])
    assert max_diff(sigma, ref["sigma"]) < 1e-6
    scored = official.official_log_score(
        lm.logits(ref["xt"], ref["t"]), ref["sigma"], ref["xt"], scatter=name == "sedd"
    )
    assert max_diff(scored, ref["log_score"]) < TOLERANCE


def test_sedd_scores_are_hdlm_gamma_zero_scores_up_to_normalisation():
    """At MASK inputs SEDD's log-score is hdlm's γ = 0 log-score plus a per-row constant (hdlm
    normalises the network's distribution over data tokens); elsewhere the two differ by design."""
    lm, ref = fixture("sedd")
    process = lm.objective.process
    t = ref["t"][:, None].expand(ref["xt"].shape)
    ours = process.log_score(clean_log_probs(lm.logits(ref["xt"], t), 50), ref["xt"], t)
    masked = ref["xt"] == 50
    gap = (ref["log_score"] - ours)[masked][:, :50]
    assert masked.sum() > 5
    assert max_diff(gap, gap.mean(-1, keepdim=True)) < TOLERANCE


def test_mdlm_subs_and_loss_terms():
    """SUBS at masked rows is hdlm's clean-token posterior; MDLM's continuous-time term
    -log p(x0) σ'/(e^σ - 1) equals hdlm's absorbing rate_loss (dt / t) -log p(x0)."""
    lm, ref = fixture("mdlm")
    log_probs = clean_log_probs(lm.logits(ref["xt"]), 50)
    masked = ref["xt"] == 50
    assert max_diff(log_probs[masked][:, :50], ref["subs_log_probs"][masked][:, :50]) < TOLERANCE
    t = ref["t"][:, None].expand(ref["xt"].shape)
    terms = Absorbing(50).rate_loss(log_probs, ref["x0"], ref["xt"], t, torch.ones_like(t))
    assert max_diff(terms, ref["loss_terms"]) < 1e-4 * ref["loss_terms"].abs().max()


def test_mdlm_sigma_and_loss_weight():
    """MDLM's σ(t) = -log1p(-(1 - 1e-3) t) is what hdlm's time-conditioned embedder is fed, and
    MDLM's loss weight σ'(t) / (e^σ - 1) is exactly hdlm's absorbing weight 1 / t."""
    lm, ref = fixture("mdlm")
    weight = ref["dsigma"] / torch.expm1(ref["sigma"])
    assert max_diff(weight * ref["t"], torch.ones(2)) < 1e-5
    assert max_diff(lm.net.cond_embed.sigma(ref["t"]), ref["sigma"]) < 1e-6


def gamma_zero(process):
    """The same σ schedule without the uniform part: SEDD's absorbing chain."""
    return dataclasses.replace(process, gamma=0.0)


def test_sedd_score_entropy_is_hdlm_reference_score_entropy():
    """SEDD's `Absorbing.score_entropy` of its own log-scores is hdlm's definition-level
    `score_entropy` (γ = 0, SEDD's σ schedule) without the factor σ'(t), at every position
    (0 at visible ones in both)."""
    lm, ref = fixture("sedd")
    process = lm.objective.process
    t = ref["t"][:, None].expand(ref["xt"].shape)
    ours = score_entropy(process, ref["log_score"], ref["x0"], ref["xt"], t, 1.0)
    ours = ours / process.schedule.rate(t.double())
    assert max_diff(process.schedule.rate(ref["t"].double()) / ref["dsigma"], 1.0) < 1e-5
    assert (ref["score_entropy"][ref["xt"] == 50] > 0.1).all()
    assert max_diff(ours.float(), ref["score_entropy"]) < 1e-4


def test_gamma_score_entropy_at_masked_positions_is_the_absorbing_one():
    """HDLM-γ's loss at MASK inputs is (1 - γ) times the absorbing score entropy at the full σ
    (hdlm's `score_entropy` with γ = 0); at visible inputs it is γ times a uniform-chain score
    entropy at the full σ, which hdlm does not use (design §6: not a bound; hdlm's γ NELBO
    is `GammaHybrid.rate_loss`), so only the masked positions are compared."""
    lm, ref = fixture("hdlm_gamma")
    process = lm.objective.process
    assert process.gamma == 0.05
    assert max_diff(process.schedule.rate(ref["t"].double()) / ref["dsigma"], 1.0) < 1e-5
    absorbing = gamma_zero(process)
    ours = score_entropy(absorbing, ref["log_score"], ref["x0"], ref["xt"], ref["t"], 1.0)
    ours = (1 - process.gamma) * ours / process.schedule.rate(ref["t"].double())
    masked = ref["xt"] == 50
    assert masked.sum() > 10
    assert max_diff(ours.float()[masked], ref["score_entropy"][masked]) < 1e-4


def test_sedd_analytic_step_reveals_from_hdlm_posterior():
    """SEDD's analytic (Tweedie) predictor at a MASK input, over the data ids, is proportional to
    exp(hdlm's γ = 0 log-score): the distribution hdlm's `tweedie_step` reveals a token from."""
    lm, ref = fixture("sedd")
    process = lm.objective.process
    t = ref["t"][:, None].expand(ref["xt"].shape)
    ours = process.log_score(clean_log_probs(lm.logits(ref["xt"], t), 50), ref["xt"], t)
    masked = ref["xt"] == 50
    theirs = ref["analytic_probs"][masked][:, :50]
    assert (theirs > 0).all()
    assert max_diff(theirs / theirs.sum(-1, keepdim=True), ours[masked][:, :50].softmax(-1)) < 1e-5


@pytest.mark.parametrize("key", ["train", "sample_prefix"])
def test_bd3lm_subs_is_hdlm_clean_posterior(key):
    """BD3-LM's SUBS log-probabilities: at MASK inputs hdlm's clean-token posterior of the same
    forward; at visible inputs the carry-over (0 at the input token, -1e6 elsewhere)."""
    lm, ref = fixture("bd3lm")
    x = ref["xt"] if key == "train" else ref[f"x_{key}"]
    subs = ref[f"subs_log_probs_{key}"]
    masked = x == 50
    assert masked.any() and (~masked).any()
    ours = clean_log_probs(ref[f"logits_{key}"], 50)
    assert max_diff(ours[masked][:, :50], subs[masked][:, :50]) < TOLERANCE
    visible = subs[~masked]
    assert torch.equal(visible.argmax(-1), x[~masked]) and (visible.max(-1).values == 0).all()
    assert (visible.topk(2).values[:, 1] == -1e6).all()


def test_bd3lm_training_layout_is_hdlm_two_copy_layout():
    lm, ref = fixture("bd3lm")
    mask = masks.two_copy_block_diffusion(32, 4)
    assert torch.equal(mask, ref["mask_train"].bool())
    positions = masks.positions_for_two_copy(32)
    out = lm.net(ref["x_train"], attn_mask=mask, positions=positions, causal=False)[:, :32]
    assert max_diff(out, ref["logits_train"]) < TOLERANCE


def test_bd3lm_nelbo_layout_is_the_official_training_layout():
    """hdlm's two-copy layout of the imported model (schedule block:4:4:1, BOS inside block 0,
    one BOS per copy) is BD3-LM's [x_t ; x0] layout: same outputs for every noised position."""
    lm, ref = fixture("bd3lm")
    assert lm.config.diffusion.schedule == "block:4:4:1"
    x0, xt = ref["x0"], ref["xt"].clone()
    xt[:, 0] = x0[:, 0]  # the official layout never noises BOS either
    t, step = torch.full((2, 31), 0.5), torch.ones(2, 31, dtype=torch.long)
    ours = lm.objective.layout.logits(lm.net, x0, xt[:, 1:], t, step)
    mask, positions = masks.two_copy_block_diffusion(32, 4), masks.positions_for_two_copy(32)
    theirs = lm.net(torch.cat((xt, x0), 1), attn_mask=mask, positions=positions, causal=False)
    assert max_diff(ours, theirs[:, 1:32]) < 1e-6


@pytest.mark.parametrize("name", ["mdlm", "bd3lm"])
def test_time_conditioned_variant(tmp_path, name):
    """The same weights with time_conditioning=true: σ(t) reaches the adaLN embedder."""
    directory = tmp_path / name
    shutil.copytree(FIXTURES / name, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"time_conditioning": True}))
    lm, ref = hdlm.load(directory), load_file(directory / "reference.safetensors")
    if name == "mdlm":
        assert max_diff(lm.logits(ref["xt"], ref["t"]), ref["logits_time_conditioned"]) < TOLERANCE
        return
    t = ref["t"][:, None].expand(2, 64)
    mask, positions = masks.two_copy_block_diffusion(32, 4), masks.positions_for_two_copy(32)
    out = lm.net(ref["x_train"], attn_mask=mask, positions=positions, causal=False, noise_level=t)
    assert max_diff(lm.net.cond_embed.sigma(ref["t"]), ref["sigma"]) < 1e-6  # -log(1 - t)
    assert max_diff(out[:, :32], ref["logits_train_time_conditioned"]) < TOLERANCE


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_corpus(path: Path) -> Path:
    """Documents over the placeholder tokenizer's characters ('!' + i, i < 49)."""
    g = torch.Generator().manual_seed(0)
    lines = ["".join(chr(0x21 + i) for i in torch.randint(49, (80,), generator=g).tolist())
             for _ in range(40)]  # fmt: skip
    path.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    return path


@pytest.mark.parametrize(
    "name, samplers",
    [("hdlm_epsilon", ["ancestral", "acs"]), ("hdlm_gamma", ["tweedie"]),
     ("mdlm", ["ancestral"]), ("sedd", ["tweedie", "euler"]), ("bd3lm", ["acs"])],
)  # fmt: skip
def test_import_then_eval_and_sample_from_the_cli(tmp_path, capsys, name, samplers):
    out = tmp_path / "imported"
    code, text, err = run(
        ["import", FIXTURES / name, out, "--set", "diffusion.eval_steps=4"], capsys
    )
    assert code == 0, err
    imported = hdlm.load(out).config
    assert imported.diffusion.eval_steps == 4
    assert imported.model == hdlm.load(FIXTURES / name).config.model
    corpus = tiny_corpus(tmp_path / "tiny.jsonl")
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    args = ["eval", out, "--data", corpus, "--max-blocks", 4, "--batch-size", 4, "--no-progress",
            "--set", "data.seq_len=32", "--set", cache]  # fmt: skip
    code, text, err = run(args, capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["family"] == FORMATS[name]
    assert 0 < result["nelbo_per_token"] < 20
    assert result["zero_shot"] and result["windows"] == 4  # another corpus: zero-shot
    if name == "mdlm":  # without --max-blocks the whole corpus
        everything = ["eval", out, "--data", corpus, "--no-progress", "--set", "data.seq_len=32"]
        code, text, err = run([*everything, "--set", cache], capsys)
        assert code == 0, err
        assert json.loads(text)["windows"] > 4 * result["windows"]
    for sampler in samplers:
        steps = [] if name == "bd3lm" else ["--steps", 4]  # its own block schedule sets them
        args = ["sample", out, "--sampler", sampler, *steps, "--length", 12, "-n", 2]
        code, text, err = run(args, capsys)
        assert code == 0, err
        assert text.count("=== sample") == 2


def error_of(args, capsys) -> str:
    code, _, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hdlm: error: ")
    return lines[0]


def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "sedd", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "cannot be read" in error_of(["import", broken, tmp_path / "a"], capsys)

    unknown = tmp_path / "unknown"
    shutil.copytree(FIXTURES / "mdlm", unknown)
    (unknown / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    assert "unknown checkpoint format" in error_of(["import", unknown, tmp_path / "b"], capsys)
    assert "unknown checkpoint format" in error_of(["sample", unknown], capsys)

    missing = tmp_path / "missing"
    shutil.copytree(FIXTURES / "mdlm", missing)
    weights = load_file(missing / "model.safetensors")
    del weights["backbone.blocks.1.attn_qkv.weight"]
    save_file(weights, missing / "model.safetensors")
    assert "lack backbone.blocks.1.attn_qkv" in error_of(
        ["import", missing, tmp_path / "c"], capsys
    )

    resized = tmp_path / "resized"
    shutil.copytree(FIXTURES / "hdlm_gamma", resized)
    config = json.loads((resized / "config.json").read_text())
    config["tokenizer"]["tokens"] = 60
    (resized / "config.json").write_text(json.dumps(config))
    assert "does not describe these weights" in error_of(["eval", resized], capsys)
    line = error_of(
        ["import", FIXTURES / "mdlm", tmp_path / "d", "--set", "model.n_layers=1"], capsys
    )
    assert "come from the checkpoint" in line
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    directory = tmp_path / "sedd_bin"
    shutil.copytree(FIXTURES / "sedd", directory)
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    lm, ref = hdlm.load(directory), load_file(directory / "reference.safetensors")
    assert max_diff(lm.logits(ref["xt"], ref["t"]), ref["network_logits"]) < TOLERANCE


def hub_cache(home: Path, repo_id: str, source: Path) -> None:
    """Place `source` where huggingface_hub's cache keeps a snapshot of `repo_id`."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hf_names_load_from_an_offline_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    hub_cache(tmp_path, "kuleshov-group/mdlm-tiny", FIXTURES / "mdlm")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lm, ref = (
        hdlm.load("hf:kuleshov-group/mdlm-tiny"),
        load_file(FIXTURES / "mdlm" / "reference.safetensors"),
    )
    assert max_diff(lm.logits(ref["xt"]), ref["logits"]) < TOLERANCE
    code, _, err = run(["import", "hf:kuleshov-group/mdlm-tiny", tmp_path / "out"], capsys)
    assert code == 0, err
    line = error_of(["sample", "hf:kuleshov-group/not-cached"], capsys)
    assert "HF_HUB_OFFLINE=1" in line and str(tmp_path / "hub") in line
    assert "not a hub name" in error_of(["sample", "hf:no-owner"], capsys)


def test_hf_home_and_offline_environment_from_the_command_line(tmp_path):
    """The environment variables themselves (read when huggingface_hub is imported)."""
    hub_cache(tmp_path, "hdlm-group/hdlm-tiny-gamma", FIXTURES / "hdlm_gamma")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hdlm.cli", "sample", "hf:hdlm-group/hdlm-tiny-gamma",
               "--length", "8", "--steps", "2", "-n", "1"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "=== sample 0 ===" in done.stdout


def test_placeholder_tokenizer_round_trips():
    tokenizer = official.placeholder_tokenizer(50)
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.mask_id) == (51, 49, 50)
    assert tokenizer.decode(tokenizer.encode("!#Q")) == "!#Q"


def test_import_is_refused_for_non_absorbing_sedd(tmp_path):
    directory = tmp_path / "uniform"
    shutil.copytree(FIXTURES / "sedd", directory)
    config = json.loads((directory / "config.json").read_text())
    config["graph"]["type"] = "uniform"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="absorbing"):
        official.import_official(directory)


def test_gpt2_sized_checkpoints_get_gpt2_bpe_with_mask_last(tmp_path):
    """50257 text tokens: GPT-2's BPE (offline), MASK = 50257, BOS = <|endoftext|> = 50256."""
    directory = tmp_path / "sedd-gpt2"
    shutil.copytree(FIXTURES / "sedd", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"tokens": 50257}))
    weights = load_file(directory / "model.safetensors")
    for name in ("vocab_embed.embedding", "output_layer.linear.weight", "output_layer.linear.bias"):
        rows = weights[name]
        weights[name] = torch.cat((rows, rows[:1].expand(50258 - len(rows), *rows.shape[1:])))
    save_file(weights, directory / "model.safetensors")
    lm = hdlm.load(directory)
    assert (lm.tokenizer.mask_id, lm.tokenizer.bos_id, lm.config.model.vocab_size) == (
        50257, 50256, 50258)  # fmt: skip
    assert lm.tokenizer.encode("Hello world") == [15496, 995]  # GPT-2's ids
