"""The `hdlm` command line: train | sample | eval | bench | study | export | import | plot.

Every user mistake surfaces as one line `hdlm: error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hdlm.errors import HdlmError


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.n_layers=4 (repeatable)",
    )


def cmd_train(args: argparse.Namespace) -> None:
    from hdlm.config import load_config
    from hdlm.train import train

    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    config = load_config(args.config, overrides)  # checked once here, before any launch
    if args.nproc > 1:
        from hdlm.distributed import launch

        flags = ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
        launch(args.nproc, ["--config", args.config, *flags,
                            *(f"--set={o}" for o in overrides)])  # fmt: skip
    out = train(config, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks
        print(f"saved to {out} (hdlm sample {out} / hdlm eval {out})")


def _load(args: argparse.Namespace):
    import hdlm

    return hdlm.load(args.checkpoint, device=args.device)


def _add_sampler_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How `hdlm sample` and `hdlm eval` draw tokens; returns the A3 group for more options.

    Sampler-specific options default to None (not given): `hdlm.sampling.options` says which
    sampler uses which, and refuses the ones the loaded model's sampler does not use."""
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default 1; 0 for eval --metrics infill)",
    )
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sampler",
        default=None,
        help="ar | ancestral | acs | remask | tweedie | euler | a3 (default: the family's own)",
    )
    p.add_argument("--schedule", default=None, help="hyperschedule to walk, e.g. block:16:4")
    p.add_argument("--steps", type=int, default=None, help="steps of a flat schedule (128)")
    p.add_argument("--eta", type=float, default=None, help="acs re-draw / remask strength")
    p.add_argument(
        "--no-cache", action="store_true", default=None, help="recompute everything each step"
    )
    a3 = p.add_argument_group("A3 decoding (a3 checkpoints)")
    a3.add_argument(
        "--order",
        default=None,
        help="left-to-right (default) | random | confidence | entropy (the last two: commit "
        "the positions whose sampled distribution is surest)",
    )
    a3.add_argument(
        "--group-size", type=int, default=None, help="tokens committed per step (default 1)"
    )
    a3.add_argument(
        "--groups",
        default=None,
        help="explicit order instead of --order: groups of positions (BOS = 0) in decoding "
        "order, e.g. '1-3,4-7,8+10,9' (',' between groups, '+' within, A-B ranges), or @FILE",
    )
    a3.add_argument(
        "--no-eos-stop",
        action="store_true",
        default=None,
        help="keep decoding after EOS (default: a row ends at its first generated EOS)",
    )
    return a3


