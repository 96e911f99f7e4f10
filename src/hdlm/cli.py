"""The `hdlm` command line: train | sample | eval | bench | study | export | import | plot.

Every option is checked here, at the edge, the same way for every command: numbers by range
(`argparse` types below), sampling options against the loaded family (`families.check_options`),
devices against the machine. Every user mistake surfaces as one line `hdlm: error: ...` and exit
code 2; `python -m hdlm` is the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from hdlm.errors import HdlmError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `hdlm: error: <command>: <problem> (see ... --help)`."""

    def error(self, message: str):
        print(f"hdlm: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -- argument types: each refuses a bad value with a message naming the range ---------------------


def bounded(kind: type, low: float, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite `kind` in [low, high] ((low, high] with `low_open`)."""
    lower = "(" if low_open else "["

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            upper = "∞)" if high == math.inf else f"{high:g}]"
            raise argparse.ArgumentTypeError(f"{text} must lie in {lower}{low:g}, {upper}")
        return value

    return parse


positive_int = bounded(int, 1)
nonnegative_int = bounded(int, 0)
nonnegative_float = bounded(float, 0.0)
probability = bounded(float, 0.0, 1.0)
nucleus = bounded(float, 0.0, 1.0, low_open=True)


# -- commands --------------------------------------------------------------------------------------


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
    from hdlm.hardware import pick_device

    return hdlm.load(args.checkpoint, device=pick_device(args.device, "--device"))


SAMPLING_DEFAULTS = {"steps": 128, "order": "left-to-right", "group_size": 1, "blank_max": 8}


def _sampler_options(args: argparse.Namespace, lm) -> dict:
    """The keyword arguments of `LanguageModel.sample` from the sampling options, after
    refusing those the model's sampler does not read (`families.check_options`)."""
    from hdlm.families import check_options

    optional = ["steps", "schedule", "eta", "order", "group_size", "blank_max", "trace", "reveal",
                "final"]  # fmt: skip
    given = {name: getattr(args, name, None) for name in optional}
    given = {name: value for name, value in given.items() if value is not None}
    if args.no_cache:
        given["use_cache"] = False
    check_options(lm.family, args.sampler, given)
    options = {name: getattr(args, name) for name in ["sampler", "temperature", "top_k", "top_p"]}
    options.update(SAMPLING_DEFAULTS | {k: v for k, v in given.items() if k != "trace"})
    return options | {"use_cache": not args.no_cache}


def cmd_sample(args: argparse.Namespace) -> None:
    from hdlm.sampling.hyperschedule import Trace

    lm = _load(args)
    options = _sampler_options(args, lm)
    trace = Trace() if args.trace else None
    tokens = lm.sample(args.num_samples, args.length, prompt=args.prompt, seed=args.seed,
                       infill=args.infill, trace=trace, **options)  # fmt: skip
    for i, text in enumerate(lm.decode(tokens)):
        print(f"=== sample {i} ===\n{text}")
    if args.trace:
        from hdlm.sampling.trace import write_trace

        print(f"wrote {write_trace(trace, lm.tokenizer, args.trace)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from hdlm.evaluate import SAMPLE_METRICS

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for metric in metrics:
        if metric not in ("ppl", "infill", *SAMPLE_METRICS):
            raise HdlmError(
                f"unknown metric '{metric}'; choose from ppl, infill, {', '.join(SAMPLE_METRICS)}"
            )
    lm = _load(args)
    a3_overrides = [o for o in args.overrides if o.startswith("a3.")]
    if a3_overrides:  # `--set a3.eval_order=random` etc. change an A3 model's evaluation
        lm.set_a3_evaluation(a3_overrides)
    data_overrides = [o.removeprefix("data.") for o in args.overrides if o not in a3_overrides]
    result = _evaluate(args, lm, metrics, data_overrides)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _evaluate(args: argparse.Namespace, lm, metrics: list[str], data_overrides: list[str]):
    """The JSON result of `hdlm eval`: every metric asked for, on the data it needs."""
    from hdlm.config import apply_overrides, from_dict, to_dict
    from hdlm.data import prepare_data
    from hdlm.errors import DataError
    from hdlm.evaluate import SAMPLE_METRICS, infill_metrics, middle_span, perplexity

    overrides = data_overrides + ([f"corpus={args.data}"] if args.data else [])
    data_config = from_dict(
        type(lm.config.data), apply_overrides(to_dict(lm.config.data), overrides), "data"
    )
    result = {"checkpoint": str(args.checkpoint), "family": lm.config.family}
    progress = not args.no_progress
    blocks = data = None
    if {"ppl", "mauve", "infill"} & set(metrics):
        data = prepare_data(data_config, lm.tokenizer)
        blocks = data.blocks.get(args.split, [])
        if len(blocks) == 0:
            splits = ", ".join(data.blocks)
            raise DataError(f"split '{args.split}' is empty; choose one of {splits}")
        result.update(corpus=data_config.corpus, split=args.split)
    if "ppl" in metrics:
        result.update(perplexity(lm, blocks, args.batch_size, max_blocks=args.max_blocks,
                                 progress=progress))  # fmt: skip
        result.update(entropy_floor=data.entropy_floor)
    if "infill" in metrics:  # the middle --infill-span tokens of --infill-length-token blocks
        tokens, hidden = middle_span(blocks[: args.max_blocks], args.infill_length,
                                     args.infill_span)  # fmt: skip
        result["infill"] = infill_metrics(lm, tokens, hidden, args.batch_size, progress)
    sampled = [m for m in metrics if m in SAMPLE_METRICS]
    if sampled:
        result.update(_sample_quality(args, lm, sampled, blocks, data_config.seq_len))
    return result


def _sample_quality(args: argparse.Namespace, lm, sampled: list[str], blocks, seq_len: int):
    from hdlm.errors import DataError
    from hdlm.evaluate import load_reference, sample_metrics

    length = args.length or seq_len
    references = []
    if "mauve" in sampled:  # held-out blocks of the sample length, BOS dropped
        if length > blocks.shape[1]:
            raise DataError(
                f"--length {length} is longer than the corpus blocks ({blocks.shape[1]}); "
                f"add --set data.seq_len={length} or lower --length"
            )
        references = lm.decode(blocks[: args.samples, :length])
    reference = load_reference(args.reference, args.device) if args.reference else None
    options = _sampler_options(args, lm) | {"batch_size": args.batch_size, "seed": args.seed}
    return sample_metrics(lm, args.samples, length, references, reference, sampled,
                          progress=not args.no_progress, **options)  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from hdlm import bench
    from hdlm.hardware import pick_device, pick_precision

    device = pick_device(args.device, "--device")
    precision = pick_precision(args.precision, device)
    size = {"vocab_size": args.vocab, "n_layers": args.layers, "d_model": args.d_model,
            "n_heads": args.heads}  # fmt: skip
    if args.d_model % args.heads or (args.d_model // args.heads) % 2:
        raise HdlmError(f"--d-model {args.d_model} must split into --heads {args.heads} heads of "
                        "even size")  # fmt: skip
    say = (lambda message: None) if args.no_progress else tqdm.write
    common = {"rounds": args.rounds, "device": device, "precision": precision, "progress": say}
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
    from hdlm.study import report_so_far, run_study

    only = args.only.split(",") if args.only else None
    if args.report_only:
        if only:
            raise HdlmError("--report-only reports every run evaluated so far; drop --only")
        out = report_so_far(args.config)
    else:
        out = run_study(args.config, only=only, progress=not args.no_progress)
    print(f"study written to {out}")


def cmd_plot_schedule(args: argparse.Namespace) -> None:
    from hdlm.schedules import from_spec, plot_schedule

    path = plot_schedule(from_spec(args.spec, args.length), args.out)
    print(f"wrote {path}")


# -- the parser, one builder per command -----------------------------------------------------------


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.n_layers=4 (repeatable)",
    )  # fmt: skip


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory or a checkpoint directory")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")


def _add_sampler_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """How `hdlm sample` and `hdlm eval` draw tokens; returns the A3 group for more options.
    Options a sampler may not read default to None, so that a given one can be refused."""
    p.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=nucleus, default=None)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--sampler", default=None,
                   help="ar | ancestral | acs | remask | eps-chain | tweedie | euler | a3 "
                   "(default: the family's own)")  # fmt: skip
    p.add_argument("--schedule", default=None, help="hyperschedule to walk, e.g. block:16:4")
    p.add_argument(
        "--steps", type=positive_int, default=None, help="steps of a flat schedule (128)"
    )
    p.add_argument("--eta", type=probability, default=None, help="acs re-draw / remask strength")
    p.add_argument(
        "--reveal",
        default=None,
        choices=["mixture", "model"],
        help="eps-chain: reveal from (1-eps) p + eps u (default) or from p alone",
    )
    p.add_argument("--final", default=None, choices=["sample", "greedy", "none"],
                   help="eps-chain: last step re-decodes every position: a draw (default), "
                        "its argmax (MDLM's final denoise), or none")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="recompute everything each step")
    a3 = p.add_argument_group("A3 decoding (a3 checkpoints)")
    a3.add_argument("--order", default=None, choices=["left-to-right", "random", "confidence"],
                    help="the order positions are committed in (left-to-right)")  # fmt: skip
    a3.add_argument("--group-size", type=positive_int, default=None,
                    help="tokens committed per step (default 1)")  # fmt: skip
    return a3


