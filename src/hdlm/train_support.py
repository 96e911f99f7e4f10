"""What the training loop leans on: learning rate, seeds, EMA, optimizer, loggers, signals,
output checks, resume and initialisation from another checkpoint (`hdlm.train` is the loop)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from hdlm import distributed
from hdlm.config import RunConfig
from hdlm.errors import CheckpointError, DataError, HdlmError
from hdlm.files import write_text_atomic
from hdlm.model import LanguageModel
from hdlm.model.checkpoint import load_checkpoint_files, read_checkpoint, read_training_state
from hdlm.model.hf import import_hf

STEP_SEED_STRIDE = 1_000_003  # a prime above any step count: (seed, step) pairs never collide
RANK_SEED_STRIDE = 2**40  # far above seed * STEP_SEED_STRIDE + step: ranks never share a seed


def learning_rate(step: int, config) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of everything random at one step (noise, dropout) on one rank: resume needs no
    saved RNG. Each rank draws the noise of its own slice of the batch."""
    return seed * STEP_SEED_STRIDE + step + rank * RANK_SEED_STRIDE


class EMA:
    """Exponential moving average of the weights: ema ← d·ema + (1 - d)·θ after every step."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.copy_from(net)

    def copy_from(self, net: torch.nn.Module) -> None:
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                self.shadow[name].lerp_(value, 1 - self.decay)

    @contextlib.contextmanager
    def applied(self, net: torch.nn.Module):
        """Evaluate with the EMA weights, then put the raw weights back."""
        raw = {k: v.clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.shadow)
        try:
            yield
        finally:
            net.load_state_dict(raw)


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (where a new run directory would be made)."""
    while not path.exists():
        path = path.parent
    return path


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run and to write where we cannot, before any work (the
    directory itself is only created once the data and the model are ready)."""
    if not resume and (out / "latest").exists():
        raise HdlmError(
            f"{out} already holds a training run; pass --resume to continue it, "
            "or choose another directory with --out"
        )
    existing = nearest_existing(out)
    try:  # a real write, as permissions alone do not tell (root, read-only mounts)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise HdlmError(
            f"cannot write to {existing} ({e.strerror}); choose a writable --out directory"
        ) from e


def checkpoint_bytes(num_params: int, ema: bool) -> int:
    """fp32 weights, the two AdamW moments, and the raw weights when EMA weights are saved."""
    return 4 * num_params * (3 + ema)


def check_disk_space(out: Path, num_params: int, ema: bool, keep_last: int) -> None:
    """Refuse to start when the checkpoints this run will keep cannot fit on the disk."""
    existing = nearest_existing(out)
    size = checkpoint_bytes(num_params, ema)
    kept = len(list((out / "checkpoints").glob("step_*"))) if out.exists() else 0
    needed = max(1, keep_last + 1 - kept) * size  # +1: the next one is written before pruning
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise HdlmError(
            f"not enough disk space in {existing}: {free / 2**20:.1f} MiB free, but "
            f"train.keep_last={keep_last} checkpoints of ~{size / 2**20:.1f} MiB "
            f"({num_params:,} parameters) need ~{needed / 2**20:.1f} MiB; free some space, "
            "lower train.keep_last or choose another --out"
        )


def make_optimizer(net: torch.nn.Module, config) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases); the fused kernel (one
    pass over all parameters, ~4x faster than the per-tensor loop on CPU) where torch has it."""
    params = {id(p): p for p in net.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused)


class Logger(Protocol):
    """Where training records go: one dict per record, with a `step` key."""

    def write(self, record: dict) -> None: ...


class JsonlLogger:
    """metrics.jsonl, one JSON object per line; on resume, records past the checkpoint are
    dropped so that the file reads as one uninterrupted run."""

    def __init__(self, out: Path, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line).get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardLogger:
    """Scalars for TensorBoard (`pip install 'hdlm[tensorboard]'`) under out/tensorboard."""

    def __init__(self, out: Path):
        # the optional `tensorboard` extra, imported only by runs that log to it
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(out / "tensorboard")

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()


def open_loggers(out: Path, tensorboard: bool, resume_step: int | None) -> list[Logger]:
    """metrics.jsonl always, TensorBoard when `train.tensorboard` asks and it is installed;
    none on ranks other than 0."""
    if not distributed.is_main():
        return []
    loggers: list[Logger] = [JsonlLogger(out, resume_step)]
    if tensorboard:
        try:
            loggers.append(TensorBoardLogger(out))
        except ImportError:
            tqdm.write("tensorboard is not installed (pip install 'hdlm[tensorboard]'); "
                       "logging metrics.jsonl only")  # fmt: skip
    return loggers


