"""Checkpoints on disk: safetensors weights + JSON config + tokenizer.json, written atomically.

Layout of a checkpoint directory::

    config.json          {"format": "hdlm", "version": ..., "run": <RunConfig as a dict>}
    model.safetensors    the weights used for inference (EMA weights when EMA is on)
    tokenizer.json       Hugging Face `tokenizers` file
    training_state.pt    optimizer, step, raw weights (only in training checkpoints)
    manifest.json        size and sha256 of every file above, checked on load

A run directory holds `checkpoints/step_XXXXXXX/` and a `latest` file naming the newest one, so
`hdlm.load(run_dir)` finds it. Nothing is unpickled: weights are safetensors and the training
state is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hdlm.config import RunConfig, from_dict, to_dict, with_presets
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import CheckpointError, ConfigError
from hdlm.files import temporary_sibling
from hdlm.version import __version__

CONFIG, WEIGHTS, TOKENIZER, STATE, MANIFEST = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "training_state.pt",
    "manifest.json",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    config: RunConfig,
    tokenizer: Tokenizer,
    training_state: dict | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint into a temporary directory, fsync it, then rename it into place
    (`extra_files`: more text files by name, e.g. Hugging Face tokenizer configs)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if config.model.tie_weights:  # safetensors stores a tensor once; the tie is rebuilt on load
        weights = {k: v for k, v in weights.items() if k != "head.weight"}
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
    header = {"format": "hdlm", "model_type": "hdlm", "version": __version__}
    (tmp / CONFIG).write_text(json.dumps({**header, "run": to_dict(config)}, indent=2))
    tokenizer.save(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if training_state is not None:
        torch.save(training_state, tmp / STATE)
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {
        name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        for name in files
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for name in [*files, MANIFEST]:
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if directory.exists():
        old = temporary_sibling(directory, "old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    return directory


def resolve_checkpoint(path: str | Path) -> Path:
    """The intact checkpoint `path` names: a checkpoint directory itself (an error when it is
    damaged), or the newest intact checkpoint of a run directory, starting from the one its
    `latest` file names and falling back to earlier ones with a warning for each damaged one."""
    path = Path(path)
    if (path / "latest").is_file():
        return _newest_intact(path)
    if (path / CONFIG).is_file():
        verify_checkpoint(path)
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass a run directory or a checkpoint")
    raise CheckpointError(
        f"{path} holds no checkpoint (no {CONFIG} and no 'latest' file); "
        "pass the --out directory of a training run or one of its checkpoints/step_* folders"
    )


def _newest_intact(run: Path) -> Path:
    latest = run / (run / "latest").read_text().strip()
    earlier = [c for c in (run / "checkpoints").glob("step_*") if c.name < latest.name]
    problems = []
    for candidate in [latest, *sorted(earlier, reverse=True)]:
        try:
            verify_checkpoint(candidate)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            print(f"hdlm: warning: {problem}; using {candidate} instead", file=sys.stderr)
        return candidate
    raise CheckpointError(f"{run} has no intact checkpoint: {'; '.join(problems)}")


def verify_checkpoint(directory: Path) -> None:
    """Compare every file with the manifest; a truncated or altered file is refused."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is missing")
    if not (directory / MANIFEST).is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: it was not fully written")
    manifest = json.loads((directory / MANIFEST).read_text())
    for name, expected in manifest.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete")
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            raise CheckpointError(
                f"{file} is corrupt or truncated ({file.stat().st_size} bytes, expected "
                f"{expected['bytes']}); use an earlier checkpoint"
            )


def read_checkpoint(path: str | Path) -> tuple[Path, RunConfig, dict[str, torch.Tensor], Tokenizer]:
    """Load (directory, config, inference weights, tokenizer) of the checkpoint `path` names
    (`resolve_checkpoint`: verified against its manifest, with a fall-back for run directories)."""
    directory = resolve_checkpoint(path)
    return directory, *load_checkpoint_files(directory)


def load_checkpoint_files(
    directory: Path,
) -> tuple[RunConfig, dict[str, torch.Tensor], Tokenizer]:
    """(config, inference weights, tokenizer) of a checkpoint directory already verified."""
    header = json.loads((directory / CONFIG).read_text())
    if header.get("format") != "hdlm":
        raise CheckpointError(f"{directory / CONFIG} is not an hdlm checkpoint config")
    run = header["run"]
    if run.get("family") == "ar" and (run.get("diffusion") or {}).get("schedule") is None:
        run = {**run, "diffusion": {}}  # written before ar had a diffusion preset: unused then
    try:
        config = with_presets(from_dict(RunConfig, run))
    except ConfigError as e:
        raise CheckpointError(
            f"{directory} was written by an incompatible hdlm version: {e}"
        ) from e
    weights = load_file(directory / WEIGHTS)
    if config.model.tie_weights:
        weights["head.weight"] = weights["embed.weight"]
    return config, weights, Tokenizer.load(directory)


def read_training_state(directory: Path) -> dict:
    if not (directory / STATE).is_file():
        raise CheckpointError(f"{directory} has no {STATE}; it is an inference-only checkpoint")
    return torch.load(directory / STATE, weights_only=True)
