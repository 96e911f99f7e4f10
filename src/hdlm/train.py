"""One training loop for every family: the family only supplies `objective.loss`.

AdamW with linear warmup and cosine decay, gradient accumulation and clipping, optional EMA of the
weights, mixed precision, periodic validation, a progress bar, a JSONL metrics log, and atomic
checkpoints from which `--resume` continues exactly: batches and noise are functions of
(seed, step) only, so a resumed run sees what the uninterrupted one would have seen.

Under torchrun (`hdlm.distributed`) the same loop runs on every rank, each on its slice of the
global batch; rank 0 alone logs and writes checkpoints. SIGTERM / SIGINT finish the current step,
save a checkpoint and stop (exit code 0 / 130); a non-finite loss stops the run before the
optimizer sees it, or skips that step (`train.on_nonfinite`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hdlm import distributed
from hdlm.config import RunConfig, to_dict
from hdlm.data import Batches, Prefetcher, prepare_data
from hdlm.errors import CheckpointError, ConfigError, HdlmError
from hdlm.evaluate import nelbo_sums
from hdlm.hardware import autocast, compile_network, pick_device, pick_precision
from hdlm.model import LanguageModel
from hdlm.model.checkpoint import (
    load_checkpoint_files,
    read_checkpoint,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from hdlm.model.hf import resolve_architecture
from hdlm.tokenizer import Tokenizer


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
    return seed * 1_000_003 + step + rank * 2**40


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


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when asked for and installed)."""

    def __init__(self, out: Path, tensorboard: bool, resume_step: int | None):
        self.path = out / "metrics.jsonl"
        self.enabled = distributed.is_main()
        self.writer = None
        if not self.enabled:
            return
        if resume_step is not None and self.path.exists():  # drop records past the checkpoint
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if json.loads(line).get("step", 0) <= resume_step
            ]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
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
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])


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


