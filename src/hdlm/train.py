"""One training loop for every family: the family only supplies `objective.loss`.

AdamW with linear warmup and cosine decay, gradient accumulation and clipping, optional EMA of the
weights, mixed precision, periodic validation, a progress bar, metrics.jsonl (and TensorBoard),
and atomic checkpoints from which `--resume` continues exactly: batches and noise are functions
of (seed, step) only, so a resumed run sees what the uninterrupted one would have seen.

The loop reads in three parts: `setup` (data, model, optimizer, resume) -> `train_step` (one
optimisation step) -> `Housekeeping` (log, evaluate, checkpoint, signals). Under torchrun
(`hdlm.distributed`) the same loop runs on every rank, each on its slice of the global batch;
rank 0 alone logs and writes checkpoints. SIGTERM / SIGINT finish the current step, save a
checkpoint and stop (exit code 0 / 130); a non-finite loss stops the run before the optimizer
sees it, or skips that step (`train.on_nonfinite`). The helpers live in `hdlm.train_support`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hdlm import distributed
from hdlm.config import RunConfig, to_dict
from hdlm.data import Batches, Prefetcher, PreparedData, prepare_data
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import ConfigError, DataError
from hdlm.eval.perplexity import nelbo_term_sums
from hdlm.files import write_text_atomic
from hdlm.hardware import autocast, compile_network, pick_device, pick_precision
from hdlm.model import LanguageModel
from hdlm.model.checkpoint import resolve_checkpoint, save_checkpoint
from hdlm.model.hf import resolve_architecture
from hdlm.train_support import (
    EMA,
    StopSignal,
    check_data_position,
    check_disk_space,
    check_nonfinite,
    check_output_dir,
    init_weights,
    learning_rate,
    make_optimizer,
    open_loggers,
    restore,
    step_seed,
)

MAX_LOGGED_NATS = 50.0  # perplexity is logged as exp(min(loss, 50)): finite for a diverged run


@dataclass
class Run:
    """Everything one training run holds between steps (built by `setup`)."""

    config: RunConfig
    device: torch.device
    precision: str
    data: PreparedData
    lm: LanguageModel
    model_step: torch.nn.Module  # the loss as a module, under DDP / FSDP when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    batches: Batches
    next_batch: Prefetcher
    start_step: int

    @property
    def out(self) -> Path:
        return self.config.out_path

    @property
    def tokens_per_step(self) -> int:
        tc = self.config.train
        return tc.batch_size * tc.grad_accum * self.config.data.seq_len


def say(message: str) -> None:
    """Print above the progress bar, on rank 0 only."""
    if distributed.is_main():
        tqdm.write(message)


def train(
    config: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train `config` and return the run directory (its `latest` names the final checkpoint).

    `stop_after` ends the run after that step with a checkpoint, as if it had been interrupted
    there (for time-limited jobs and resume tests); `resume=True` continues it. Under torchrun
    every rank calls this; it joins the process group and leaves it at the end.
    """
    check_output_dir(config.out_path, resume)
    config = resolve_architecture(config)  # model.from_hf: a Hugging Face directory's shape
    device = distributed.init(pick_device(config.train.device))
    try:
        run = setup(config, device, resume, progress)
        loop(run, progress, stop_after)
        return run.out
    finally:
        distributed.shutdown()


def loop(run: Run, progress: bool, stop_after: int | None) -> None:
    """The training loop: a step, then the housekeeping of its end, until the last step."""
    steps = run.config.train.steps
    house = Housekeeping(run, progress)
    if run.start_step == 0:
        house.evaluate(0)  # the untrained baseline, so every curve starts at the same place
    with StopSignal() as stop:
        for step in range(run.start_step, steps):
            house.enter_stage(step)
            loss, signalled = train_step(run, step, stop)
            house.end_step(step + 1, loss, stopping=step + 1 == stop_after or signalled)
            if step + 1 == stop_after or signalled:
                break
    house.close(stop.received)


