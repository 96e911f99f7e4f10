"""`hdlm study` end to end on a tiny budget: train, evaluate, write the table and the frontier
plot; a second run reuses everything; bad study files are clear errors."""

import json

import pytest
import yaml
from test_cli import TINY

from hdlm.cli import main
from hdlm.errors import ConfigError
from hdlm.study import load_study, setting_label

BUDGET = [item for item in TINY if item != "--set"] + ["train.steps=6", "train.eval_every=6"]


def write_study(tmp_path, **changes):
    study = {
        "name": "mini",
        "runs_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        "budget": [*BUDGET, f"data.cache_dir={tmp_path / 'cache'}"],
        "families": {
            "ar": {"config": "configs/ar-tiny.yaml"},
            "mdlm": {"config": "configs/mdlm-tiny.yaml"},
            "a3": {"config": "configs/a3-tiny.yaml"},
        },
        "reference": "ar",
        "perplexity": {"split": "test", "max_blocks": 4},
        "samples": {
            "n": 2,
            "length": 16,
            "batch_size": 2,
            "references": 4,
            "metrics": ["gen-ppl", "entropy", "distinct"],
        },  # fmt: skip
        "sweep": {
            "ar": [{"sampler": "ar"}],
            "mdlm": [{"sampler": "ancestral", "steps": 4}, {"sampler": "acs", "eta": 0.25}],
            "a3": [{"sampler": "a3", "order": "random", "group_size": 2}],
        },
        "infill": {"families": ["mdlm", "a3"], "blocks": 3, "length": 16, "span": 4},
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_tiny_study_trains_evaluates_and_reports_then_resumes(tmp_path, capsys):
    path = write_study(tmp_path)
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    results = tmp_path / "results"
    table = (results / "table.md").read_text()
    for row in ("| ar |", "| mdlm |", "| a3 |", "acs-eta0.25", "a3-orderrandom-groupsize2"):
        assert row in table
    assert (results / "frontier.png").stat().st_size > 1000
    data = json.loads((results / "results.json").read_text())
    assert set(data) == {"ar", "mdlm", "a3"}
    assert data["ar"]["perplexity"]["blocks"] == 4
    assert set(data["a3"]["perplexity"]["by_order"]) == {"left-to-right", "random"}
    assert data["mdlm"]["samples"]["acs-eta0.25"]["gen_ppl"] > 1
    assert 0 <= data["a3"]["infill"]["accuracy"] <= 1
    # a second run trains and evaluates nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (results / "raw").rglob("*.json")}
    capsys.readouterr()
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("already trained") == 3
    assert stamps == {p: p.stat().st_mtime_ns for p in (results / "raw").rglob("*.json")}


def test_bad_study_files_are_clear_errors(tmp_path, capsys):
    path = write_study(tmp_path, reference="gpt2")
    with pytest.raises(ConfigError, match="gpt2 named in reference"):
        load_study(path)
    path = write_study(tmp_path, families={"ar": {"config": "configs/nope.yaml"}}, sweep={},
                       infill={"families": []})  # fmt: skip
    assert main(["study", "--config", str(path)]) == 2
    assert "configs/nope.yaml not found" in capsys.readouterr().err
    path = write_study(tmp_path, families={"ar": {"config": "configs/ar-tiny.yaml", "sett": []}})
    with pytest.raises(ConfigError, match="did you mean 'set'"):
        load_study(path)


def test_setting_labels_are_file_names():
    assert setting_label({"sampler": "acs", "steps": 32, "eta": 0.25}) == "acs-steps32-eta0.25"
    assert setting_label({"sampler": "ancestral", "schedule": "block:16:4"}) == (
        "ancestral-scheduleblock_16_4"
    )


@pytest.mark.parametrize("name", ["study-tiny", "study-gpt2-small"])
def test_the_shipped_studies_load(name):
    study = load_study(f"configs/{name}.yaml")
    assert {"ar", "mdlm", "block-diffusion", "eps-hybrid", "gamma-hybrid", "a3"} <= set(
        study.families
    )
