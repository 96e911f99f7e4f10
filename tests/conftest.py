import pytest
import torch

from hdlm.config import ModelConfig


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    return ModelConfig(vocab_size=37, max_len=32, n_layers=2, n_heads=2, d_model=32)


# Tiny test models are dominated by thread start-up: one thread runs the suite several times faster
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