def setup(config: RunConfig, device: torch.device, resume: bool, progress: bool = True) -> Run:
    """Data, model, optimizer and, with `resume`, the state of the latest checkpoint
    (`progress`: the bar of a token store's preparation, on rank 0)."""
    tc = config.train
    precision = pick_precision(tc.precision, device)
    distributed.check_batch(tc.batch_size)
    resume_dir = resolve_checkpoint(config.out_path) if resume else None
    tokenizer = Tokenizer.load(resume_dir) if resume_dir else None
    with distributed.main_first():  # rank 0 prepares the token store; the others open it
        main = distributed.is_main()
        data = prepare_data(config.data, tokenizer, progress=main and progress, may_prepare=main)
    config = with_vocabulary(config, data.tokenizer)
    torch.manual_seed(config.seed)
    lm = LanguageModel(config, data.tokenizer).to(device)
    check_disk_space(config.out_path, lm.net.num_params(), tc.ema > 0, tc.keep_last)
    loss_module = distributed.LossModule(lm.net, lm.objective)
    model_step = distributed.wrap(loss_module, tc.parallel)
    optimizer = make_optimizer(lm.net, tc)
    ema = EMA(lm.net, tc.ema) if tc.ema > 0 else None
    start_step = 0
    if len(data.blocks["train"]) == 0:  # data.test_fraction=1 describes an evaluation corpus
        raise DataError("the train split is empty; lower data.val_fraction + data.test_fraction")
    batches = Batches(data.blocks["train"], tc.batch_size, config.seed)
    if resume_dir is not None:
        start_step = restore(resume_dir, config, lm, optimizer, ema)
        now = data_position(batches, data, start_step * tc.grad_accum)
        check_data_position(resume_dir, now)
        say(f"resuming from {resume_dir} at step {start_step}")
    elif tc.init_from:
        init_weights(lm, tc.init_from)
        if ema is not None:  # the average starts at the initial weights, not the random ones
            ema.copy_from(lm.net)
    if tc.compile:
        compile_network(lm.net, say)
    next_batch = Prefetcher(rank_batches(batches), start_step * tc.grad_accum,
                            pin=device.type == "cuda")  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run = Run(config, device, precision, data, lm, model_step, optimizer, scaler, ema,
              batches, next_batch, start_step)  # fmt: skip
    if distributed.is_main():
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    world = distributed.world_size()
    say(
        f"{config.name}: family={config.family} params={lm.net.num_params() / 1e6:.2f}M "
        f"device={device} precision={precision} train_blocks={batches.num_blocks} "
        f"tokens/step={run.tokens_per_step}"
        + (f" processes={world} ({tc.parallel})" if world > 1 else "")
    )
    return run


def rank_batches(batches: Batches):
    """Micro-batch i -> this rank's part of it (only its own blocks are read). With the
    environment variable HDLM_DATA_TRACE=DIR, each rank appends the block indices it reads to
    DIR/rank{r}.jsonl (to audit what each process saw)."""
    rank, world = distributed.rank(), distributed.world_size()
    trace = os.environ.get("HDLM_DATA_TRACE")

    def load(i: int) -> torch.Tensor:
        indices = batches.indices(i, rank, world)
        if trace:
            with open(Path(trace) / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps({"batch": i, "blocks": indices.tolist()}) + "\n")
        return batches.blocks[torch.from_numpy(indices)]

    return load


def data_position(batches: Batches, data: PreparedData, micro_batches: int) -> dict:
    """Where the data stands after `micro_batches` micro-batches: the store read, its train
    blocks, the seed of their order and the blocks consumed (batches are a function of (seed,
    index), so this is the whole position)."""
    consumed = micro_batches * batches.batch_size
    return {"store": data.store.fingerprint, "train_blocks": batches.num_blocks,
            "seed": batches.seed, "blocks_consumed": consumed}  # fmt: skip


def with_vocabulary(config: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """`config` with model.vocab_size set to the tokenizer's (a new config, not a mutation)."""
    if config.model.vocab_size not in (0, tokenizer.vocab_size):
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} but the tokenizer has "
            f"{tokenizer.vocab_size} ids; leave model.vocab_size at 0 to use the tokenizer's"
        )
    model = dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size)
    return dataclasses.replace(config, model=model)


def train_step(run: Run, step: int, stop: StopSignal) -> tuple[float, bool]:
    """One optimisation step (all micro-batches, then the update unless the loss is not
    finite). Returns the loss averaged over ranks and whether any rank has received a stop
    signal by the end of the step."""
    tc, device = run.config.train, run.device
    lr = learning_rate(step, tc)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    seed = step_seed(run.config.seed, step, distributed.rank())
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    step_loss = torch.zeros((), device=device)
    for micro in range(tc.grad_accum):
        tokens = run.next_batch(step * tc.grad_accum + micro).to(device, non_blocking=True)
        with distributed.no_sync(run.model_step, micro == tc.grad_accum - 1):
            with autocast(device, run.precision):
                loss = run.model_step(tokens, generator) / tc.grad_accum
            run.scaler.scale(loss).backward()
        step_loss += loss.detach()
    # one host sync per step: a bad loss must be caught before the optimizer applies it, and
    # every rank must agree on it and on a stop signal
    loss_sum, signalled = distributed.all_sum([step_loss.item(), float(stop.received)], device)
    loss_value = loss_sum / distributed.world_size()
    if math.isfinite(loss_value):
        if tc.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.lm.net.parameters(), tc.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.lm.net)
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, signalled > 0


