"""One training loop for every family: the family only supplies `objective.loss`.

AdamW with linear warmup and cosine decay, gradient accumulation and clipping, optional EMA of the
weights, mixed precision, periodic validation, a progress bar, a JSONL metrics log, and atomic
checkpoints from which `--resume` continues exactly: batches and noise are functions of
(seed, step) only, so a resumed run sees what the uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hdlm.config import RunConfig, to_dict
from hdlm.data import Batches, Prefetcher, prepare_data
from hdlm.errors import CheckpointError, ConfigError, HdlmError
from hdlm.evaluate import perplexity
from hdlm.hardware import autocast, compile_network, pick_device, pick_precision
from hdlm.model import LanguageModel
from hdlm.model.checkpoint import (
    read_checkpoint,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from hdlm.tokenizer import Tokenizer


def learning_rate(step: int, config) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def step_seed(seed: int, step: int) -> int:
    """Seed of everything random at one step (noise, dropout): resume needs no saved RNG."""
    return seed * 1_000_003 + step


class EMA:
    """Exponential moving average of the weights: ema ← d·ema + (1 - d)·θ after every step."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
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


def check_output_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run and to write where we cannot, before any work."""
    if resume:
        resolve_checkpoint(out)  # raises a clear error when there is nothing to resume
        return
    if (out / "latest").exists():
        raise HdlmError(
            f"{out} already holds a training run; pass --resume to continue it, "
            "or choose another directory with --out"
        )
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise HdlmError(f"cannot write to {existing}; choose a writable --out directory")


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


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when asked for and installed)."""

    def __init__(self, out: Path, tensorboard: bool, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.exists():  # drop records past the checkpoint
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if json.loads(line).get("step", 0) <= resume_step
            ]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                tqdm.write(
                    "tensorboard is not installed (pip install tensorboard); logging JSONL only"
                )
            else:
                self.writer = SummaryWriter(out / "tensorboard")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])