def _train_parser(commands) -> None:
    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/ar-tiny.yaml")
    p.add_argument("--out", help="run directory (default: the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    _add_progress(p)
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel processes on this machine (runs torchrun; "
                   "train.batch_size stays the global batch). SIGTERM saves and exits 0, "
                   "Ctrl-C saves and exits 130")  # fmt: skip
    _add_set(p)
    p.set_defaults(func=cmd_train)


def _sample_parser(commands) -> None:
    p = commands.add_parser("sample", help="generate text from a checkpoint")
    _add_checkpoint(p)
    p.add_argument("--prompt", default=None, help="text the samples continue")
    p.add_argument("-n", "--num-samples", type=positive_int, default=2)
    p.add_argument("--length", type=positive_int, default=None,
                   help="tokens per sample incl. the prompt")  # fmt: skip
    p.add_argument("--trace", default=None,
                   help="draw the denoising trajectory to a .html, .png or .svg")  # fmt: skip
    a3 = _add_sampler_options(p)
    a3.add_argument("--infill", default=None,
                    help="text with blanks to fill: ___ = free length (1..--blank-max, A3), "
                    "___[N] = N tokens")  # fmt: skip
    a3.add_argument("--blank-max", type=positive_int, default=None,
                    help="longest free-length blank (default 8)")  # fmt: skip
    p.set_defaults(func=cmd_sample)


def _eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="perplexity (NELBO) on a corpus and the quality of samples (docs/metrics.md)"
    )
    _add_checkpoint(p)
    p.epilog = (
        "--set overrides the checkpoint's data section, e.g. --set data.seq_len=256, and for "
        "a3 checkpoints the evaluation order, e.g. --set a3.eval_order=random"
    )
    p.add_argument("--data", default=None, help="corpus (default: the one it was trained on)")
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-blocks", type=positive_int, default=None,
                   help="evaluate at most this many blocks")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--metrics", default="ppl",
                   help="comma-separated: ppl (held-out NELBO), infill (held-out middle spans: "
                   "span NLL, greedy accuracy), and on samples gen-ppl, mauve (against held-out "
                   "blocks of --split), entropy, distinct (default ppl)")  # fmt: skip
    p.add_argument("--infill-length", type=positive_int, default=64,
                   help="infill: block tokens used")  # fmt: skip
    p.add_argument("--infill-span", type=positive_int, default=8,
                   help="infill: hidden middle tokens")  # fmt: skip
    p.add_argument("--samples", type=positive_int, default=64, help="samples to draw (64)")
    p.add_argument("--length", type=positive_int, default=None,
                   help="tokens per sample incl. BOS")  # fmt: skip
    p.add_argument("--reference", default=None,
                   help="gen-ppl scorer: an ar run, or a Hugging Face model dir")  # fmt: skip
    _add_sampler_options(p)
    _add_progress(p)
    _add_set(p)
    p.set_defaults(func=cmd_eval)


