import pytest

from hdlm.config import RunConfig, load_config
from hdlm.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    config = load_config(write(tmp_path, "model:\n  n_layers: 3\n"), ["train.lr=3e-4", "name=x"])
    assert isinstance(config, RunConfig)
    assert config.model.n_layers == 3 and config.train.lr == 3e-4 and config.name == "x"
    assert str(config.out_path) == "runs/x"


def test_unknown_key_names_the_key_and_suggests_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.n_layer'.*'n_layers'"):
        load_config(write(tmp_path, "model:\n  n_layer: 3\n"))
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        load_config(None, ["train.stepz=3"])


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="model.n_layers must be int, got str"):
        load_config(write(tmp_path, "model:\n  n_layers: four\n"))
    with pytest.raises(ConfigError, match="train.batch_size must be int, got bool"):
        load_config(None, ["train.batch_size=true"])
    with pytest.raises(ConfigError, match="model.norm must be one of rmsnorm, layernorm"):
        load_config(None, ["model.norm=batchnorm"])


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="data.seq_len=512 is longer than .*model.max_len=256"):
        load_config(None, ["data.seq_len=512"])
    with pytest.raises(ConfigError, match="unknown family 'gpt'"):
        load_config(None, ["family=gpt"])
    with pytest.raises(ConfigError, match="heads"):
        load_config(None, ["model.d_model=100", "model.n_heads=3"])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [\n"))
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["train.steps"])
