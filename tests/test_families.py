"""The families table is the one place that knows the families; the CLI checks every option at
the edge with it (one line, exit code 2)."""

import pytest
from helpers import language_model

from hdlm.cli import main
from hdlm.config import RunConfig, complete
from hdlm.errors import ConfigError, HdlmError
from hdlm.families import FAMILIES, family
from hdlm.model import LanguageModel, Transformer
from hdlm.model.a3 import A3Transformer
from hdlm.objectives import OBJECTIVES
from hdlm.sampling import settings
from hdlm.sampling.registry import SAMPLERS, check_sampler, samplers_of


@pytest.mark.parametrize("name", FAMILIES)
def test_every_row_builds_its_objective_network_and_samplers(name):
    row = family(name)
    assert row.objective in OBJECTIVES and SAMPLERS[row.default_sampler].walks(row)
    assert set(samplers_of(row)) <= set(SAMPLERS)
    lm = language_model(name, **({"schedule": "slide:4:3"} if name == "hyperschedule" else {}))
    assert isinstance(lm, LanguageModel) and lm.family is row
    assert isinstance(lm.objective, OBJECTIVES[row.objective])
    assert type(lm.net) is (A3Transformer if row.is_a3 else Transformer)


def test_presets_fill_only_unset_keys_and_ar_is_its_hyperschedule_twin():
    config = complete(RunConfig(family="mdlm"))
    assert (config.diffusion.schedule, config.diffusion.time) == ("flat:1000", "count")
    config = RunConfig(family="mdlm")
    config.diffusion.schedule = "flat:64"
    assert complete(config).diffusion.schedule == "flat:64"
    ar = complete(RunConfig(family="ar")).diffusion
    assert (ar.schedule, ar.process, ar.attention, ar.readout) == (
        "quenched_ar", "absorbing", "causal", "shifted"
    )  # fmt: skip
    config = RunConfig(family="ar")
    config.diffusion.readout = "aligned"
    with pytest.raises(ConfigError, match="family ar reads out shifted"):
        complete(config)


def test_unknown_family_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'mdlm'"):
        family("mdml")


def test_options_a_sampler_does_not_read_are_refused():
    mdlm, a3 = language_model("mdlm"), language_model("a3")
    assert settings(mdlm, "acs", eta=0.3, steps=8)["eta"] == 0.3
    with pytest.raises(HdlmError, match="--eta does not apply to mdlm models"):
        settings(mdlm, eta=0.3)
    with pytest.raises(HdlmError, match="--order does not apply to mdlm models"):
        settings(mdlm, order="random")
    with pytest.raises(HdlmError, match="--steps does not apply to a3 models"):
        settings(a3, steps=8)
    eps = language_model("eps-hybrid")
    with pytest.raises(HdlmError, match="--order does not apply to eps-hybrid models"):
        settings(eps, order="random")
    with pytest.raises(
        HdlmError, match=r"--eta does not apply to eps-hybrid models \(sampler eps-chain"
    ):
        settings(eps, eta=0.1)
    with pytest.raises(
        HdlmError, match=r"--reveal does not apply to eps-hybrid models \(sampler acs"
    ):
        settings(eps, "acs", reveal="model")
    used = settings(eps, "eps-chain", reveal="model", final="greedy")
    assert (used["reveal"], used["final"]) == ("model", "greedy")
    assert settings(eps)["sampler"] == "eps-chain"
    with pytest.raises(ConfigError, match="cannot draw from a 'gamma-hybrid' model"):
        check_sampler(family("gamma-hybrid"), "acs")


@pytest.fixture
def a3_checkpoint(tmp_path):
    path = tmp_path / "a3"
    language_model("a3").save(path)
    return str(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eta", "0.1"], "--eta does not apply to a3 models"),
        (["--schedule", "flat:8"], "--schedule does not apply"),
        (["--steps", "8"], "--steps does not apply"),
        (["--sampler", "acs"], "the acs sampler cannot draw from a 'a3' model"),
        (["--sampler", "magic"], "unknown sampler 'magic'"),
        (["--device", "cuda:7"], "--device=cuda:7"),
        (["--device", "tpu"], "--device='tpu' is not a device"),
        (["-n", "0"], "-n/--num-samples: 0 must lie in [1, ∞)"),
        (["--top-p", "1.5"], "--top-p: 1.5 must lie in (0, 1]"),
        (["--temperature", "-1"], "--temperature: -1 must lie in [0, ∞)"),
    ],
)
def test_sample_refuses_bad_options_in_one_line(a3_checkpoint, args, message, capsys):
    assert exit_code(["sample", a3_checkpoint, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hdlm: error: ") and message in err, err


def exit_code(argv: list[str]) -> int:
    """`main`'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_a_diffusion_model_refuses_a3_options(tmp_path, capsys):
    language_model("mdlm").save(tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--group-size", "2"]) == 2
    assert "--group-size does not apply to mdlm models" in capsys.readouterr().err


def test_an_unwritable_output_file_is_one_line(tmp_path, capsys):
    language_model("ar").save(tmp_path / "m")
    plot = ["plot", "schedule", "flat:4", "--length", "8", "--out", str(tmp_path / "no" / "x.png")]
    assert exit_code(plot) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hdlm: error: "), err