class Housekeeping:
    """What happens around the steps: the progress bar, a log record every `log_every` steps
    (loss, learning rate, training tokens/s), validation every `eval_every`, a checkpoint every
    `save_every` (and at the end or on a stop), curriculum stage changes and skipped steps."""

    def __init__(self, run: Run, progress: bool):
        tc = run.config.train
        self.run, self.tc, self.main = run, tc, distributed.is_main()
        resume_step = run.start_step if run.start_step else None
        self.loggers = open_loggers(run.out, tc.tensorboard, resume_step)
        shown = progress and self.main
        self.bar = tqdm(total=tc.steps, initial=run.start_step, disable=not shown, unit="step",
                        dynamic_ncols=True)  # fmt: skip
        self.stage: str | None = None
        self.done = run.start_step
        self.skipped = self.consecutive_skips = 0
        self.window_start()

    def window_start(self) -> None:
        self.window_loss, self.window_finite, self.window_steps = 0.0, 0, 0
        self.started = time.perf_counter()

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.write(record)

    def enter_stage(self, step: int) -> None:
        """Follow the objective's curriculum (A3); say when a new stage begins."""
        stage = self.run.lm.objective.at_step(step)
        if stage is not None and stage != self.stage:
            self.stage = stage
            say(f"step {step}: stage {stage}")

    def end_step(self, done: int, loss: float, stopping: bool) -> None:
        """Account for step `done` (1-based), then log / evaluate / save when it is time."""
        self.done = done
        self.count(done, loss)
        if done % self.tc.log_every == 0 or done == self.tc.steps:
            self.write_window(done)
        self.bar.update(1)
        paused = time.perf_counter()
        if done % self.tc.eval_every == 0 or done == self.tc.steps:
            self.evaluate(done)
        if done % self.tc.save_every == 0 or done == self.tc.steps or stopping:
            self.save(done)
        self.started += time.perf_counter() - paused  # tokens/s counts training time only

    def count(self, done: int, loss: float) -> None:
        self.window_steps += 1
        if math.isfinite(loss):
            self.consecutive_skips = 0
            self.window_loss += loss
            self.window_finite += 1
            return
        self.skipped, self.consecutive_skips = self.skipped + 1, self.consecutive_skips + 1
        check_nonfinite(loss, done, self.tc, self.consecutive_skips)
        say(f"step {done}: loss is {loss}; optimizer step skipped ({self.skipped} so far)")

    def write_window(self, done: int) -> None:
        seconds = time.perf_counter() - self.started
        speed = self.window_steps * self.run.tokens_per_step / seconds
        lr = self.run.optimizer.param_groups[0]["lr"]
        record = {"step": done, "lr": lr, "tokens_per_s": speed}
        if self.window_finite:
            record["loss"] = self.window_loss / self.window_finite
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{speed:,.0f}")
        record.update({"stage": self.stage} if self.stage is not None else {})
        self.log({**record, "skipped_steps": self.skipped} if self.skipped else record)
        self.window_start()

    def evaluate(self, step: int) -> None:
        """Validation NELBO per token on the first `eval_batches` batches (EMA weights if any)."""
        run, tc, world = self.run, self.tc, distributed.world_size()
        blocks = run.data.blocks["validation"][: tc.eval_batches * tc.batch_size]
        blocks = blocks[: len(blocks) // world * world]  # equal shares: FSDP ranks run in step
        if len(blocks) == 0:  # data.val_fraction = 0
            return
        net = run.lm.net
        net.eval()
        with run.ema.applied(net) if run.ema is not None else contextlib.nullcontext():
            terms, tokens = nelbo_term_sums(
                run.lm, distributed.shard(blocks), tc.batch_size // world, run.precision
            )
        net.train()
        nats, tokens = distributed.all_sum([sum(terms.values()), tokens], run.device)
        val = nats / tokens
        ppl = math.exp(min(val, MAX_LOGGED_NATS))
        self.log({"step": step, "val_loss": val, "val_ppl": ppl})
        say(f"step {step}: validation loss {val:.4f} nats/token, perplexity {ppl:.2f}")

    def save(self, step: int) -> None:
        """An atomic checkpoint of step `step`; then keep the newest `keep_last`."""
        run = self.run
        net, ema = run.lm.net, run.ema
        weights = distributed.model_state(net)  # collectives under FSDP: every rank calls
        position = data_position(run.batches, run.data, step * self.tc.grad_accum)
        state = {"step": step, "optimizer": distributed.optimizer_state(net, run.optimizer),
                 "data": position}  # fmt: skip
        if ema is not None:
            state["raw_weights"], weights = weights, distributed.full_tensors(ema.shadow)
        if not self.main:
            return
        name = f"checkpoints/step_{step:07d}"
        save_checkpoint(run.out / name, weights, run.config, run.data.tokenizer, state)
        write_text_atomic(run.out / "latest", name + "\n")
        # older ones only: after a fall-back resume, damaged newer ones wait to be overwritten
        found = (run.out / "checkpoints").glob("step_*")
        kept = sorted(c for c in found if c.name <= Path(name).name)
        for old in kept[: -self.tc.keep_last]:
            shutil.rmtree(old)

    def close(self, signal_received: int) -> None:
        """Close the bar; after a signal, say how to continue (and re-raise Ctrl-C)."""
        self.bar.close()
        if signal_received:
            name = signal.Signals(signal_received).name
            say(
                f"{name}: stopped after step {self.done} and saved a checkpoint; "
                "continue with --resume"
            )
            if signal_received == signal.SIGINT:
                raise KeyboardInterrupt
