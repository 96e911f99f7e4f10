"""Adding a sampler is one file: a toy sampler declared in this file alone is drawn from by
`lm.sample` and the command line, its option is checked against its declared range, and every
other sampler and family refuses it where it does not apply."""

import pytest
import torch
from helpers import TOKENIZER, language_model

from hdlm.cli import main
from hdlm.errors import ConfigError, HdlmError
from hdlm.experiments.study import check_setting
from hdlm.families import family
from hdlm.sampling import settings
from hdlm.sampling.options import Option
from hdlm.sampling.registry import SAMPLERS, Sampler, check_sampler, register, samplers_of


class FillWith(Sampler):
    """Writes the token `value` at every unknown position (no network call)."""

    name = "fill-with"
    summary = "every unknown position becomes the token `value`"
    objectives = ("diffusion",)
    options = (Option("value", 3, "the token id written", int, low=0),)

    def run(self, denoiser, tokens, known, generator, options, pick, trace):
        return torch.where(known, tokens, options["value"])


@pytest.fixture
def toy():
    register(FillWith)
    yield SAMPLERS["fill-with"]
    del SAMPLERS["fill-with"]


def test_a_registered_sampler_draws_and_reports_its_options(toy):
    lm = language_model("mdlm")
    assert "fill-with" in samplers_of(lm.family) and "fill-with" not in samplers_of(family("a3"))
    out = lm.sample(2, 9, sampler="fill-with", prompt="ab", value=5)
    expected = [TOKENIZER.bos_id, *TOKENIZER.encode("ab"), *[5] * 6]
    assert out.tolist() == [expected, expected]
    assert settings(lm, "fill-with")["value"] == 3
    assert settings(lm, "fill-with", value=7)["value"] == 7


def test_its_option_is_checked_and_refused_by_other_samplers_and_families(toy):
    lm = language_model("mdlm")
    with pytest.raises(HdlmError, match=r"--value -1 must lie in \[0, ∞\)"):
        lm.sample(1, 6, sampler="fill-with", value=-1)
    with pytest.raises(
        HdlmError,
        match=r"--value does not apply to mdlm models \(sampler ancestral\); it is an option of "
        "the fill-with sampler",
    ):
        lm.sample(1, 6, value=4)
    with pytest.raises(ConfigError, match="the fill-with sampler cannot draw from a 'a3' model"):
        check_sampler(family("a3"), "fill-with")
    with pytest.raises(ValueError, match="registered already"):
        register(FillWith)


def test_the_command_line_gets_its_flag(toy, tmp_path, capsys):
    language_model("mdlm").save(tmp_path / "m")
    argv = ["sample", str(tmp_path / "m"), "-n", "1", "--length", "5", "--sampler", "fill-with"]
    assert main([*argv, "--value", "4"]) == 0
    assert capsys.readouterr().out == f"=== sample 0 ===\n{TOKENIZER.decode([4] * 4)}\n"
    assert main([*argv, "--value", "-2"]) == 2
    assert "--value: -2 must lie in [0, ∞)" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "m"), "--value", "4"]) == 2
    assert "--value does not apply to mdlm models" in capsys.readouterr().err


def test_a_study_sweep_is_checked_against_the_registry():
    check_setting("mdlm", {"sampler": "acs", "eta": 0.25, "steps": 8}, "sweep.mdlm")
    with pytest.raises(ConfigError, match=r"sweep.mdlm: --order does not apply to mdlm models"):
        check_setting("mdlm", {"sampler": "acs", "order": "random"}, "sweep.mdlm")
    with pytest.raises(ConfigError, match="sweep.a3: the acs sampler cannot draw from a 'a3'"):
        check_setting("a3", {"sampler": "acs"}, "sweep.a3")
    with pytest.raises(ConfigError, match=r"--eta 2 must lie in \[0, 1\]"):
        check_setting("mdlm", {"sampler": "acs", "eta": 2}, "sweep.mdlm")
