"""Benchmarks: training and sampling throughput of every family, side by side in one run.

Rows marked "llama: swiglu, gqa" use a Llama-shaped backbone (`llama_shape`) next to the default
GPT-2-shaped one (GELU MLP, one key/value head per query head).

Speed is never asserted in tests; these numbers are. Each measurement runs in a fresh child
process (so its peak memory is its own), cases are interleaved round by round (so machine noise
hits them alike) and the median is reported. Single-threaded CPU runs are timed by CPU time
(`hardware.clock`), which leaves out the time a shared machine gives to other jobs. Model FLOPs
utilisation is measured against the matmul peak that the same child process measures right
after its case, in the same precision and with the same clock. Results go to
results/bench/<kind>.json and <kind>.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import resource
import statistics
from pathlib import Path

import torch

from hdlm.config import RunConfig, TokenizerConfig, complete
from hdlm.data.tokenizer import build_tokenizer
from hdlm.hardware import autocast, clock, compile_network, matmul_flops, synchronize
from hdlm.model import LanguageModel, flex
from hdlm.model.a3 import A3Transformer
from hdlm.train import make_optimizer

TRAIN_FAMILIES = {
    "ar": {},
    "mdlm": {},
    "eps-hybrid": {},
    "gamma-hybrid": {},
    "block-diffusion": {"schedule": "block:16:16"},
    "slide": {"schedule": "slide:16:16"},
    "a3": {},
}
COMPILED = ("ar",)  # families also measured with train.compile (a row "<family> (compiled)")
LLAMA_SHAPED = ("ar", "a3")  # also measured with a Llama-shaped backbone (`llama_shape`)
CHECKPOINTED = ("ar", "a3")  # also measured with train.activation_checkpointing
FLEX_FAMILIES = ("block-diffusion", "a3")  # measured with model.attention=sdpa and =flex
# the row groups of `bench train`: each family as configured, and the variants above
TRAIN_VARIANTS = ("plain", "compiled", "llama", "checkpointing", "attention")


def llama_shape(size: dict) -> dict:
    """Llama's blocks at the bench size: SwiGLU with d_ff = 8/3 d_model rounded up to 64 (about
    the GELU MLP's parameters) and grouped-query attention, a quarter as many key/value heads."""
    return {"mlp": "swiglu", "d_ff": 64 * -(-8 * size["d_model"] // (3 * 64)),
            "n_kv_heads": max(1, size["n_heads"] // 4)}  # fmt: skip


# A3 decoding rows of `bench sample`: (order, tokens per step); every row decodes the full length
A3_VARIANTS = (("left-to-right", 1), ("left-to-right", 4), ("confidence", 1), ("confidence", 4))
A3_BENCH_OPTIONS = {"eos_stop": False}  # random weights: decode every position


def language_model(family: str, size: dict, seq_len: int, device, **diffusion):
    """A randomly initialised model of `family` (speed does not depend on the weights)."""
    config = RunConfig(family=family)
    config.data.seq_len = seq_len
    config.model = dataclasses.replace(config.model, max_len=max(seq_len, 1024), **size)
    # one character per id (+ UNK, EOS, MASK), skipping the surrogates (no text can hold them)
    points = itertools.chain(range(0x4E00, 0xD800), range(0xE000, 0x110000))
    symbols = [chr(p) for p in itertools.islice(points, size["vocab_size"] - 3)]
    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), symbols)
    config.diffusion = dataclasses.replace(config.diffusion, **diffusion)
    return LanguageModel(complete(config), tokenizer).to(device)


def peak_memory_mib(device: torch.device) -> float:
    """The CUDA allocator's peak on GPU; the process' maximum resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(device: torch.device, work, repeats: int = 1) -> float:
    """Seconds per call of `work()` after one warm-up call (`hardware.clock`)."""
    work()
    synchronize(device)
    now = clock(device)
    start = now()
    for _ in range(repeats):
        work()
    synchronize(device)
    return (now() - start) / repeats


def recorded_masks(net: torch.nn.Module) -> list[tuple[torch.Tensor, int]]:
    """A list that receives the first boolean attention mask (with its query count) that the
    network's passes hand to their attention kernel (`Transformer.kernel_mask`)."""
    seen, kernel_mask = [], net.kernel_mask

    def record(mask, q_len):
        if not seen and mask is not None and mask.dtype == torch.bool:
            seen.append((mask, q_len))
        return kernel_mask(mask, q_len)

    net.kernel_mask = record
    return seen


def train_case(case: dict) -> dict:
    """One training configuration timed: tokens/s, MFU, peak memory and the fraction of
    attention tiles FlexAttention skips under its mask. A case with `backward: False` times the
    training loss's forward pass only (FlexAttention has no backward pass on CPU)."""
    device = torch.device(case["device"])
    torch.set_num_threads(case["threads"])
    family, size, seq_len = case["family"], {**case["size"], **case["shape"]}, case["seq_len"]
    lm = language_model(family, size, seq_len, device, **TRAIN_FAMILIES[family])
    lm.net.set_checkpointing(case.get("checkpointing", False))
    masks = recorded_masks(lm.net)
    if case.get("compile"):
        compile_network(lm.net)
    optimizer = make_optimizer(lm.net, lm.config.train)
    shape = (case["batch"], seq_len)
    tokens = torch.randint(0, size["vocab_size"] - 3, shape, device=device)
    generator = torch.Generator(device).manual_seed(0)
    backward = case.get("backward", True)

    def step():
        with autocast(device, case["precision"]), torch.set_grad_enabled(backward):
            loss = lm.objective.loss(lm.net, tokens, generator)
        if backward:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    seconds = timed(device, step, case["steps"])
    peak = matmul_flops(case["precision"], device.type, 2048 if device.type == "cuda" else 1024)
    factor = PROCESSED.get(family, 1.0)
    flops = flops_per_token(lm.net.num_params(embeddings=False), size, int(seq_len * factor))
    flops *= 1 if backward else 1 / 3  # a forward pass is a third of a training step's FLOPs
    tokens_per_s = case["batch"] * seq_len / seconds
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops * factor / peak,
        "peak_flops": peak,
        "peak_mib": peak_memory_mib(device),
        "skipped": flex.skipped_fraction(flex.block_mask(*masks[0])) if masks else None,
    }


