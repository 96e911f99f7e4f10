"""`hdlm study` end to end on a tiny budget: train, evaluate, write the table and the frontier
plot; a second run reuses everything; bad study files are clear errors."""

import json

import pytest
import yaml
from test_cli import TINY

from hdlm.cli import main
from hdlm.errors import ConfigError
from hdlm.experiments.study import load_study, setting_label

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
    # --report-only rewrites the report from what is on disk
    assert main(["study", "--config", str(path), "--report-only"]) == 0
    assert "| ar | 1 |" in (results / "table.md").read_text()
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


@pytest.mark.parametrize("name", ["study-tiny", "study-gpt2-small", "study-truth", "study-pydocs"])
def test_the_shipped_studies_load(name):
    study = load_study(f"configs/{name}.yaml")
    contestants = {"ar", "mdlm", "eps-hybrid", "gamma-hybrid"}  # HDLM's claims need these
    if name != "study-pydocs":  # (which studies the other families too)
        contestants |= {"block-diffusion", "a3"}
    assert contestants <= set(study.families)


def test_seeds_name_runs_and_set_their_seed(tmp_path):
    from hdlm.experiments.study import run_config, study_runs

    study = load_study(write_study(tmp_path, seeds=2, reference=None,
                                   samples={"n": 2, "metrics": ["entropy"]}))  # fmt: skip
    runs = study_runs(study)
    assert list(runs)[:3] == ["ar-seed0", "mdlm-seed0", "a3-seed0"] and len(runs) == 6
    assert runs["mdlm-seed1"] == ("mdlm", 1)
    config = run_config(study, "mdlm-seed1")
    assert config.seed == 1 and config.out_path == tmp_path / "runs" / "mdlm-seed1"
    with pytest.raises(ConfigError, match="gen-ppl metric needs a 'reference'"):
        load_study(write_study(tmp_path, reference=None))


def test_a_family_can_have_fewer_seeds(tmp_path):
    from hdlm.experiments.study import reference_run, study_runs

    families = {"judge": {"config": "configs/ar-tiny.yaml", "seeds": 1},
                "mdlm": {"config": "configs/mdlm-tiny.yaml"}}  # fmt: skip
    study = load_study(write_study(tmp_path, seeds=2, families=families, reference="judge",
                                   sweep={}, infill={"families": []}))  # fmt: skip
    assert list(study_runs(study)) == ["judge-seed0", "mdlm-seed0", "mdlm-seed1"]
    assert reference_run(study) == "judge-seed0"
    families["judge"]["seeds"] = 3
    with pytest.raises(ConfigError, match=r"families.judge.seeds=3 must lie in \[1, 2\]"):
        load_study(write_study(tmp_path, seeds=2, families=families, reference="judge",
                               sweep={}, infill={"families": []}))  # fmt: skip