class StopSignal:
    """SIGTERM / SIGINT ask the loop to stop after the current step; a second SIGINT aborts.

    `received` is the signal number, or 0. Handlers are installed in the main thread only.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received, self.previous = 0, {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if number == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number


def check_nonfinite(loss: float, step: int, train_config, consecutive: int) -> None:
    """Stop on a NaN/inf loss (before the optimizer applies it: nothing bad is saved), unless
    `train.on_nonfinite=skip` and fewer than `train.max_nonfinite` steps in a row were bad."""
    if train_config.on_nonfinite == "stop":
        raise HdlmError(
            f"the loss is {loss} at step {step}; stopped without applying it or saving (the last "
            "checkpoint is intact): lower train.lr, check the data, or set train.on_nonfinite=skip"
        )
    if consecutive >= train_config.max_nonfinite:
        raise HdlmError(
            f"the loss is {loss} at step {step} ({consecutive} non-finite steps in a row, "
            f"train.max_nonfinite={train_config.max_nonfinite}); stopped: lower train.lr or "
            "check the data"
        )


def restore(
    directory: Path, config: RunConfig, lm: LanguageModel, optimizer, ema: EMA | None
) -> int:
    """Load weights, EMA and optimizer from a verified training checkpoint; return its step."""
    saved, weights, _ = load_checkpoint_files(directory)
    if saved.family != config.family or saved.model != config.model:
        raise CheckpointError(
            f"{directory} was trained with family '{saved.family}' and model {saved.model}; "
            "resume with the same config, or start a new run with train.init_from"
        )
    state = read_training_state(directory)
    if ema is not None:  # through the module, so that FSDP shards the EMA weights like its own
        distributed.load_model_state(lm.net, weights)
        ema.copy_from(lm.net)
    distributed.load_model_state(lm.net, state.get("raw_weights", weights))
    distributed.load_optimizer_state(lm.net, optimizer, state["optimizer"])
    return state["step"]


def check_data_position(directory: Path, now: dict) -> None:
    """Resume only onto the data the checkpoint was trained on (checkpoints that predate the
    record carry none: nothing to check)."""
    saved = read_training_state(directory).get("data")
    if saved is None:
        return
    if any(saved.get(k) != now[k] for k in ("store", "train_blocks", "seed")):
        raise DataError(
            f"{directory} was trained on token store {saved.get('store')} "
            f"({saved.get('train_blocks')} train blocks), but this run reads store "
            f"{now['store']} ({now['train_blocks']} blocks): the data changed; resume with the "
            "same data settings (or data.store), or start a new run with train.init_from"
        )


def init_weights(lm: LanguageModel, path: str) -> None:
    """Start from another checkpoint's weights (any family; same tokenizer and model shape),
    or from a local Hugging Face directory given as `hf:PATH` (`hdlm.model.hf`)."""
    if path.startswith("hf:"):
        imported = import_hf(path.removeprefix("hf:"), lm.config.model.max_len)
        model, weights, tokenizer = imported.config, imported.weights, imported.tokenizer
    else:
        _, saved, weights, tokenizer = read_checkpoint(path)
        model = saved.model
    if tokenizer.fingerprint != lm.tokenizer.fingerprint:
        raise CheckpointError(
            f"train.init_from={path} uses another tokenizer ({tokenizer.vocab_size} ids) than this "
            f"run ({lm.tokenizer.vocab_size}); set data.tokenizer.path to "
            f"{path.removeprefix('hf:')} to share it"
        )
    own, mine = lm.net.state_dict(), lm.config.model
    # parameters the parent lacks (a noise-level embedding, A3's query embedding) start from
    # their zero initialisation; a shorter context or another dropout changes no weight
    free = {"max_len": mine.max_len, "dropout": mine.dropout, "from_hf": mine.from_hf}
    fresh = lm.net.zero_init_prefixes
    if (
        dataclasses.replace(model, **free, time_conditioning=mine.time_conditioning) != mine
        or any(name not in own or own[name].shape != v.shape for name, v in weights.items())
        or any(name not in weights and not name.startswith(fresh) for name in own)
    ):
        raise CheckpointError(
            f"train.init_from={path} has model {model}, which does not fit this run's model "
            f"{lm.config.model}; make the model sections agree"
        )
    distributed.load_model_state(lm.net, weights, strict=False)
