"""DiffuLLaMA's attention-mask annealing (`diffusion.mask_anneal_steps`): training starts with the
causal mask an AR parent was trained with and opens the future entries at random until, after N
steps, attention is full."""

import json

import pytest
import torch

from hdlm.config import load_config
from hdlm.errors import ConfigError
from hdlm.train import train
from tests.helpers import MASK, V, random_tokens, tiny_objective
from tests.test_cli import TINY


def training_loss(objective, net, tokens):
    net.train()  # the annealed mask applies to training only
    return objective.loss(net, tokens, torch.Generator().manual_seed(1))


def test_annealing_starts_causal_and_ends_full():
    net, annealed = tiny_objective("mdlm", V, MASK, 17, readout="shifted", mask_anneal_steps=10)
    _, causal = tiny_objective("mdlm", V, MASK, 17, readout="shifted", attention="causal")
    _, full = tiny_objective("mdlm", V, MASK, 17, readout="shifted")
    tokens = random_tokens()
    assert annealed.at_step(0) == "attention annealing causal -> full"
    assert torch.equal(training_loss(annealed, net, tokens), training_loss(causal, net, tokens))
    assert annealed.at_step(10) == "full attention"
    assert torch.equal(training_loss(annealed, net, tokens), training_loss(full, net, tokens))
    annealed.at_step(5)
    net.eval()  # evaluation always uses the final, full attention
    assert torch.equal(annealed.nelbo(net, tokens), full.nelbo(net, tokens))
    masks = torch.stack([annealed.layout.annealed_mask(64, "cpu") for _ in range(20)])
    causal_part = torch.ones(64, 64, dtype=torch.bool).tril()
    assert masks[:, causal_part].all()
    future = masks[:, ~causal_part].float().mean()
    assert 0.45 < future < 0.55  # half of the future entries open halfway through


def test_the_trainer_logs_the_annealing_stage_and_a_bad_setting_is_refused(tmp_path):
    settings = [*TINY[1::2], f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path}",
                "train.steps=3", "train.log_every=1", "diffusion.mask_anneal_steps=2",
                "diffusion.readout=shifted"]  # fmt: skip
    train(load_config("configs/mdlm-tiny.yaml", settings), progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in records if "stage" in r]
    assert stages == ["attention annealing causal -> full"] * 2 + ["full attention"]
    with pytest.raises(ConfigError, match="needs diffusion.attention=full"):
        load_config("configs/block-diffusion-tiny.yaml", [*settings[:-1]])
