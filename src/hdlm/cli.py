"""The `hdlm` command line: train | sample | eval | harness | bench | study | export | import |
plot.

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
    """How `hdlm sample` and `hdlm eval` draw tokens; returns the A3 group for more options."""
    p.add_argument(
        "--temperature", type=float, default=None, help="0 = greedy (default 1; story-infill 0)"
    )
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sampler", default=None, help="ar | ancestral | acs | remask (default: the family's own)"
    )
    p.add_argument("--schedule", default=None, help="hyperschedule to walk, e.g. block:16:4")
    p.add_argument("--steps", type=int, default=None, help="steps of a flat schedule (default 128)")
    p.add_argument("--eta", type=float, default=None, help="acs re-draw / remask strength")
    p.add_argument("--no-cache", action="store_true", help="recompute everything each step")
    a3 = p.add_argument_group("A3 decoding (a3 checkpoints)")
    a3.add_argument("--order", default="left-to-right", help="left-to-right | random | confidence")
    a3.add_argument("--group-size", type=int, default=1, help="tokens committed per step")
    return a3


def _sampler_options(args: argparse.Namespace, temperature: float = 1.0) -> dict:
    """The keyword arguments of `LanguageModel.sample` that `_add_sampler_options` defines
    (`temperature` when --temperature is not given; no `steps` when --steps is not given)."""
    names = ["sampler", "top_k", "top_p", "steps", "schedule", "eta", "order"]
    options = {name: getattr(args, name) for name in names}
    if options["steps"] is None:
        del options["steps"]
    options["temperature"] = temperature if args.temperature is None else args.temperature
    return options | {"group_size": args.group_size, "use_cache": not args.no_cache}


def cmd_sample(args: argparse.Namespace) -> None:
    from hdlm.sampling.hyperschedule import Trace

    lm = _load(args)
    trace = Trace() if args.trace else None
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


EVAL_METRICS = ("ppl", "infill", "story-infill")  # and `evaluate.SAMPLE_METRICS`


def _eval_metrics(spec: str) -> list[str]:
    from hdlm.evaluate import SAMPLE_METRICS

    metrics = [m.strip() for m in spec.split(",") if m.strip()]
    for metric in metrics:
        if metric not in (*EVAL_METRICS, *SAMPLE_METRICS):
            raise HdlmError(
                f"unknown metric '{metric}'; choose from {', '.join(EVAL_METRICS)}, "
                f"{', '.join(SAMPLE_METRICS)}"
            )
    if "story-infill" in metrics and {"ppl", "infill", "mauve"} & set(metrics):
        raise HdlmError(
            "story-infill reads --data as a stories file; run ppl, infill and mauve separately"
        )
    return metrics


def _is_training_corpus(spec: str, lm) -> bool:
    """Whether `--data` names the corpus the model was trained on (same name or same path)."""
    trained = lm.config.data.corpus
    if spec == trained:
        return True
    mine, theirs = Path(spec).expanduser(), Path(trained).expanduser()
    return mine.exists() and theirs.exists() and mine.resolve() == theirs.resolve()


def _held_out_data(args: argparse.Namespace, lm, data_config, zero_shot: bool):
    """(blocks [n, seq_len], documents or None, what the JSON says about the data): all of
    `--data` when it is not the training corpus (zero-shot), else its `--split` by hash."""
    from hdlm.data import prepare_data
    from hdlm.errors import DataError

    if zero_shot:
        from hdlm.zero_shot import read_documents, stream_blocks, token_stream

        docs = read_documents(data_config, args.split)
        stream = token_stream(docs, lm.tokenizer)
        blocks = stream_blocks(stream, data_config.seq_len, lm.tokenizer.bos_id)
        return blocks, docs, {"corpus": data_config.corpus, "split": args.split or "all"}
    split = args.split or "test"
    data = prepare_data(data_config, lm.tokenizer)
    blocks = data.blocks.get(split, [])
    if len(blocks) == 0:
        raise DataError(f"split '{split}' is empty; choose one of {', '.join(data.blocks)}")
    info = {"corpus": data_config.corpus, "split": split, "entropy_floor": data.entropy_floor}
    return blocks, None, info


def _story_infill(args: argparse.Namespace, lm, data_config) -> dict:
    from hdlm.story import load_stories, story_infill_metrics

    if not args.data:
        raise HdlmError("story-infill needs --data STORIES.jsonl (sentence1..sentence5 or text)")
    stories, skipped = load_stories(args.data, data_config.text_field, args.split, args.max_stories)
    options = _sampler_options(args, temperature=0.0)  # no --steps: one per blank token
    metrics = story_infill_metrics(
        lm, stories, args.story_length, args.batch_size, args.blank_max, args.seed, **options
    )
    return {"data": args.data, "skipped_records": skipped, **metrics}


def cmd_eval(args: argparse.Namespace) -> None:
    from hdlm.config import apply_overrides, from_dict, to_dict
    from hdlm.errors import DataError
    from hdlm.evaluate import (
        SAMPLE_METRICS,
        infill_metrics,
        load_reference,
        middle_span,
        perplexity,
        sample_metrics,
    )

    metrics = _eval_metrics(args.metrics)
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
    zero_shot = bool(args.data) and not args.hash_split and not _is_training_corpus(args.data, lm)
    if "story-infill" in metrics:
        result["story_infill"] = _story_infill(args, lm, data_config)
    if {"ppl", "mauve", "infill"} & set(metrics):
        blocks, docs, info = _held_out_data(args, lm, data_config, zero_shot)
        result.update(info, zero_shot=zero_shot)
    if "ppl" in metrics and zero_shot:
        from hdlm.zero_shot import zero_shot_perplexity

        result.update(zero_shot_perplexity(
            lm, docs, data_config.seq_len, args.stride, args.mc_samples, args.batch_size
        ))  # fmt: skip
    elif "ppl" in metrics:
        if args.stride:
            raise HdlmError("--stride is a zero-shot protocol; score a file or dataset with it")
        result.update(
            perplexity(lm, blocks, args.batch_size, max_blocks=args.max_blocks,
                       mc_samples=args.mc_samples)
        )  # fmt: skip
    if "infill" in metrics:  # the middle --infill-span tokens of --infill-length-token blocks
        held_out = blocks[: args.max_blocks]
        tokens, hidden = middle_span(held_out, args.infill_length, args.infill_span)
        result["infill"] = infill_metrics(lm, tokens, hidden, args.batch_size)
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
        options = _sampler_options(args) | {"batch_size": args.batch_size, "seed": args.seed}
        result.update(
            sample_metrics(lm, args.samples, length, references, reference, sampled, **options)
        )
    _print_json(result, args.json)


def _print_json(result: dict, path: str | None) -> None:
    print(json.dumps(result, indent=2))
    if path:
        Path(path).write_text(json.dumps(result, indent=2))


def cmd_harness(args: argparse.Namespace) -> None:
    from hdlm.harness import HdlmLM, results_table, run_harness

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise HdlmError("--tasks needs at least one lm-evaluation-harness task name")
    if args.limit is not None and args.limit <= 0:
        raise HdlmError(f"--limit {args.limit} must be positive (a count, or a fraction < 1)")
    model = HdlmLM(
        args.checkpoint, device=args.device, batch_size=args.batch_size,
        mc_samples=args.mc_samples, stride=args.stride, score_order=args.score_order,
        score_group_size=args.score_group_size, decode_order=args.order, seed=args.seed,
        progress=not args.no_progress, sampler=args.sampler, steps=args.steps,
        schedule=args.schedule, eta=args.eta, group_size=args.group_size,
    )  # fmt: skip
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = run_harness(
        model, tasks, args.include_path, limit, args.num_fewshot, args.bootstrap_iters, args.seed
    )
    print(results_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


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


def _add_zero_shot_options(p: argparse.ArgumentParser) -> None:
    """`hdlm eval` options of zero-shot perplexity and diffusion bounds (`hdlm.zero_shot`)."""
    p.add_argument(
        "--hash-split", action="store_true", help="score --data's hash --split, not all of it"
    )
    p.add_argument(
        "--mc-samples",
        type=int,
        default=None,
        help="Monte Carlo draws of the noise level per block for diffusion bounds (default "
        "diffusion.eval_steps; HDLM's official protocol: 96)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="zero-shot sliding window: score chunks of this many tokens, each after the "
        "block's other tokens (ar, a3, mdlm, eps-hybrid; default: fixed blocks)",
    )


def _add_story_options(p: argparse.ArgumentParser) -> None:
    """`hdlm eval --metrics story-infill` options (`hdlm.story`)."""
    p.add_argument(
        "--story-length",
        default="given",
        choices=["given", "free"],
        help="story-infill: sentence 3's token count given, or free (a3 picks it)",
    )
    p.add_argument("--max-stories", type=int, default=None, help="story-infill: at most N")
    p.add_argument(
        "--blank-max", type=int, default=None, help="story-infill free: longest sentence 3"
    )


def _add_harness_parser(commands, add_checkpoint) -> None:
    """`hdlm harness`: lm-evaluation-harness tasks through `hdlm.harness.HdlmLM`."""
    p = commands.add_parser(
        "harness", help="lm-evaluation-harness tasks on a checkpoint (docs/metrics.md)"
    )
    add_checkpoint(p)
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. piqa,hellaswag")
    p.add_argument("--include-path", default=None, help="folder of local task YAML files")
    p.add_argument("--limit", type=float, default=None, help="examples per task (< 1: a fraction)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mc-samples", type=int, default=None, help="diffusion bounds: draws/window")
    p.add_argument("--stride", type=int, default=None, help="sliding window for long texts")
    p.add_argument("--score-order", default=None, help="a3 scoring: left-to-right | random")
    p.add_argument("--score-group-size", type=int, default=None, help="a3 scoring group size")
    p.add_argument("--bootstrap-iters", type=int, default=100_000, help="stderr resamples, 0: none")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("generation (generate_until tasks; greedy unless a task samples)")
    g.add_argument("--sampler", default=None, help="default: the family's own")
    g.add_argument("--steps", type=int, default=None, help="flat steps (default: new tokens)")
    g.add_argument("--schedule", default=None, help="hyperschedule to walk, e.g. block:16:4")
    g.add_argument("--eta", type=float, default=None, help="acs / remask strength")
    g.add_argument("--order", default="left-to-right", help="a3 decoding order")
    g.add_argument("--group-size", type=int, default=None, help="a3 tokens per decoding step")
    g.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_harness)


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
        "--trace", default=None, help="draw the denoising trajectory to a .html, .png or .svg"
    )
    a3 = _add_sampler_options(p)
    a3.add_argument(
        "--infill",
        default=None,
        help="text with blanks to fill: ___ = free length (1..--blank-max), ___[N] = N tokens",
    )
    a3.add_argument("--blank-max", type=int, default=8, help="longest free-length blank")
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser(
        "eval", help="perplexity (NELBO) on a corpus and the quality of samples (docs/metrics.md)"
    )
    add_checkpoint(p)
    p.epilog = (
        "--set overrides the checkpoint's data section, e.g. --set data.seq_len=256, and for "
        "a3 checkpoints the evaluation order, e.g. --set a3.eval_order=random"
    )
    p.add_argument(
        "--data",
        default=None,
        help="corpus (default: the one it was trained on). Any other file, folder or dataset "
        "is scored whole (zero-shot, docs/metrics.md); a file is text whatever its suffix",
    )
    p.add_argument(
        "--split",
        default=None,
        help="the training corpus' hash split: train, validation or test (default test); "
        "for a Hugging Face dataset its own split (default test)",
    )
    _add_zero_shot_options(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-blocks", type=int, default=None, help="evaluate at most this many blocks")
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument(
        "--metrics",
        default="ppl",
        help="comma-separated: ppl (held-out NELBO), infill (held-out middle spans: span NLL, "
        "greedy accuracy), story-infill (sentence 3 of five-sentence stories in --data: "
        "ROUGE-1/2/L, token accuracy), and on samples gen-ppl, mauve (against held-out blocks "
        "of --split), entropy, distinct (default ppl)",
    )
    p.add_argument("--infill-length", type=int, default=64, help="infill: block tokens used")
    p.add_argument("--infill-span", type=int, default=8, help="infill: hidden middle tokens")
    _add_story_options(p)
    p.add_argument("--samples", type=int, default=64, help="samples to draw (default 64)")
    p.add_argument("--length", type=int, default=None, help="tokens per sample incl. BOS")
    p.add_argument(
        "--reference", default=None, help="gen-ppl scorer: an ar run, or a Hugging Face model dir"
    )
    _add_sampler_options(p)
    _add_set(p)
    p.set_defaults(func=cmd_eval)

    _add_harness_parser(commands, add_checkpoint)

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
