"""`hdlm study`: train every family at one token budget, evaluate them all the same way, and
write the comparison (`table.md`, `frontier.png`, `results.json`) to the study's results dir.

Every stage is cached on disk and skipped when its output exists, so an interrupted study
continues where it stopped: a finished training run (its `latest` checkpoint at the budget's last
step) is not retrained, a partial one is resumed, and each evaluation is one JSON file in
`results_dir/raw/` written once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdlm.config import ConfigError, from_dict, load_config, read_yaml
from hdlm.data import prepare_data
from hdlm.errors import HdlmError
from hdlm.eval.perplexity import infill_metrics, middle_span, perplexity
from hdlm.eval.samples import sample_metrics
from hdlm.experiments.report import write_report
from hdlm.experiments.report_seeds import write_seeded_report
from hdlm.families import family as family_row
from hdlm.files import write_text_atomic
from hdlm.model import load
from hdlm.sampling.registry import check_sampler, sampler_options
from hdlm.train import train


@dataclass
class FamilyRun:
    config: str  # a run config (configs/<family>-tiny.yaml)
    set: list[str] = field(default_factory=list)  # its own overrides; `{runs_dir}` is expanded
    seeds: int | None = None  # its number of seeds, when not the study's (e.g. 1 for a judge)


@dataclass
class PerplexitySettings:
    split: str = "test"
    max_blocks: int = 256


@dataclass
class SampleSettings:
    n: int = 128  # samples per sampler setting (MAUVE needs >= 100)
    length: int = 128  # tokens per sample, BOS included
    batch_size: int = 16
    references: int = 256  # held-out blocks MAUVE compares the samples with
    metrics: list[str] = field(default_factory=lambda: ["gen-ppl", "mauve", "entropy", "distinct"])


@dataclass
class InfillSettings:
    families: list[str] = field(default_factory=list)
    blocks: int = 128  # held-out blocks, one span each
    length: int = 64  # tokens of each block used (BOS included)
    span: int = 8  # tokens of the hidden span, in the middle of the block


@dataclass
class StudyConfig:
    name: str = "study"
    seeds: int = 1  # runs per family (train.seed... via the top-level `seed`), named NAME-seedK
    runs_dir: str = "runs/{name}"
    results_dir: str = "results/{name}"
    budget: list[str] = field(default_factory=list)  # overrides applied to every family
    families: dict[str, FamilyRun] = field(default_factory=dict)
    reference: str | None = "ar"  # scores gen-ppl; None when no sample metric needs it
    baseline: str | None = None  # the family every other's NELBO is compared with (e.g. mdlm)
    perplexity: PerplexitySettings = field(default_factory=PerplexitySettings)
    samples: SampleSettings = field(default_factory=SampleSettings)
    sweep: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    infill: InfillSettings = field(default_factory=InfillSettings)

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir.format(name=self.name))

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir.format(name=self.name))


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML (relative config paths are taken from the working dir)."""
    data = read_yaml(Path(path))
    families = data.get("families") or {}
    if not isinstance(families, dict):
        raise ConfigError(f"{path}: 'families' must map a name to {{config: FILE, set: [...]}}")
    data["families"] = {
        name: from_dict(FamilyRun, spec, f"families.{name}") for name, spec in families.items()
    }
    study = from_dict(StudyConfig, data)
    if study.seeds < 1:
        raise ConfigError(f"{path}: seeds={study.seeds} must be at least 1")
    for name, family in study.families.items():
        if family.seeds is not None and not 1 <= family.seeds <= study.seeds:
            raise ConfigError(
                f"{path}: families.{name}.seeds={family.seeds} must lie in [1, {study.seeds}] "
                "(the study's seeds)"
            )
    if study.reference is None and "gen-ppl" in study.samples.metrics:
        raise ConfigError(f"{path}: the gen-ppl metric needs a 'reference' family (an ar run)")
    named = [name for name in (study.reference, study.baseline) if name]
    unknown = [
        name
        for name in [*named, *study.sweep, *study.infill.families]
        if name not in study.families
    ]
    if unknown:
        raise ConfigError(
            f"{path}: {', '.join(sorted(set(unknown)))} named in reference/baseline/sweep/infill "
            f"but not under 'families' ({', '.join(study.families)})"
        )
    configs = {name: run_config(study, run) for run, (name, _) in study_runs(study).items()}
    for name, settings in study.sweep.items():  # every run's config loads and validates above
        for setting in settings:
            check_setting(configs[name].family, setting, f"{path}: sweep.{name}")
    return study


TOKEN_CHOICE = ("temperature", "top_k", "top_p", "seed")  # `fill`'s keywords of every sampler


