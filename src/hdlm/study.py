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
from hdlm.errors import HdlmError


@dataclass
class FamilyRun:
    config: str  # a run config (configs/<family>-tiny.yaml)
    set: list[str] = field(default_factory=list)  # its own overrides; `{runs_dir}` is expanded


@dataclass
class PerplexitySettings:
    split: str = "test"
    max_blocks: int = 256


@dataclass
class SampleSettings:
    n: int = 48  # samples per sampler setting
    length: int = 128  # tokens per sample, BOS included
    batch_size: int = 16
    references: int = 256  # held-out blocks MAUVE compares the samples with


@dataclass
class InfillSettings:
    families: list[str] = field(default_factory=list)
    blocks: int = 128  # held-out blocks, one span each
    length: int = 64  # tokens of each block used (BOS included)
    span: int = 8  # tokens of the hidden span, in the middle of the block


@dataclass
class StudyConfig:
    name: str = "study"
    runs_dir: str = "runs/{name}"
    results_dir: str = "results/{name}"
    budget: list[str] = field(default_factory=list)  # overrides applied to every family
    families: dict[str, FamilyRun] = field(default_factory=dict)
    reference: str = "ar"
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
    unknown = [
        name
        for name in [study.reference, *study.sweep, *study.infill.families]
        if name not in study.families
    ]
    if unknown:
        raise ConfigError(
            f"{path}: {', '.join(sorted(set(unknown)))} named in reference/sweep/infill but not "
            f"under 'families' ({', '.join(study.families)})"
        )
    for name in study.families:
        run_config(study, name)  # every family's config loads and validates before any work
    return study


def run_config(study: StudyConfig, name: str):
    """The run config of family `name`: its YAML, then the budget, then its own overrides."""
    family = study.families[name]
    own = [item.format(runs_dir=study.runs_path) for item in family.set]
    overrides = [*study.budget, *own, f"name={name}", f"out_dir={study.runs_path / name}"]
    return load_config(family.config, overrides)


def finished(run_dir: Path, steps: int) -> bool:
    latest = run_dir / "latest"
    return latest.is_file() and latest.read_text().strip().endswith(f"step_{steps:07d}")


def train_all(study: StudyConfig, names: list[str], progress: bool = True) -> None:
    """Train (or resume, or skip) the runs of `names`, in the order of the study's families."""
    from hdlm.train import train

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


def run_study(path: str | Path, only: list[str] | None = None, progress: bool = True) -> Path:
    """Run every stage of the study at `path` (or only the families in `only`)."""
    study = load_study(path)
    names = only or list(study.families)
    missing = [name for name in names if name not in study.families]
    if missing:
        raise ConfigError(
            f"--only {','.join(missing)}: not in the study; choose from {', '.join(study.families)}"
        )
    train_all(study, names, progress)
    out = study.results_path
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"config": str(path)}, indent=2))
    return out