class NetworkTimer:
    """Time spent inside the network's forward calls (the trunk and a separate read-out head;
    A3's `two_stream`, its forward pass by another name), with the benchmark's clock; nested
    calls (the head inside a full forward) count once. On GPU every call boundary synchronises,
    so the share is of the synchronised run."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.seconds, self.depth, self.started = 0.0, 0, 0.0
        self.device, self.now, self.on = device, clock(device), False
        self.handles = [
            hook
            for module in (net, net.head)
            for hook in (
                module.register_forward_pre_hook(self.enter),
                module.register_forward_hook(self.leave),
            )
        ]
        if isinstance(net, A3Transformer):  # this instance's two_stream, timed like a forward
            net.two_stream = self.timed(net.two_stream)

    def timed(self, method):
        """`method` counted as a network call."""

        def call(*args, **kwargs):
            self.enter()
            try:
                return method(*args, **kwargs)
            finally:
                self.leave()

        return call

    def enter(self, *_) -> None:
        if self.on and self.depth == 0:
            synchronize(self.device)
            self.started = self.now()
        self.depth += 1

    def leave(self, *_) -> None:
        self.depth -= 1
        if self.on and self.depth == 0:
            synchronize(self.device)
            self.seconds += self.now() - self.started


def schedule_of(case: dict, length: int) -> str | None:
    """The case's schedule spec for `length` tokens: "{steps}" becomes the step count that
    generates `per_step` tokens per step (default 4) over the L - 1 positions after BOS."""
    steps = max(1, (length - 1) // case.get("per_step", 4))
    return case["schedule"] and case["schedule"].replace("{steps}", str(steps))


# how `bench sample` runs a sampler: (the weights' precision, autocast's precision)
SAMPLE_PRECISIONS = {"fp32": ("fp32", "fp32"), "bf16": ("bf16", "fp32"),
                     "fp16": ("fp16", "fp32"), "autocast-bf16": ("fp32", "bf16")}  # fmt: skip


def sample_case(case: dict) -> dict:
    """One sampler timed at one length: tokens/s, the network's share of the time, peak memory.
    `case["precision"]` is a key of `SAMPLE_PRECISIONS`: bf16 casts the weights once
    (`LanguageModel.cast`), autocast-bf16 keeps float32 weights under autocast."""
    device = torch.device(case["device"])
    torch.set_num_threads(case["threads"])
    shape = case.get("shape", {})
    lm = language_model(case["family"], {**case["size"], **shape}, case["length"], device).eval()
    weights, autocast_precision = SAMPLE_PRECISIONS[case["precision"]]
    lm.cast(weights)
    options = {"sampler": case["sampler"], "seed": 0}
    if not case["cache"]:
        options["use_cache"] = False  # (τ-leaping has no cache to switch off)
    options |= case.get("options", {})
    lengths = iter((32, case["length"]))  # warm up on a short sample, then time the real one
    timer = NetworkTimer(lm.net, device)

    def work():
        length = next(lengths)
        timer.on = length == case["length"]
        with autocast(device, autocast_precision):
            lm.sample(case["n"], length, schedule=schedule_of(case, length), **options)

    seconds = timed(device, work)
    return {
        "tokens_per_s": case["n"] * (case["length"] - 1) / seconds,
        "network_share": timer.seconds / seconds,
        "peak_mib": peak_memory_mib(device),
    }


def run_isolated(function, case: dict) -> dict:
    """Run one measurement in a fresh process so that its peak memory is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, (case,))