def check_setting(family_name: str, setting: dict[str, Any], where: str) -> None:
    """Refuse a sweep setting whose sampler cannot draw from `family_name` or that gives an
    option its sampler does not declare (the sampler registry's checks, before any work)."""
    row = family_row(family_name)
    try:
        chosen = check_sampler(row, setting.get("sampler") or row.default_sampler)
        given = {k: v for k, v in setting.items() if k != "sampler" and k not in TOKEN_CHOICE}
        sampler_options(family_name, chosen, given)
    except (HdlmError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def study_runs(study: StudyConfig) -> dict[str, tuple[str, int]]:
    """Run name -> (family name, seed), seed by seed: with one seed a run is named after its
    family, else NAME-seedK for K = 0..seeds-1 (so a study's first seed finishes first); a
    family with its own `seeds` has that many."""
    if study.seeds == 1:
        return {name: (name, 0) for name in study.families}
    return {
        f"{name}-seed{k}": (name, k)
        for k in range(study.seeds)
        for name, family in study.families.items()
        if k < (family.seeds or study.seeds)
    }


def run_config(study: StudyConfig, run: str):
    """The run config of `run`: its family's YAML, then the budget, then the family's own
    overrides, then its seed (when the study has several)."""
    name, seed = study_runs(study)[run]
    family = study.families[name]
    own = [item.format(runs_dir=study.runs_path) for item in family.set]
    seeded = [f"seed={seed}"] if study.seeds > 1 else []
    overrides = [*study.budget, *own, *seeded, f"name={run}", f"out_dir={study.runs_path / run}"]
    return load_config(family.config, overrides)


def reference_run(study: StudyConfig) -> str | None:
    """The run that scores gen-PPL: the reference family's (first seed's) run."""
    if study.reference is None:
        return None
    return study.reference if study.seeds == 1 else f"{study.reference}-seed0"


def finished(run_dir: Path, steps: int) -> bool:
    latest = run_dir / "latest"
    return latest.is_file() and latest.read_text().strip().endswith(f"step_{steps:07d}")


def train_all(study: StudyConfig, names: list[str], progress: bool = True) -> None:
    """Train (or resume, or skip) the runs of `names`, in the order of the study's families."""
    for name in names:
        config = run_config(study, name)
        run_dir = config.out_path
        if finished(run_dir, config.train.steps):
            print(f"study: {name} already trained ({run_dir})")
            continue
        if config.train.init_from and not Path(config.train.init_from).exists():
            raise HdlmError(
                f"study: {name} starts from {config.train.init_from}, which is not trained yet; "
                f"train it first (list it before {name} under 'families')"
            )
        print(f"study: training {name} -> {run_dir}")
        start = time.time()
        train(config, resume=(run_dir / "latest").is_file(), progress=progress)
        print(f"study: {name} trained in {time.time() - start:.0f} s")


def setting_label(setting: dict[str, Any]) -> str:
    """A short file-name-safe name of a sampler setting, e.g. `acs-steps32-eta0.25`."""
    parts = [str(setting.get("sampler", "default"))]
    parts += [
        f"{key.replace('_', '')}{value}" for key, value in setting.items() if key != "sampler"
    ]
    return "-".join(parts).replace(":", "_").replace("/", "_")


def cached(path: Path, compute) -> dict:
    """The JSON at `path`, computed and written (atomically) first if it is missing."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    write_text_atomic(path, json.dumps(result, indent=2))
    return result


class Evaluator:
    """The evaluations of one study, on the same held-out blocks for every family."""

    def __init__(self, study: StudyConfig, progress: bool):
        self.study, self.progress = study, progress
        self.raw = study.results_path / "raw"
        self._blocks = None
        self._reference = None

    def blocks(self, lm):
        """The evaluation split's blocks (every run trains the same tokenizer on one corpus)."""
        if self._blocks is None:
            data = prepare_data(lm.config.data, lm.tokenizer)
            split = self.study.perplexity.split
            if len(data.blocks.get(split, [])) == 0:
                raise HdlmError(f"study: split '{split}' of {lm.config.data.corpus} is empty")
            self._blocks = data.blocks[split]
        return self._blocks

    def reference(self):
        if self._reference is None and reference_run(self.study) is not None:
            self._reference = load(self.study.runs_path / reference_run(self.study))
        return self._reference

    def perplexity(self, name: str, lm) -> dict:
        """Test NELBO / perplexity; for A3 both left to right and in random orders."""
        settings = self.study.perplexity
        blocks = self.blocks(lm)[: settings.max_blocks]
        result = perplexity(lm, blocks, progress=self.progress)
        if lm.family.is_a3:
            result["by_order"] = {}
            for order in ("left-to-right", "random"):
                lm.set_a3_evaluation([f"a3.eval_order={order}"])
                result["by_order"][order] = perplexity(lm, blocks, progress=self.progress)
        return result

    def samples(self, name: str, lm, setting: dict[str, Any]) -> dict:
        """Sample quality of one sampler setting: gen-PPL, MAUVE, entropy, distinct-n."""
        settings = self.study.samples
        blocks = self.blocks(lm)[-settings.references :, : settings.length]
        references = lm.decode(blocks)
        return sample_metrics(
            lm, settings.n, settings.length, references, reference_lm=self.reference(),
            metrics=settings.metrics,
            batch_size=settings.batch_size, progress=self.progress, **setting,
        )  # fmt: skip

    def infill(self, name: str, lm) -> dict:

        settings = self.study.infill
        blocks = self.blocks(lm)[: settings.blocks]
        tokens, hidden = middle_span(blocks, settings.length, settings.span)
        return infill_metrics(lm, tokens, hidden, progress=self.progress)

    def family(self, run: str) -> dict:
        """Every evaluation of `run` (each cached in raw/<run>/)."""
        name, seed = study_runs(self.study)[run]
        lm = load(self.study.runs_path / run)
        folder = self.raw / run
        perplexity = cached(folder / "perplexity.json", lambda: self.perplexity(name, lm))
        result = {"family": lm.config.family, "perplexity": perplexity, "samples": {}}
        result.update(study_family=name, seed=seed)
        for setting in self.study.sweep.get(name, []):
            label = setting_label(setting)
            path = folder / f"samples-{label}.json"
            result["samples"][label] = cached(path, lambda s=setting: self.samples(name, lm, s))
        if name in self.study.infill.families:
            result["infill"] = cached(folder / "infill.json", lambda: self.infill(name, lm))
        return result


def training_summary(run_dir: Path) -> dict:
    """Tokens/s (median over the logged windows after the first) and the last validation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted([r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]) or [float("nan")]
    validation = [r for r in rows if "val_ppl" in r]
    return {
        "tokens_per_s": rates[len(rates) // 2],
        "val_perplexity": validation[-1]["val_ppl"] if validation else None,
        "steps": max((r.get("step", 0) for r in rows), default=0),
    }


def run_study(
    path: str | Path,
    only: list[str] | None = None,
    progress: bool | str = True,
    train_only: bool = False,
) -> Path:
    """Run every stage of the study at `path` (or only the families or runs in `only`).
    `progress`: bars for everything (True / "all"), for training only ("training": one line per
    family while it trains) or none (False / "none")."""
    progress = {True: "all", False: "none"}.get(progress, progress)
    if progress not in ("all", "training", "none"):
        raise ConfigError(f"progress '{progress}': choose all, training or none")
    study = load_study(path)
    runs = study_runs(study)
    names = list(runs) if only is None else [r for r in runs if {r, runs[r][0]} & set(only)]
    missing = [name for name in only or [] if name not in runs and name not in study.families]
    if missing:
        raise ConfigError(
            f"--only {','.join(missing)}: not in the study; choose from {', '.join(study.families)}"
            f" or runs {', '.join(runs)}"
        )
    train_all(study, names, progress != "none")
    if train_only:
        return study.runs_path
    reference = reference_run(study)
    if reference and not finished(
        study.runs_path / reference, run_config(study, reference).train.steps
    ):
        raise HdlmError(f"study: the reference run '{reference}' must be trained first")
    evaluator = Evaluator(study, progress == "all")
    results = {}
    for name in names:
        print(f"study: evaluating {name}")
        results[name] = evaluator.family(name)
        results[name]["training"] = training_summary(study.runs_path / name)
    out = study.results_path
    if only is None and study.seeds > 1:
        write_seeded_report(study, results, out)
    elif only is None:
        write_report(study, results, out)
    return out


def report_so_far(path: str | Path) -> Path:
    """Write the study's report from the evaluations already on disk, without training or
    evaluating anything: runs whose evaluations are missing are left out, and so are sampler
    settings not evaluated yet (a partial study's tables say how many seeds each cell has)."""
    study = load_study(path)
    raw = study.results_path / "raw"
    written = study.results_path / "results.json"  # keeps the training summaries of runs gone
    before = json.loads(written.read_text()) if written.is_file() else {}
    results = {}
    for run, (name, seed) in study_runs(study).items():
        folder = raw / run
        if not (folder / "perplexity.json").is_file():
            continue
        lm_family = run_config(study, run).family
        results[run] = {
            "family": lm_family, "study_family": name, "seed": seed,
            "perplexity": json.loads((folder / "perplexity.json").read_text()),
            "samples": {
                label: json.loads((folder / f"samples-{label}.json").read_text())
                for label in map(setting_label, study.sweep.get(name, []))
                if (folder / f"samples-{label}.json").is_file()
            },
        }  # fmt: skip
        if (study.runs_path / run / "metrics.jsonl").is_file():
            results[run]["training"] = training_summary(study.runs_path / run)
        elif "training" in before.get(run, {}):
            results[run]["training"] = before[run]["training"]
        if (folder / "infill.json").is_file():
            results[run]["infill"] = json.loads((folder / "infill.json").read_text())
    if not results:
        raise HdlmError(f"study: nothing evaluated yet under {raw}; run the study first")

    write_seeded_report(study, results, study.results_path)
    return study.results_path