def train(
    config: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train `config` and return the run directory (its `latest` names the final checkpoint).

    `stop_after` ends the run after that step with a checkpoint, as if it had been interrupted
    there (for time-limited jobs and resume tests); `resume=True` continues it.
    """
    out = config.out_path
    check_output_dir(out, resume)
    device = pick_device(config.train.device)
    precision = pick_precision(config.train.precision, device)
    t = config.train

    resume_dir = resolve_checkpoint(out) if resume else None
    tokenizer = Tokenizer.load(resume_dir) if resume_dir else None
    data = prepare_data(config.data, tokenizer)
    if config.model.vocab_size not in (0, data.tokenizer.vocab_size):
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
            f"{data.tokenizer.vocab_size} ids; leave model.vocab_size at 0 to use the tokenizer's"
        )
    config.model.vocab_size = data.tokenizer.vocab_size

    torch.manual_seed(config.seed)
    lm = LanguageModel(config, data.tokenizer).to(device)
    optimizer = make_optimizer(lm.net, t)
    ema = EMA(lm.net, t.ema) if t.ema > 0 else None
    start_step = 0
    if resume_dir is not None:
        start_step = restore(resume_dir, config, lm, optimizer, ema)
    elif t.init_from:
        init_weights(lm, t.init_from)

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    log = MetricsLog(out, t.tensorboard, start_step if resume else None)
    if t.compile:
        compile_network(lm.net, tqdm.write)
    model_step = lm.objective.loss
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches = Batches(data.blocks["train"], t.batch_size, config.seed)
    next_batch = Prefetcher(batches.batch, start_step * t.grad_accum, pin=device.type == "cuda")
    tokens_per_step = t.batch_size * t.grad_accum * config.data.seq_len
    tqdm.write(
        f"{config.name}: family={config.family} params={lm.net.num_params() / 1e6:.2f}M "
        f"device={device} precision={precision} train_blocks={batches.num_blocks} "
        f"tokens/step={tokens_per_step}"
    )

    def save(step: int) -> None:
        state = {"step": step, "optimizer": optimizer.state_dict()}
        weights = lm.net.state_dict()
        if ema is not None:
            state["raw_weights"], weights = weights, ema.shadow
        name = f"checkpoints/step_{step:07d}"
        save_checkpoint(out / name, weights, config, data.tokenizer, state)
        write_text_atomic(out / "latest", name + "\n")
        for old in sorted((out / "checkpoints").glob("step_*"))[: -t.keep_last]:
            shutil.rmtree(old)

    def evaluate(step: int) -> None:
        if len(data.blocks["validation"]) == 0:  # data.val_fraction = 0
            return
        lm.net.eval()
        with ema.applied(lm.net) if ema is not None else contextlib.nullcontext():
            blocks = data.blocks["validation"][: t.eval_batches * t.batch_size]
            val = perplexity(lm, blocks, t.batch_size, precision, progress=False)["nelbo_per_token"]
        lm.net.train()
        ppl = math.exp(min(val, 50))
        log.write({"step": step, "val_loss": val, "val_ppl": ppl})
        tqdm.write(f"step {step}: validation loss {val:.4f} nats/token, perplexity {ppl:.2f}")

    if start_step == 0:
        evaluate(0)  # the untrained baseline, so every curve starts at the same place
    lm.net.train()
    bar = tqdm(
        total=t.steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True
    )
    running_loss, window_start, window_steps = (
        torch.zeros((), device=device),
        time.perf_counter(),
        0,
    )
    at_step = getattr(lm.objective, "at_step", None)  # curriculum stages (A3), if any
    stage = None
    for step in range(start_step, t.steps):
        if at_step is not None and at_step(step) != stage:
            stage = at_step(step)
            tqdm.write(f"step {step}: stage {stage}")
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(config.seed, step))
        generator = torch.Generator(device).manual_seed(step_seed(config.seed, step))
        for micro in range(t.grad_accum):
            tokens = next_batch(step * t.grad_accum + micro).to(device, non_blocking=True)
            with autocast(device, precision):
                loss = model_step(lm.net, tokens, generator) / t.grad_accum
            scaler.scale(loss).backward()
            running_loss += loss.detach()
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(lm.net.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(lm.net)
        window_steps += 1
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            mean_loss = running_loss.item() / window_steps  # the only host sync of the loop
            if not math.isfinite(mean_loss):
                raise HdlmError(
                    f"loss became {mean_loss} at step {done}; lower train.lr or check data"
                )
            speed = window_steps * tokens_per_step / (time.perf_counter() - window_start)
            record = {"step": done, "loss": mean_loss, "lr": lr, "tokens_per_s": speed}
            log.write(record if stage is None else {**record, "stage": stage})
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{speed:,.0f}", lr=f"{lr:.2e}")
            running_loss.zero_()
            window_start, window_steps = time.perf_counter(), 0
        bar.update(1)
        paused = time.perf_counter()
        if done % t.eval_every == 0 or done == t.steps:
            evaluate(done)
        if done % t.save_every == 0 or done in (t.steps, stop_after):
            save(done)
        if done == stop_after:
            break
        window_start += time.perf_counter() - paused  # tokens/s counts training time only
    bar.close()
    return out


def restore(
    directory: Path, config: RunConfig, lm: LanguageModel, optimizer, ema: EMA | None
) -> int:
    """Load weights, EMA and optimizer from a training checkpoint; return its step."""
    _, saved, weights, _ = read_checkpoint(directory)
    if saved.family != config.family or saved.model != config.model:
        raise CheckpointError(
            f"{directory} was trained with family '{saved.family}' and model {saved.model}; "
            "resume with the same config, or start a new run with train.init_from"
        )
    state = read_training_state(directory)
    lm.net.load_state_dict(state.get("raw_weights", weights))
    if ema is not None:
        ema.shadow = {k: v.to(lm.device) for k, v in weights.items()}
    optimizer.load_state_dict(state["optimizer"])
    tqdm.write(f"resuming from {directory} at step {state['step']}")
    return state["step"]


def init_weights(lm: LanguageModel, path: str) -> None:
    """Start from another checkpoint's weights (any family; same tokenizer and model shape)."""
    _, saved, weights, tokenizer = read_checkpoint(path)
    if tokenizer.fingerprint != lm.tokenizer.fingerprint:
        raise CheckpointError(
            f"train.init_from={path} uses another tokenizer ({tokenizer.vocab_size} ids) than this "
            f"run ({lm.tokenizer.vocab_size}); set data.tokenizer.path to {path} to share it"
        )
    missing, unexpected = lm.net.load_state_dict(weights, strict=False)
    # parameters the parent lacks (a noise-level embedding, A3's query embedding) start from
    # their zero initialisation
    fresh = getattr(lm.net, "zero_init_prefixes", ("time_embed.",))
    if unexpected or any(not name.startswith(fresh) for name in missing):
        raise CheckpointError(
            f"train.init_from={path} has model {saved.model}, which does not fit this run's model "
            f"{lm.config.model}; make the model sections agree"
        )