def interleaved(function, cases: list[dict], rounds: int, progress) -> list[dict]:
    """Measure every case `rounds` times, round-robin; keep the medians (each round's speed in
    `runs`, to show the noise) and the largest memory."""
    runs = [[] for _ in cases]
    for r in range(rounds):
        for case, results in zip(cases, runs, strict=True):
            progress(f"round {r + 1}/{rounds}: {case['label']}")
            results.append(run_isolated(function, case))
    rows = []
    for case, results in zip(cases, runs, strict=True):
        row = {**case, "runs": [x["tokens_per_s"] for x in results]}
        for key in results[0]:
            known = [x[key] for x in results if x[key] is not None]
            row[key] = statistics.median(known) if known else None
        row["peak_mib"] = max(x["peak_mib"] for x in results)
        rows.append(row)
    return rows


def flops_per_token(params: int, size: dict, length: int) -> float:
    """Training FLOPs per processed token: 6 N for the matmuls plus 12 n_layers d_model length
    for attention scores and values (PaLM / nanoGPT's estimate)."""
    return 6 * params + 12 * size["n_layers"] * size["d_model"] * length


# tokens the network processes per training token, relative to a plain [BOS ; x] pass
PROCESSED = {"block-diffusion": 2.0, "a3": 2.0}


def train_cases(common: dict, families, variants) -> list[dict]:
    """The cases of `bench train` for `families` (default all) and `variants` (default
    `TRAIN_VARIANTS`): plain rows, compiled, Llama-shaped, with activation checkpointing, and
    SDPA next to FlexAttention (forward passes only on CPU, where flex has no backward)."""
    families = [f for f in TRAIN_FAMILIES if families is None or f in families]
    variants = TRAIN_VARIANTS if variants is None else variants
    cases = []
    if "plain" in variants:
        cases += [{**common, "label": family, "family": family} for family in families]
    if "compiled" in variants:
        cases += [{**common, "label": f"{family} (compiled)", "family": family, "compile": True}
                  for family in COMPILED if family in families]  # fmt: skip
    if "llama" in variants:
        cases += [{**common, "label": f"{family} (llama: swiglu, gqa)", "family": family,
                   "shape": llama_shape(size=common["size"])}
                  for family in LLAMA_SHAPED if family in families]  # fmt: skip
    if "checkpointing" in variants:
        cases += [{**common, "label": f"{family} (activation checkpointing)", "family": family,
                   "checkpointing": True}
                  for family in CHECKPOINTED if family in families]  # fmt: skip
    if "attention" in variants:
        backward = common["device"].startswith("cuda")
        cases += [{**common, "family": family, "shape": {"attention": kernel},
                   "backward": backward, "label": f"{family} ({kernel}"
                   + (")" if backward else ", forward only)")}
                  for family in FLEX_FAMILIES if family in families
                  for kernel in ("sdpa", "flex")]  # fmt: skip
    return cases


def bench_train(
    size, seq_len, batch, steps, rounds, device, precision, progress, families=None, variants=None
) -> dict:
    """`train_cases` measured round-robin (`interleaved`), each row's speed also relative to
    the plain ar row when there is one."""
    common = {
        "size": size,
        "seq_len": seq_len,
        "batch": batch,
        "steps": steps,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "shape": {},
    }
    rows = interleaved(train_case, train_cases(common, families, variants), rounds, progress)
    ar_speed = next((r["tokens_per_s"] for r in rows if r["label"] == "ar"), None)
    for row in rows:
        row["vs_ar"] = row["tokens_per_s"] / ar_speed if ar_speed else None
    timer = {"process_time": "process CPU time"}.get(clock(device).__name__, "wall clock")
    peak = statistics.median(r["peak_flops"] for r in rows)
    return {"peak_flops": peak, "clock": timer, "rows": rows}