def _sampler_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `LanguageModel.sample` that `_add_sampler_options` defines and
    the user gave (the others keep the sampler's defaults)."""
    from hdlm.sampling.a3_groups import parse_groups

    names = ["sampler", "temperature", "top_k", "top_p", "steps", "schedule", "eta", "order",
             "group_size"]  # fmt: skip
    options = {name: getattr(args, name) for name in names}
    options |= {
        "use_cache": False if args.no_cache else None,
        "groups": parse_groups(args.groups) if args.groups is not None else None,
        "eos_stop": False if args.no_eos_stop else None,
    }
    return {name: value for name, value in options.items() if value is not None}


def cmd_sample(args: argparse.Namespace) -> None:
    from hdlm.sampling.trace import Trace

    lm = _load(args)
    trace = Trace() if args.trace else None
    if args.trace:
        _check_trace_path(args.trace)
    tokens = lm.sample(
        args.num_samples,
        args.length,
        prompt=args.prompt,
        seed=args.seed,
        infill=args.infill,
        blank_max=args.blank_max,
        trace=trace,
        **_sampler_options(args),
    )
    for i, text in enumerate(lm.decode(tokens)):
        print(f"=== sample {i} ===\n{text}")
    if args.trace:
        from hdlm.sampling.trace import write_trace

        print(f"wrote {write_trace(trace, lm.tokenizer, args.trace)}")


def _check_trace_path(path: str) -> None:
    """Refuse a --trace file we cannot write before sampling, not after."""
    from hdlm.sampling.trace import SUFFIXES

    if Path(path).suffix not in SUFFIXES:
        raise HdlmError(f"--trace {path}: use a {', '.join(SUFFIXES)} file")


def cmd_eval(args: argparse.Namespace) -> None:
    from hdlm.config import apply_overrides, from_dict, to_dict
    from hdlm.data import prepare_data
    from hdlm.errors import DataError
    from hdlm.evaluate import (
        SAMPLE_METRICS,
        infill_metrics,
        load_reference,
        middle_span,
        perplexity,
        sample_metrics,
    )

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for metric in metrics:
        if metric not in ("ppl", "infill", *SAMPLE_METRICS):
            raise HdlmError(
                f"unknown metric '{metric}'; choose from ppl, infill, {', '.join(SAMPLE_METRICS)}"
            )
    sampling = _sampler_options(args)
    if sampling and not {"infill", *SAMPLE_METRICS} & set(metrics):
        from hdlm.sampling.options import flag

        raise HdlmError(
            f"{flag(next(iter(sampling)))} changes how samples are drawn, but --metrics "
            f"{args.metrics} draws none (infill, {', '.join(SAMPLE_METRICS)} do)"
        )
    lm = _load(args)
    if lm.config.family == "a3":  # `--set a3.eval_order=random` etc. change the evaluation
        from hdlm.a3 import apply_eval_overrides

        args.overrides = apply_eval_overrides(lm, args.overrides)
    overrides = [o.removeprefix("data.") for o in args.overrides]
    overrides += [f"corpus={args.data}"] if args.data else []
    data_config = from_dict(
        type(lm.config.data), apply_overrides(to_dict(lm.config.data), overrides)
    )
    result = {"checkpoint": str(args.checkpoint), "family": lm.config.family}
    if {"ppl", "mauve", "infill"} & set(metrics):
        data = prepare_data(data_config, lm.tokenizer)
        blocks = data.blocks.get(args.split, [])
        if len(blocks) == 0:
            raise DataError(
                f"split '{args.split}' is empty; choose one of {', '.join(data.blocks)}"
            )
        result.update(corpus=data_config.corpus, split=args.split)
    if "ppl" in metrics:
        result.update(perplexity(lm, blocks, args.batch_size, max_blocks=args.max_blocks))
        result.update(entropy_floor=data.entropy_floor)
    if "infill" in metrics:  # the middle --infill-span tokens of --infill-length-token blocks
        held_out = blocks[: args.max_blocks]
        tokens, hidden = middle_span(held_out, args.infill_length, args.infill_span)
        result["infill"] = infill_metrics(
            lm, tokens, hidden, args.batch_size, seed=args.seed, **sampling
        )
    sampled = [m for m in metrics if m in SAMPLE_METRICS]
    if sampled:
        length = args.length or data_config.seq_len
        references = []
        if "mauve" in sampled:  # held-out blocks of the sample length, BOS dropped
            if length > blocks.shape[1]:
                raise DataError(
                    f"--length {length} is longer than the corpus blocks ({blocks.shape[1]}); "
                    f"add --set data.seq_len={length} or lower --length"
                )
            references = lm.decode(blocks[: args.samples, :length])
        reference = load_reference(args.reference, args.device) if args.reference else None
        options = sampling | {"batch_size": args.batch_size, "seed": args.seed}
        result.update(
            sample_metrics(lm, args.samples, length, references, reference, sampled, **options)
        )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from hdlm import bench
    from hdlm.hardware import pick_device, pick_precision

    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    size = {"vocab_size": args.vocab, "n_layers": args.layers, "d_model": args.d_model,
            "n_heads": args.heads}  # fmt: skip
    common = {"rounds": args.rounds, "device": device, "precision": precision}
    common["progress"] = tqdm.write
    if args.kind == "train":
        result = bench.bench_train(size, args.seq_len, args.batch, args.steps, **common)
    else:
        result = bench.bench_sample(size, args.lengths, args.batch, **common)
    result.update(device=str(device), precision=precision, size=size)
    print(bench.write_results(args.kind, result, Path(args.out)))


def cmd_export(args: argparse.Namespace) -> None:
    from hdlm.model.hf import export

    out, kind = export(args.checkpoint, args.out)
    how = {
        "gpt2": "a GPT2LMHeadModel: transformers.AutoModelForCausalLM.from_pretrained",
        "hdlm": "not a stock transformers architecture (model_type hdlm): hdlm.load",
    }[kind]
    print(f"wrote {out}, {how}({str(out)!r})")


def cmd_import(args: argparse.Namespace) -> None:
    from hdlm.model.checkpoint import save_checkpoint
    from hdlm.model.hf import import_run_config

    config, weights, tokenizer = import_run_config(args.path)
    out = save_checkpoint(args.out, weights, config, tokenizer)
    print(f"wrote {out} (hdlm sample {out}; train.init_from={out} with data.tokenizer.path={out})")


def cmd_study(args: argparse.Namespace) -> None:
    from hdlm.study import run_study

    only = args.only.split(",") if args.only else None
    out = run_study(args.config, only=only, progress=not args.no_progress)
    print(f"study written to {out}")


def cmd_plot_schedule(args: argparse.Namespace) -> None:
    from hdlm.schedules import from_spec, plot_schedule

    path = plot_schedule(from_spec(args.spec, args.length), args.out)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdlm",
        description="Train, sample and evaluate AR, diffusion, hybrid (HDLM) and A3 models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/ar-tiny.yaml")
    p.add_argument("--out", help="run directory (default: the config's out_dir)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine (runs torchrun; train.batch_size stays "
        "the global batch). SIGTERM saves and exits 0, Ctrl-C saves and exits 130",
    )
    _add_set(p)
    p.set_defaults(func=cmd_train)

    def add_checkpoint(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="a run directory or a checkpoint directory")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")

    p = commands.add_parser("sample", help="generate text from a checkpoint")
    add_checkpoint(p)
    p.add_argument("--prompt", default=None, help="text the samples continue")
    p.add_argument("-n", "--num-samples", type=int, default=2)
    p.add_argument("--length", type=int, default=None, help="tokens per sample incl. the prompt")
    p.add_argument(
        "--trace",
        default=None,
        help="draw what each step did (denoising, or the group A3 committed) to .html/.png/.svg",
    )
    a3 = _add_sampler_options(p)
    a3.add_argument(
        "--infill",
        default=None,
        help="text with blanks to fill: ___ = free length (1..--blank-max), ___[N] = N tokens",
    )
    a3.add_argument(
        "--blank-max", type=int, default=None, help="longest free-length blank (default 8)"
    )
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser(
        "eval", help="perplexity (NELBO) on a corpus and the quality of samples (docs/metrics.md)"
    )
    add_checkpoint(p)
    p.epilog = (
        "--set overrides the checkpoint's data section, e.g. --set data.seq_len=256, and for "
        "a3 checkpoints the evaluation order, e.g. --set a3.eval_order=random"
    )
    p.add_argument("--data", default=None, help="corpus (default: the one it was trained on)")
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-blocks", type=int, default=None, help="evaluate at most this many blocks")
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument(
        "--metrics",
        default="ppl",
        help="comma-separated: ppl (held-out NELBO), infill (held-out middle spans: span NLL, "
        "greedy accuracy), and on samples gen-ppl, mauve (against held-out blocks of --split), "
        "entropy, distinct (default ppl)",
    )
    p.add_argument("--infill-length", type=int, default=64, help="infill: block tokens used")
    p.add_argument("--infill-span", type=int, default=8, help="infill: hidden middle tokens")
    p.add_argument("--samples", type=int, default=64, help="samples to draw (default 64)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample incl. BOS")
    p.add_argument(
        "--reference", default=None, help="gen-ppl scorer: an ar run, or a Hugging Face model dir"
    )
    _add_sampler_options(p)
    _add_set(p)
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("bench", help="throughput and memory of every family, side by side")
    p.add_argument("kind", choices=["train", "sample"])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--d-model", type=int, default=512, help="model width (default 512)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256, help="train: tokens per sequence")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024], help="sample lengths")
    p.add_argument("--batch", type=int, default=16, help="sequences per step / samples")
    p.add_argument("--steps", type=int, default=3, help="train: timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument("--out", default="results/bench", help="where the JSON and markdown go")
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("export", help="write a checkpoint as a Hugging Face directory")
    p.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    p.add_argument("out", help="directory for config.json, model.safetensors and tokenizer files")
    p.epilog = (
        "ar models with model.position=learned, norm=layernorm, bias=true are written as "
        "GPT2LMHeadModel; other models as hdlm checkpoints (model_type hdlm) for hdlm.load"
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("import", help="turn a local GPT-2 directory into an hdlm checkpoint")
    p.add_argument("path", help="GPT2LMHeadModel directory: config.json, weights, tokenizer.json")
    p.add_argument("out", help="checkpoint directory to write")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser(
        "study", help="train every family at one budget, evaluate all, write table and plots"
    )
    p.add_argument("--config", required=True, help="study YAML, e.g. configs/study-tiny.yaml")
    p.add_argument("--only", default=None, help="comma-separated families (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)

    p = commands.add_parser("plot", help="draw what a model or schedule does")
    plots = p.add_subparsers(dest="what", required=True)
    p = plots.add_parser("schedule", help="a hyperschedule as a heatmap (steps x positions)")
    p.add_argument("spec", help="quenched_ar | flat:STEPS | block:W:K | slide:W:TAU | file:PATH")
    p.add_argument("--length", type=int, default=64, help="positions (default 64)")
    p.add_argument("--out", default="schedule.png", help=".png or .svg (default schedule.png)")
    p.set_defaults(func=cmd_plot_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HdlmError as e:
        print(f"hdlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hdlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
