"""The one-command GPU check (`scripts/gpu-check.sh`): what the GPU configs' computed figures
need measured, in at most 8 minutes on one H100.

* training tokens/s, MFU against the device's bf16 peak (spec sheet) and peak memory of every
  family at GPT-2-small size (12 x 768, seq 1024), with and without activation checkpointing;
* FlexAttention against SDPA for block diffusion and A3: same loss and gradients, speed, and the
  fraction of attention tiles the block mask skips;
* sampling tokens/s of every sampler row of `hdlm bench sample` at L = 1024 (bf16 weights), and
  bf16 weights against float32 weights under autocast for two of them;
* one training step of A3 on a Llama-3.2-1B-shaped backbone, next to scripts/estimate-gpu.py.

Sections run in that order in this process; a section that would start after `--budget-s` is
listed as not run. The report goes to <out>/<device>.md. `--dry-run` runs every section at tiny
sizes on CPU (tests/test_gpu_check.py runs it, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import re
import time
from pathlib import Path

import torch

from hdlm.experiments import bench
from hdlm.hardware import DTYPES, autocast
from hdlm.model.hf_arch import llama_model_config

GPT2_SMALL = {"vocab_size": 50304, "n_layers": 12, "d_model": 768, "n_heads": 12}
TINY = {"vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 2}
# Llama's vocabulary at a tiny width: the dry run builds a 128k-id model and tokenizer too
TINY_LLAMA = {"vocab_size": 128256, "n_layers": 1, "d_model": 64, "n_heads": 4, "n_kv_heads": 1,
              "d_ff": 128, "mlp": "swiglu"}  # fmt: skip
# dense bf16 tensor-core peaks from the vendors' spec sheets (FLOP/s), by device name
BF16_PEAKS = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
              "A100": 312e12, "L40S": 362e12, "A10G": 70e12}  # fmt: skip
ESTIMATE = Path(__file__).with_name("estimate-gpu.py")


@dataclasses.dataclass
class Plan:
    """Sizes and settings of one check: the GPU's, or tiny ones on CPU (`--dry-run`)."""

    device: torch.device
    precision: str
    size: dict
    seq_len: int
    batch: int
    steps: int
    sample_length: int
    sample_n: int
    llama: dict
    llama_batch: int

    @classmethod
    def for_run(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(torch.device("cpu"), "fp32", TINY, 32, 2, 1, 40, 1, TINY_LLAMA, 1)
        device = torch.device("cuda")
        return cls(device, "bf16", GPT2_SMALL, 1024, 8, 5, 1024, 8, llama_1b(), 4)


def llama_1b() -> dict:
    """The backbone fields of Llama-3.2-1B (scripts/estimate-gpu.py's copy of its config.json)."""
    config = llama_model_config(estimate_module().PARENTS["Llama-3.2-1B"], "Llama-3.2-1B")
    fields = [f.name for f in dataclasses.fields(config) if f.name not in ("max_len",)]
    return {name: getattr(config, name) for name in fields}


def estimate_module():
    """scripts/estimate-gpu.py as a module (its name has a hyphen)."""
    spec = importlib.util.spec_from_file_location("estimate_gpu", ESTIMATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "dry-run-cpu"


def bf16_peak(device: torch.device) -> float | None:
    """The spec-sheet bf16 peak of this GPU (None: unknown, or CPU)."""
    name = device_name(device)
    return next((peak for key, peak in BF16_PEAKS.items() if key in name), None)


def fresh(device: torch.device) -> None:
    """Free what the last case left and restart the peak-memory counter."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def common_case(plan: Plan, size: dict, batch: int) -> dict:
    return {"size": size, "seq_len": plan.seq_len, "batch": batch, "steps": plan.steps,
            "device": str(plan.device), "precision": plan.precision, "threads":
            torch.get_num_threads(), "shape": {}}  # fmt: skip


def train_rows(plan: Plan, cases: list[dict]) -> tuple[list[str], list[dict]]:
    """(markdown rows, results) of the training cases: tokens/s, MFU (spec peak, else the
    measured matmul peak), peak memory and the tiles FlexAttention skips."""
    peak = bf16_peak(plan.device)
    rows, results = [], []
    for case in cases:
        fresh(plan.device)
        r = bench.train_case(case)
        mfu = r["mfu"] * r["peak_flops"] / peak if peak else r["mfu"]
        skipped = "–" if r["skipped"] is None else f"{r['skipped']:.0%}"
        rows.append(f"| {case['label']} | {r['tokens_per_s']:,.0f} | {mfu:.1%} | "
                    f"{r['peak_mib']:,.0f} | {skipped} |")  # fmt: skip
        results.append(r)
    return rows, results


TRAIN_HEADER = "| case | tokens/s | MFU | peak MiB | tiles flex skips |\n|---|---|---|---|---|"


def training_section(plan: Plan) -> str:
    common = common_case(plan, plan.size, plan.batch)
    variants = ("plain", "checkpointing", "attention")
    rows, _ = train_rows(plan, bench.train_cases(common, None, variants))
    where = "spec-sheet bf16 peak" if bf16_peak(plan.device) else "measured matmul peak"
    return f"MFU against the {where}.\n\n{TRAIN_HEADER}\n" + "\n".join(rows)


def flex_identity_section(plan: Plan) -> str:
    """Loss (and, on a GPU, gradients) of block diffusion and A3 with flex against SDPA."""
    lines = ["| family | loss sdpa | loss flex | max grad difference |", "|---|---|---|---|"]
    for family in bench.FLEX_FAMILIES:
        fresh(plan.device)
        lm = bench.language_model(family, plan.size, plan.seq_len, plan.device,
                                  **bench.TRAIN_FAMILIES[family])  # fmt: skip
        results = []
        for kernel in ("sdpa", "flex"):  # the same weights through both kernels
            lm.net.config.attention = kernel
            lm.net.zero_grad(set_to_none=True)
            results.append(loss_and_grads(lm, plan))
        (loss, grads), (flex_loss, flex_grads) = results
        differences = [(a - b).abs().max().item() for a, b in zip(grads, flex_grads, strict=True)]
        shown = f"{max(differences):.2e}" if grads else "– (no flex backward on CPU)"
        lines.append(f"| {family} | {loss:.6f} | {flex_loss:.6f} | {shown} |")
    return "\n".join(lines)


def loss_and_grads(lm, plan: Plan) -> tuple[float, list[torch.Tensor]]:
    """The training loss of fixed tokens and, on a GPU, the weights' gradients."""
    torch.manual_seed(0)
    tokens = torch.randint(0, plan.size["vocab_size"] - 3, (2, plan.seq_len), device=plan.device)
    backward = plan.device.type == "cuda"
    with autocast(plan.device, plan.precision), torch.set_grad_enabled(backward):
        loss = lm.objective.loss(lm.net, tokens, torch.Generator(plan.device).manual_seed(0))
    if not backward:
        return loss.item(), []
    loss.backward()
    return loss.item(), [p.grad.float() for p in lm.net.parameters() if p.grad is not None]


def sampling_section(plan: Plan) -> str:
    """Every `bench.SAMPLE_VARIANTS` row at L = `sample_length` with bf16 weights (fp32 on the
    CPU dry run), then the first two rows with float32 weights under autocast."""
    weights = "bf16" if plan.device.type == "cuda" else "fp32"
    cases = [
        {"label": name, "family": family, "sampler": sampler, "schedule": schedule,
         "cache": cache, "per_step": per_step, "length": plan.sample_length,
         "size": plan.size, "n": plan.sample_n, "device": str(plan.device),
         "precision": weights, "threads": torch.get_num_threads(), "options": options,
         "shape": bench.llama_shape(plan.size) if shape == "llama" else shape}
        for name, family, sampler, schedule, cache, per_step, shape, options
        in bench.SAMPLE_VARIANTS
    ]  # fmt: skip
    autocast = "autocast-bf16" if plan.device.type == "cuda" else "fp32"
    cases += [{**c, "label": f"{c['label']} [{autocast}]", "precision": autocast}
              for c in cases[:2]]  # fmt: skip
    lines = [f"Weights in {weights}; {plan.sample_n} sequences of L = {plan.sample_length}.", "",
             "| sampler | tokens/s | network share | peak MiB |", "|---|---|---|---|"]  # fmt: skip
    for case in cases:
        fresh(plan.device)
        r = bench.sample_case(case)
        lines.append(f"| {case['label']} | {r['tokens_per_s']:,.1f} | "
                     f"{r['network_share']:.0%} | {r['peak_mib']:,.0f} |")  # fmt: skip
    return "\n".join(lines)


def llama_section(plan: Plan) -> str:
    """One A3 training step on the Llama-3.2-1B shape (tiny on CPU), with and without
    activation checkpointing, next to scripts/estimate-gpu.py's computed figures."""
    common = common_case(plan, plan.llama, plan.llama_batch)
    cases = [{**common, "label": "a3, Llama-3.2-1B shape", "family": "a3"},
             {**common, "label": "a3, Llama-3.2-1B shape (activation checkpointing)",
              "family": "a3", "checkpointing": True}]  # fmt: skip
    rows, (plain, _) = train_rows(plan, cases)
    e = estimate_module().estimate("Llama-3.2-1B", "a3", 4, 1024)
    mib = (e["states_gib"] + e["activations_gib"]) * 1024
    note = (
        f"scripts/estimate-gpu.py (4 x 1024, no checkpointing): {e['tokens_per_s']:,.0f} "
        f"tokens/s at 40% MFU of an H100 SXM and {mib:,.0f} MiB; measured / estimated: "
        f"{plain['tokens_per_s'] / e['tokens_per_s']:.2f} for tokens/s, "
        f"{plain['peak_mib'] / mib:.2f} for memory"
        + (" (the dry run's tiny model: meaningless)." if plan.device.type == "cpu" else ".")
    )
    return (
        f"{plan.llama_batch} x {plan.seq_len} tokens per step.\n\n{TRAIN_HEADER}\n"
        + "\n".join(rows)
        + f"\n\n{note}"
    )


SECTIONS = {
    "Training, every family": training_section,
    "FlexAttention against SDPA: loss and gradients": flex_identity_section,
    "Sampling, every sampler": sampling_section,
    "A3 on a Llama-3.2-1B-shaped backbone": llama_section,
}


def run(dry_run: bool, out: Path, budget_s: float) -> Path:
    """Run every section within `budget_s` seconds and write the report; returns its path."""
    plan = Plan.for_run(dry_run)
    start, name = time.perf_counter(), device_name(plan.device)
    parts = [f"# GPU check: {name}\n", f"torch {torch.__version__}; precision {plan.precision} "
             f"({DTYPES[plan.precision]}); model {plan.size}, seq {plan.seq_len}, batch "
             f"{plan.batch}.\n"]  # fmt: skip
    for title, section in SECTIONS.items():
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            parts.append(f"## {title}\n\nnot run: the budget of {budget_s:.0f} s was spent.\n")
            continue
        print(f"[{elapsed:6.0f} s] {title}", flush=True)
        parts.append(f"## {title}\n\n{section(plan)}\n")
    parts.append(f"Total: {time.perf_counter() - start:.0f} s.\n")
    out.mkdir(parents=True, exist_ok=True)
    path = out / (re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") + ".md")
    path.write_text("\n".join(parts))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--out", default="results/gpu", help="report folder (results/gpu)")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="start no section after this many seconds (450)")  # fmt: skip
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible; use --dry-run to check the script on CPU")
    print(f"wrote {run(args.dry_run, Path(args.out), args.budget_s)}")


if __name__ == "__main__":
    main()