# (label, family, sampler, schedule, KV cache, tokens/step, backbone shape, sampler options)
SAMPLE_VARIANTS = [
    ("ar (KV cache)", "ar", "ar", None, True, 1, {}, {}),
    *[
        (f"block:16:{k} ({16 // k} tok/step, {'cache' if cache else 'no cache'})",
         "block-diffusion", "ancestral", f"block:16:{k}", cache, 16 // k, {}, {})
        for k in (4, 16) for cache in (True, False)
    ],
    *[
        (f"flat ancestral, mdlm ({k} tok/step)", "mdlm", "ancestral", "flat:{steps}", True, k,
         {}, {})
        for k in (1, 4)
    ],
    ("flat acs, eps-hybrid (4 tok/step)", "eps-hybrid", "acs", "flat:{steps}", True, 4, {}, {}),
    ("flat tweedie, gamma-hybrid (4 tok/step)", "gamma-hybrid", "tweedie", "flat:{steps}", True,
     4, {}, {}),
    ("ar (KV cache, llama: swiglu, gqa)", "ar", "ar", None, True, 1, "llama", {}),
    ("block:16:4 (4 tok/step, cache, llama: swiglu, gqa)", "block-diffusion", "ancestral",
     "block:16:4", True, 4, "llama", {}),
    *[
        (f"a3 {order} ({k} tok/step, cache)", "a3", "a3", None, True, k, {},
         {"order": order, "group_size": k, **A3_BENCH_OPTIONS})
        for order, k in A3_VARIANTS
    ],
]  # fmt: skip


def bench_sample(size, lengths, batches, rounds, device, precisions, progress) -> dict:
    """Every `SAMPLE_VARIANTS` row at every length, batch size (sequences per call) and precision
    (`SAMPLE_PRECISIONS`), with its speed relative to the AR row of the same length, batch and
    precision (`vs_ar`) and to the same row in the first precision (`vs_first_precision`)."""
    cases = [
        {"label": f"{name} L={length} n={n}" + (f" [{precision}]" if len(precisions) > 1 else ""),
         "name": name, "family": family, "sampler": sampler, "schedule": schedule,
         "cache": cache, "per_step": per_step, "length": length, "size": size, "n": n,
         "device": str(device), "precision": precision, "threads": torch.get_num_threads(),
         "shape": llama_shape(size) if shape == "llama" else shape, "options": options}
        for length in lengths
        for n in batches
        for name, family, sampler, schedule, cache, per_step, shape, options in SAMPLE_VARIANTS
        for precision in precisions
    ]  # fmt: skip
    rows = interleaved(sample_case, cases, rounds, progress)

    def twin(row: dict, name: str, precision: str) -> dict:
        return next(r for r in rows if (r["name"], r["precision"], r["length"], r["n"])
                    == (name, precision, row["length"], row["n"]))  # fmt: skip

    for row in rows:
        ar = twin(row, "ar (KV cache)", row["precision"])
        row["vs_ar"] = row["tokens_per_s"] / ar["tokens_per_s"]
        first = twin(row, row["name"], precisions[0])
        row["vs_first_precision"] = row["tokens_per_s"] / first["tokens_per_s"]
    return {"rows": rows, "precisions": list(precisions)}


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_results(kind: str, result: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}.json").write_text(json.dumps(result, indent=2, default=str))
    if kind == "train":
        header = ("| family | tokens/s | vs ar | MFU | peak MiB | tiles flex skips |\n"
                  + "|---" * 6 + "|\n")  # fmt: skip
        lines = [
            f"| {r['label']} | {r['tokens_per_s']:,.0f} | {ratio(r['vs_ar'])} | "
            f"{r['mfu']:.1%} | {r['peak_mib']:,.0f} | "
            + (f"{r['skipped']:.0%} |" if r.get("skipped") is not None else "– |")
            for r in result["rows"]
        ]
        footer = (
            f"\nmeasured matmul peak (median over the cases): "
            f"{result['peak_flops'] / 1e9:,.0f} GFLOP/s; time: {result['clock']}\n"
        )
    else:
        first = result.get("precisions", ["fp32"])[0]
        header = (f"| sampler | tokens/s | vs ar | vs {first} | network share | peak MiB |\n"
                  + "|---" * 6 + "|\n")  # fmt: skip
        lines = [
            f"| {r['label']} | {r['tokens_per_s']:,.1f} | {r['vs_ar']:.2f} | "
            f"{ratio(r.get('vs_first_precision'))} | {r['network_share']:.0%} | "
            f"{r['peak_mib']:,.0f} |"
            for r in result["rows"]
        ]
        footer = ""
    table = header + "\n".join(lines) + "\n" + footer
    (out / f"{kind}.md").write_text(table)
    return table