def test_seeded_report_on_real_text_uses_the_judge(tmp_path):
    from hdlm.experiments.report_seeds import write_seeded_report

    study = load_study(write_study(tmp_path, seeds=2))
    results = {}
    for k in range(2):
        sample = {"gen_ppl": 100.0 + 20 * k, "mauve": 0.5, "unigram_entropy": 4.0,
                  "distinct_2": 0.8, "reference_unigram_entropy": 4.1,
                  "reference_distinct_2": 0.5}  # fmt: skip
        results[f"mdlm-seed{k}"] = {
            "family": "mdlm", "study_family": "mdlm", "seed": k,
            "perplexity": {"nelbo_per_token": 5.0, "nelbo_terms_per_token": {"diffusion": 5.0}},
            "samples": {"acs": sample},
            "infill": {"span_nll_per_token": 3.0 + k, "accuracy": 0.25},
        }  # fmt: skip
    write_seeded_report(study, results, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    # gen-PPL 100, 120: mean 110, standard error 10
    assert "| mdlm | acs | 2 | 110.0 ± 10.0 | 0.500 ± 0.000 | 4.000 ± 0.000 |" in table
    assert "| held-out text |" in table and "judge, the study's reference run `ar`" in table
    assert "| mdlm | 2 | 3.500 ± 0.500 | upper bound | 0.250 ± 0.000 |" in table
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 1000


def fake_run(family, seed, nll, entropy):
    sample = {"true_noisy_nll_per_token": nll, "true_noisy_nll_gap": nll - 1.0,
              "true_nll_per_token": nll, "true_impossible_fraction": 0.0,
              "unigram_entropy": entropy, "distinct_2": 0.5, "true_window_entropy": 1.0,
              "true_window_entropy_stderr": 0.01, "true_noisy_window_entropy": 1.1,
              "true_noisy_window_entropy_stderr": 0.01,
              "reference_unigram_entropy": 3.0}  # fmt: skip
    return {
        "family": family, "study_family": family, "seed": seed,
        "perplexity": {"nelbo_per_token": 2.0 + seed,
                       "nelbo_terms_per_token": {"diffusion": 1.5 + seed, "reconstruction": 0.5}},
        "samples": {f"acs-eta{k}": dict(sample, true_noisy_nll_per_token=nll + k)
                    for k in range(6)},
    }  # fmt: skip


def test_seeded_report_gives_means_and_standard_errors(tmp_path):
    from hdlm.experiments.report_seeds import mean_se, write_seeded_report

    study = load_study(write_study(tmp_path, seeds=3))
    results = {f"mdlm-seed{k}": fake_run("mdlm", k, 1.2 + 0.1 * k, 3.0) for k in range(3)}
    write_seeded_report(study, results, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    # NELBO 2, 3, 4: mean 3, standard error 1 / sqrt(3) * 1 = 0.577
    assert "| mdlm | 3 | 3.000 ± 0.577 | 2.500 ± 0.577 | 0.500 ± 0.000 |" in table
    assert "| mdlm | acs-eta0 | 3 | 1.300 ± 0.058 |" in table
    assert "| the source itself |" in table
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 1000
    assert mean_se([1.0, float("inf"), 3.0]) == (2.0, 1.0)


def test_differences_pair_samplers_by_seed_and_compare_nelbo_with_the_baseline():
    from hdlm.experiments.report_seeds import baseline_rows, paired_sampler_rows

    def run(family, seed, nelbo, samples):
        return {"family": family, "seed": seed, "perplexity": {"nelbo_per_token": nelbo},
                "samples": {label: {"gen_ppl_nll_per_token": nll, "unigram_entropy": h,
                                    "sampler_options": {"steps": steps}}
                            for label, (steps, nll, h) in samples.items()}}  # fmt: skip

    groups = {
        "mdlm": [
            run("mdlm", 0, 4.0, {"anc32": (32, 5.0, 4.0), "acs32": (32, 5.5, 4.1),
                                 "anc128": (128, 4.0, 4.0), "acs128": (128, 4.1, 4.0)}),
            run("mdlm", 1, 4.2, {"anc32": (32, 6.0, 4.0), "acs32": (32, 6.7, 4.3),
                                 "anc128": (128, 4.5, 4.0)}),
            run("mdlm", 2, 4.4, {"acs32": (32, 9.0, 9.0)}),  # no ancestral: not paired
        ],
        "eps-hybrid": [run("eps-hybrid", k, 4.5 + 0.1 * k, {}) for k in range(2)],
    }  # fmt: skip
    paired = "\n".join(paired_sampler_rows(groups, "gen_ppl_nll_per_token"))
    # seed 0: +0.5, seed 1: +0.7 -> +0.6 ± 0.1; gen-PPL x exp(0.6) = 1.82; entropy +0.1, +0.3
    assert "| mdlm | acs32 | anc32 | 2 | +0.600 ± 0.100 | 1.82 | +0.200 ± 0.100 |" in paired
    assert "| mdlm | acs128 | anc128 | 1 | +0.100 | 1.11 | +0.000 |" in paired
    assert "| mdlm | anc32 |" not in paired and "| mdlm | anc128 |" not in paired
    nelbo = "\n".join(baseline_rows(groups, "mdlm"))
    # eps 4.5, 4.6 (mean 4.55, se 0.05) minus mdlm 4.0, 4.2, 4.4 (4.2, se 0.115): +0.350 ± 0.126
    assert "| eps-hybrid | 2 vs 3 | +0.350 ± 0.126 |" in nelbo
    assert baseline_rows(groups, "ar") == []


def test_frontier_labels_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hdlm.experiments.plots import place_labels

    fig, ax = plt.subplots()
    points = [(1.0 + 0.001 * k, 2.0, f"setting-{k}", "C0") for k in range(8)]  # one spot
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    left_out = place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) + left_out == 8 and len(boxes) >= 4
    clashes = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert clashes == 0
    plt.close(fig)