def train(
    config: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train `config` and return the run directory (its `latest` names the final checkpoint).

    `stop_after` ends the run after that step with a checkpoint, as if it had been interrupted
    there (for time-limited jobs and resume tests); `resume=True` continues it. Under torchrun
    every rank calls this; it joins the process group and leaves it at the end.
    """
    check_output_dir(config.out_path, resume)
    resolve_architecture(config)  # model.from_hf: the architecture of a Hugging Face directory
    device = distributed.init(pick_device(config.train.device))
    try:
        return _train(config, device, resume, progress, stop_after)
    finally:
        distributed.shutdown()


def _train(
    config: RunConfig, device: torch.device, resume: bool, progress: bool, stop_after: int | None
) -> Path:
    out, t = config.out_path, config.train
    precision = pick_precision(t.precision, device)
    world, main = distributed.world_size(), distributed.is_main()
    distributed.check_batch(t.batch_size)
    say = tqdm.write if main else lambda message: None

    resume_dir = resolve_checkpoint(out) if resume else None
    tokenizer = Tokenizer.load(resume_dir) if resume_dir else None
    with distributed.main_first():  # rank 0 fills the tokenizer and data caches
        data = prepare_data(config.data, tokenizer)
    if config.model.vocab_size not in (0, data.tokenizer.vocab_size):
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
            f"{data.tokenizer.vocab_size} ids; leave model.vocab_size at 0 to use the tokenizer's"
        )
    config.model.vocab_size = data.tokenizer.vocab_size

    torch.manual_seed(config.seed)
    lm = LanguageModel(config, data.tokenizer).to(device)
    check_disk_space(out, lm.net.num_params(), t.ema > 0, t.keep_last)
    model_step = distributed.wrap(distributed.LossModule(lm.net, lm.objective), t.parallel)
    optimizer = make_optimizer(lm.net, t)
    ema = EMA(lm.net, t.ema) if t.ema > 0 else None
    start_step = 0
    if resume_dir is not None:
        start_step = restore(resume_dir, config, lm, optimizer, ema)
        say(f"resuming from {resume_dir} at step {start_step}")
    elif t.init_from:
        init_weights(lm, t.init_from)
        if ema is not None:  # the average starts at the initial weights, not the random ones
            ema.copy_from(lm.net)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    log = MetricsLog(out, t.tensorboard, start_step if resume else None)
    if t.compile:
        compile_network(lm.net, say)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches = Batches(data.blocks["train"], t.batch_size, config.seed)
    next_batch = Prefetcher(batches.batch, start_step * t.grad_accum, pin=device.type == "cuda")
    tokens_per_step = t.batch_size * t.grad_accum * config.data.seq_len
    say(
        f"{config.name}: family={config.family} params={lm.net.num_params() / 1e6:.2f}M "
        f"device={device} precision={precision} train_blocks={batches.num_blocks} "
        f"tokens/step={tokens_per_step}"
        + (f" processes={world} ({t.parallel})" if world > 1 else "")
    )

    def save(step: int) -> None:
        weights = distributed.model_state(lm.net)  # collectives under FSDP: every rank calls
        state = {"step": step, "optimizer": distributed.optimizer_state(lm.net, optimizer)}
        if ema is not None:
            state["raw_weights"], weights = weights, distributed.full_tensors(ema.shadow)
        if not main:
            return
        name = f"checkpoints/step_{step:07d}"
        save_checkpoint(out / name, weights, config, data.tokenizer, state)
        write_text_atomic(out / "latest", name + "\n")
        # older ones only: after a fall-back resume, damaged newer ones wait to be overwritten
        kept = sorted(c for c in (out / "checkpoints").glob("step_*") if c.name <= Path(name).name)
        for old in kept[: -t.keep_last]:
            shutil.rmtree(old)

    def evaluate(step: int) -> None:
        blocks = data.blocks["validation"][: t.eval_batches * t.batch_size]
        blocks = blocks[: len(blocks) // world * world]  # equal shares: FSDP ranks run in step
        if len(blocks) == 0:  # data.val_fraction = 0
            return
        lm.net.eval()
        with ema.applied(lm.net) if ema is not None else contextlib.nullcontext():
            sums = nelbo_sums(lm, distributed.shard(blocks), t.batch_size // world, precision)
        lm.net.train()
        nats, tokens = distributed.all_sum(list(sums), device)
        val = nats / tokens
        ppl = math.exp(min(val, 50))
        log.write({"step": step, "val_loss": val, "val_ppl": ppl})
        say(f"step {step}: validation loss {val:.4f} nats/token, perplexity {ppl:.2f}")

    if start_step == 0:
        evaluate(0)  # the untrained baseline, so every curve starts at the same place
    lm.net.train()
    bar = tqdm(
        total=t.steps,
        initial=start_step,
        disable=not progress or not main,
        unit="step",
        dynamic_ncols=True,
    )
    window = {"loss": 0.0, "finite": 0, "steps": 0, "start": time.perf_counter()}
    skipped = consecutive_skips = 0
    at_step = getattr(lm.objective, "at_step", None)  # curriculum stages (A3), if any
    stage = None
    with StopSignal() as stop:
        for step in range(start_step, t.steps):
            if at_step is not None and at_step(step) != stage:
                stage = at_step(step)
                say(f"step {step}: stage {stage}")
            lr = learning_rate(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            seed = step_seed(config.seed, step, distributed.rank())
            torch.manual_seed(seed)
            generator = torch.Generator(device).manual_seed(seed)
            step_loss = torch.zeros((), device=device)
            for micro in range(t.grad_accum):
                batch = distributed.shard(next_batch(step * t.grad_accum + micro))
                tokens = batch.to(device, non_blocking=True)
                with distributed.no_sync(model_step, micro == t.grad_accum - 1):
                    with autocast(device, precision):
                        loss = model_step(tokens, generator) / t.grad_accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            # one host sync per step: a bad loss must be caught before the optimizer applies it,
            # and every rank must agree on it and on a stop signal
            loss_sum, signalled = distributed.all_sum(
                [step_loss.item(), float(stop.received)], device
            )
            loss_value, done = loss_sum / world, step + 1
            if math.isfinite(loss_value):
                consecutive_skips = 0
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(lm.net.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(lm.net)
                window["loss"] += loss_value
                window["finite"] += 1
            else:
                skipped, consecutive_skips = skipped + 1, consecutive_skips + 1
                check_nonfinite(loss_value, done, t, consecutive_skips)
                say(f"step {done}: loss is {loss_value}; optimizer step skipped ({skipped} so far)")
            optimizer.zero_grad(set_to_none=True)
            window["steps"] += 1
            if done % t.log_every == 0 or done == t.steps:
                speed = window["steps"] * tokens_per_step / (time.perf_counter() - window["start"])
                record = {"step": done, "lr": lr, "tokens_per_s": speed}
                if window["finite"]:
                    record["loss"] = window["loss"] / window["finite"]
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{speed:,.0f}")
                record.update({"stage": stage} if stage is not None else {})
                log.write({**record, "skipped_steps": skipped} if skipped else record)
                window.update(loss=0.0, finite=0, steps=0, start=time.perf_counter())
            bar.update(1)
            paused = time.perf_counter()
            if done % t.eval_every == 0 or done == t.steps:
                evaluate(done)
            stopping = done == stop_after or signalled > 0
            if done % t.save_every == 0 or done == t.steps or stopping:
                save(done)
            if stopping:
                break
            window["start"] += time.perf_counter() - paused  # tokens/s counts training time only
    bar.close()
    if stop.received:
        name = signal.Signals(stop.received).name
        say(f"{name}: stopped after step {done} and saved a checkpoint; continue with --resume")
        if stop.received == signal.SIGINT:
            raise KeyboardInterrupt
    return out


def check_nonfinite(loss: float, step: int, t, consecutive: int) -> None:
    """Stop on a NaN/inf loss (before the optimizer applies it: nothing bad is saved), unless
    `train.on_nonfinite=skip` and fewer than `train.max_nonfinite` steps in a row were bad."""
    if t.on_nonfinite == "stop":
        raise HdlmError(
            f"the loss is {loss} at step {step}; stopped without applying it or saving (the last "
            "checkpoint is intact): lower train.lr, check the data, or set train.on_nonfinite=skip"
        )
    if consecutive >= t.max_nonfinite:
        raise HdlmError(
            f"the loss is {loss} at step {step} ({consecutive} non-finite steps in a row, "
            f"train.max_nonfinite={t.max_nonfinite}); stopped: lower train.lr or check the data"
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


def init_weights(lm: LanguageModel, path: str) -> None:
    """Start from another checkpoint's weights (any family; same tokenizer and model shape),
    or from a local Hugging Face directory given as `hf:PATH` (`hdlm.model.hf`)."""
    if path.startswith("hf:"):
        from hdlm.model.hf import import_hf

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
    fresh = getattr(lm.net, "zero_init_prefixes", ("time_embed.",))
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


if __name__ == "__main__":  # torchrun --nproc_per_node N -m hdlm.train --config ... [--resume]
    from hdlm.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