def _bench_parser(commands) -> None:
    p = commands.add_parser("bench", help="throughput and memory of every family, side by side")
    p.add_argument("kind", choices=["train", "sample"])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--d-model", type=positive_int, default=512, help="model width (512)")
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--vocab", type=positive_int, default=4096)
    p.add_argument("--seq-len", type=positive_int, default=256, help="train: tokens per sequence")
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[256, 1024],
                   help="sample lengths")  # fmt: skip
    p.add_argument("--batch", type=positive_int, default=16, help="sequences per step / samples")
    p.add_argument("--steps", type=positive_int, default=3, help="train: timed steps per round")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="interleaved repetitions (median)")  # fmt: skip
    p.add_argument("--out", default="results/bench", help="where the JSON and markdown go")
    _add_progress(p)
    p.set_defaults(func=cmd_bench)


def _interop_parsers(commands) -> None:
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


def _study_and_plot_parsers(commands) -> None:
    p = commands.add_parser(
        "study", help="train every family at one budget, evaluate all, write table and plots"
    )
    p.add_argument("--config", required=True, help="study YAML, e.g. configs/study-tiny.yaml")
    p.add_argument("--only", default=None,
                   help="comma-separated families or runs NAME-seedK (default: all)")  # fmt: skip
    p.add_argument("--report-only", action="store_true",
                   help="report the evaluations done so far; train nothing")  # fmt: skip
    _add_progress(p)
    p.set_defaults(func=cmd_study)
    p = commands.add_parser("plot", help="draw what a model or schedule does")
    plots = p.add_subparsers(dest="what", required=True)
    p = plots.add_parser("schedule", help="a hyperschedule as a heatmap (steps x positions)")
    p.add_argument("spec", help="quenched_ar | flat:STEPS | block:W:K | slide:W:TAU | file:PATH")
    p.add_argument("--length", type=positive_int, default=64, help="positions (default 64)")
    p.add_argument("--out", default="schedule.png", help=".png or .svg (default schedule.png)")
    p.set_defaults(func=cmd_plot_schedule)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hdlm",
        description="Train, sample and evaluate AR, diffusion, hybrid (HDLM) and A3 models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _sample_parser, _eval_parser, _bench_parser, _interop_parsers,
                _study_and_plot_parsers):  # fmt: skip
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HdlmError as e:
        print(f"hdlm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file we were asked to read or write: name it, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"hdlm: error: {where}{e.strerror or e}; check the path and its permissions",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("hdlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
