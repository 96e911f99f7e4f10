"""scripts/gpu-check.sh: its --dry-run runs every section at tiny sizes on CPU, so the script
that the first GPU session runs cannot rot."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from hdlm.config import ModelConfig, validate_model
from hdlm.model.a3 import A3Transformer

ROOT = Path(__file__).resolve().parents[1]


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up there)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_runs_every_section(tmp_path):
    done = subprocess.run([ROOT / "scripts/gpu-check.sh", "--dry-run", "--out", tmp_path],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "dry-run-cpu.md").read_text()
    for title in gpu_check_module().SECTIONS:
        assert f"## {title}\n" in report
    assert "not run" not in report
    assert "| a3 (flex, forward only) |" in report and "| ar (activation checkpointing) |" in report


def test_the_gpu_run_builds_a_1b_llama_shaped_a3_backbone():
    module = gpu_check_module()
    config = ModelConfig(**module.llama_1b(), max_len=1024)
    validate_model(config)
    with torch.device("meta"):
        net = A3Transformer(dataclasses.replace(config))
    assert 1.2e9 < net.num_params() < 1.3e9
    assert module.bf16_peak(torch.device("cpu")) is None
