"""The `hdlm` command line: train | data | sample | serve | eval | harness | bench | study |
export | import | plot.

Every option is checked here, at the edge, the same way for every command: numbers by range
(`argparse` types below), sampling options against the loaded model's sampler (the sampler
registry, `hdlm.sampling.registry`), devices against the machine. Every user mistake surfaces
as one line `hdlm: error: ...` and exit code 2; `python -m hdlm` is the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

from hdlm.config import (
    DataConfig,
    RunConfig,
    apply_overrides,
    complete,
    from_dict,
    load_config,
    read_yaml,
    to_dict,
    validate_data,
)
from hdlm.data.corpora import open_store
from hdlm.data.store import TokenStore
from hdlm.distributed import launch
from hdlm.errors import HdlmError
from hdlm.eval.samples import SAMPLE_METRICS
from hdlm.eval.suite import evaluate
from hdlm.experiments import bench
from hdlm.experiments.study import report_so_far, run_study
from hdlm.hardware import pick_device, pick_precision
from hdlm.model import load, official
from hdlm.model.checkpoint import save_checkpoint
from hdlm.model.hf import export, import_run_config
from hdlm.model.hf_arch import CLASSES
from hdlm.sampling.options import Option, in_range, interval
from hdlm.sampling.registry import SAMPLERS, cli_options, readers
from hdlm.sampling.trace import SUFFIXES, Trace, write_trace
from hdlm.schedules import from_spec, plot_schedule
from hdlm.train import train


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `hdlm: error: <command>: <problem> (see ... --help)`."""

    def error(self, message: str):
        print(f"hdlm: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -- argument types: each refuses a bad value with a message naming the range ---------------------


def bounded(kind: type, low: float, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite `kind` in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not in_range(value, low, high, low_open):
            raise argparse.ArgumentTypeError(f"{text} must lie in {interval(low, high, low_open)}")
        return value

    return parse


positive_int = bounded(int, 1)
nonnegative_int = bounded(int, 0)
nonnegative_float = bounded(float, 0.0)
probability = bounded(float, 0.0, 1.0)
nucleus = bounded(float, 0.0, 1.0, low_open=True)


# -- commands --------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    config = load_config(args.config, overrides)  # checked once here, before any launch
    if args.nproc > 1:
        flags = ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
        launch(args.nproc, ["--config", args.config, *flags,
                            *(f"--set={o}" for o in overrides)])  # fmt: skip
    out = train(config, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks
        print(f"saved to {out} (hdlm sample {out} / hdlm eval {out})")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    data = read_yaml(Path(args.config)).get("data", {}) if args.config else {}
    flags = {"corpus": args.corpus, "max_tokens": args.max_tokens,
             "max_documents": args.max_documents, "tokenizer.kind": args.tokenizer}  # fmt: skip
    overrides = [o.removeprefix("data.") for o in args.overrides]
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = from_dict(DataConfig, apply_overrides(data, overrides), "data")
    validate_data(cfg)
    store = open_store(cfg, progress=not args.no_progress, workers=args.workers, out=args.out)
    print(json.dumps(_store_summary(store), indent=2))
    if args.out:
        print(f"train on it with --set data.store={store.path}")


def _store_summary(store) -> dict:
    index = store.index
    return {"store": str(store.path), "fingerprint": store.fingerprint,
            "corpus": index["source"]["corpus"], "dtype": index["dtype"],
            "tokenizer": index["tokenizer"], "chunks": len(index["chunks"]),
            "splits": index["splits"]}  # fmt: skip


def cmd_data_info(args: argparse.Namespace) -> None:
    store = TokenStore(args.store)
    if args.verify:
        print(f"verified {store.verify(progress=not args.no_progress)} shards", file=sys.stderr)
    print(json.dumps(_store_summary(store), indent=2))


def _load(args: argparse.Namespace):
    return load(args.checkpoint, pick_device(args.device, "--device"), args.precision)


def _sampler_options(args: argparse.Namespace, temperature: float | None = None) -> dict:
    """The keyword arguments of `LanguageModel.sample` that `_add_sampler_options` defines and
    the user gave (the others keep the sampler's defaults; `temperature` when --temperature is
    not given)."""
    options = {name: getattr(args, name) for name in ("sampler", "temperature", "top_k", "top_p")}
    for option in cli_options().values():
        if option.cli:  # (the others are the commands' own, e.g. --trace, --blank-max)
            value = getattr(args, option.name)
            options[option.name] = option.parse(value) if value and option.parse else value
    if options["temperature"] is None:
        options["temperature"] = temperature
    return {name: value for name, value in options.items() if value is not None}


def _flag(name: str) -> str:
    """The command-line spelling of a keyword of `LanguageModel.sample`."""
    option = cli_options().get(name)
    return option.flag if option else "--" + name.replace("_", "-")


def cmd_sample(args: argparse.Namespace) -> None:
    lm = _load(args)
    trace = Trace() if args.trace else None
    if args.trace:
        _check_trace_path(args.trace)
    tokens = lm.sample(args.num_samples, args.length, prompt=args.prompt, seed=args.seed,
                       infill=args.infill, blank_max=args.blank_max, trace=trace,
                       **_sampler_options(args))  # fmt: skip
    for i, text in enumerate(lm.decode(tokens)):
        print(f"=== sample {i} ===\n{text}")
    if args.trace:
        print(f"wrote {write_trace(trace, lm.tokenizer, args.trace)}")


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from hdlm.serve.app import serve  # (the serve extra: fastapi and uvicorn are optional)
    except ImportError as e:
        raise HdlmError(
            f"hdlm serve needs the serve extra ({e.name} is missing): pip install 'hdlm[serve]'"
        ) from None
    lm = _load(args)
    name = args.name or Path(args.checkpoint).resolve().name
    serve(lm, name, args.host, args.port, args.api_key, args.queue_size)


def _check_trace_path(path: str) -> None:
    """Refuse a --trace file we cannot write before sampling, not after."""
    if Path(path).suffix not in SUFFIXES:
        raise HdlmError(f"--trace {path}: use a {', '.join(SUFFIXES)} file")


EVAL_METRICS = ("ppl", "infill", "story-infill")  # and `evaluate.SAMPLE_METRICS`


def _eval_metrics(spec: str) -> list[str]:
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


def cmd_eval(args: argparse.Namespace) -> None:
    metrics = _eval_metrics(args.metrics)
    sampling = _sampler_options(args)
    if sampling and not {"infill", "story-infill", *SAMPLE_METRICS} & set(metrics):
        raise HdlmError(
            f"{_flag(next(iter(sampling)))} changes how samples are drawn, but --metrics "
            f"{args.metrics} draws none (infill, story-infill, {', '.join(SAMPLE_METRICS)} do)"
        )
    lm = _load(args)
    a3_overrides = [o for o in args.overrides if o.startswith("a3.")]
    if a3_overrides:  # `--set a3.eval_order=random` etc. change an A3 model's evaluation
        lm.set_a3_evaluation(a3_overrides)
    data_overrides = [o.removeprefix("data.") for o in args.overrides if o not in a3_overrides]
    result = evaluate(args, lm, metrics, data_overrides, _sampler_options(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def cmd_harness(args: argparse.Namespace) -> None:
    # lm-evaluation-harness is an optional extra: the adapter imports it, so only this command
    from hdlm.eval.harness import HdlmLM, results_table, run_harness

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise HdlmError("--tasks needs at least one lm-evaluation-harness task name")

    device = str(pick_device(args.device, "--device"))
    model = HdlmLM(
        args.checkpoint, device=device, batch_size=args.batch_size,
        mc_samples=args.mc_samples, stride=args.stride, score_order=args.score_order,
        score_group_size=args.score_group_size, seed=args.seed, progress=not args.no_progress,
        precision=args.precision, **_sampler_options(args),
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
        result = bench.bench_train(size, args.seq_len, args.batch, args.steps, **common,
                                   families=args.families, variants=args.variants)  # fmt: skip
    else:
        del common["precision"]  # sampling compares `precisions` (weights cast or autocast)
        precisions = args.sample_precisions or [precision]
        batches = args.batches or [args.batch]
        result = bench.bench_sample(size, args.lengths, batches, precisions=precisions, **common)
    result.update(device=str(device), precision=precision, size=size)
    print(bench.write_results(args.kind, result, Path(args.out)))


def cmd_export(args: argparse.Namespace) -> None:
    out, kind = export(args.checkpoint, args.out)
    how = (
        "not a stock transformers architecture (model_type hdlm): hdlm.load"
        if kind == "hdlm"
        else f"a {CLASSES[kind]}: transformers.AutoModelForCausalLM.from_pretrained"
    )
    print(f"wrote {out}, {how}({str(out)!r})")


def cmd_import(args: argparse.Namespace) -> None:
    source = official.resolve_source(args.path)
    if official.is_official(source):  # HDLM, MDLM, SEDD, BD3-LM releases
        config, weights, tokenizer = official.import_official(source)
    else:  # gpt2, llama, mistral, qwen2, qwen3 (hdlm.model.hf)
        config, imported = import_run_config(source)
        for note in imported.notes:
            print(f"hdlm import: {note}")
        weights, tokenizer = imported.weights, imported.tokenizer
    config = _import_overrides(config, args.overrides)
    out = save_checkpoint(args.out, weights, config, tokenizer)
    print(f"imported a {config.family} model ({config.model.n_layers} layers)")
    print(f"wrote {out} (hdlm sample {out}; train.init_from={out} with data.tokenizer.path={out})")


def _import_overrides(config, overrides: list[str]):
    """The imported run config with `--set` applied to its data / diffusion / train sections
    (evaluation settings such as diffusion.eval_steps); the model section is the checkpoint's."""
    for item in overrides:
        if item.strip().startswith(("model.", "family")):
            raise HdlmError(f"--set {item}: the model and family come from the checkpoint")
    return complete(from_dict(RunConfig, apply_overrides(to_dict(config), overrides)))


def cmd_study(args: argparse.Namespace) -> None:
    only = args.only.split(",") if args.only else None
    if args.report_only:
        if only or args.train_only:
            raise HdlmError(
                "--report-only reports every run evaluated so far; drop --only and --train-only"
            )
        out = report_so_far(args.config)
    else:
        progress = "none" if args.no_progress else args.progress
        out = run_study(args.config, only=only, progress=progress, train_only=args.train_only)
    print(f"study {'runs trained in' if args.train_only else 'written to'} {out}")


def cmd_plot_schedule(args: argparse.Namespace) -> None:
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
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="the weights' dtype, cast once at load (default fp32, the reference)",
    )


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """How `hdlm sample`, `eval` and `harness` draw tokens: the token choice, the sampler, and
    every option a sampler of the registry declares (`hdlm.sampling.registry`). Sampler options
    default to None (not given): the chosen sampler refuses one it does not declare."""
    p.add_argument("--temperature", type=nonnegative_float, default=None,
                   help="0 = greedy (default 1; 0 for eval --metrics infill and "
                   "story-infill)")  # fmt: skip
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=nucleus, default=None)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--sampler", default=None,
                   help=f"{' | '.join(SAMPLERS)} (default: the family's own)")  # fmt: skip
    group = p.add_argument_group("sampler options (each read by the samplers in brackets)")
    for option in cli_options().values():
        if option.cli:
            _add_sampler_option(group, option)


def _add_sampler_option(group: argparse._ArgumentGroup, option: Option) -> None:
    """One sampler option as a flag; its help names the samplers that read it and their
    defaults, e.g. `[acs 0.015, remask 0.02]`."""
    defaults = {s.name: o.default for s in SAMPLERS.values() for o in s.options if o is not None
                and o.name == option.name}  # fmt: skip
    which = ", ".join(
        name if defaults[name] in (None, True) else f"{name} {defaults[name]}"
        for name in readers(option.name)
    )
    text = f"{option.help} [{which}]"
    if option.kind is bool:  # a --no-... switch
        group.add_argument(option.flag, dest=option.name, action="store_const", const=False,
                           default=None, help=text)  # fmt: skip
        return
    kind = {"choices": option.choices} if option.choices else {}
    if option.kind in (int, float):
        kind["type"] = bounded(option.kind, option.low, option.high, option.low_open)
    group.add_argument(option.flag, dest=option.name, default=None, help=text, **kind)


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


def _data_parser(commands) -> None:
    p = commands.add_parser("data", help="prepare and inspect token stores (corpora at scale)")
    verbs = p.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser(
        "prepare", help="tokenise a corpus once into a sharded token store (resumable)",
        description="Tokenise a corpus into a token store that training and evaluation read "
        "without loading it: local files or folders (.txt .md .json .jsonl .parquet, also .gz "
        ".zst), a Hugging Face dataset (streamed), pydocs, synthetic or hmm. Run it again after "
        "an interruption: finished shards are kept.",
    )  # fmt: skip
    p.add_argument("corpus", nargs="?", help="the corpus (default: the config's data.corpus)")
    p.add_argument("--config", help="a YAML config whose data section describes the corpus")
    p.add_argument(
        "--tokenizer",
        choices=("gpt2", "bpe", "char"),
        help="data.tokenizer.kind (a tokenizer.json: --set data.tokenizer.path=...)",
    )
    p.add_argument("--out", help="the store directory (default: in data.cache_dir, where "
                   "`hdlm train` finds it)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, help="tokenising processes (default: "
                   "data.workers, else one per core up to 8)")  # fmt: skip
    p.add_argument("--max-tokens", type=positive_int, help="stop at this many tokens")
    p.add_argument("--max-documents", type=positive_int, help="stop at this many documents")
    _add_progress(p)
    _add_set(p)
    p.set_defaults(func=cmd_data_prepare)
    p = verbs.add_parser("info", help="what a token store holds (--verify: check every shard)")
    p.add_argument("store", help="a token store directory")
    p.add_argument("--verify", action="store_true", help="check every shard's size and CRC-32")
    _add_progress(p)
    p.set_defaults(func=cmd_data_info)


def _sample_parser(commands) -> None:
    p = commands.add_parser("sample", help="generate text from a checkpoint")
    _add_checkpoint(p)
    p.add_argument("--prompt", default=None, help="text the samples continue")
    p.add_argument("-n", "--num-samples", type=positive_int, default=2)
    p.add_argument("--length", type=positive_int, default=None,
                   help="tokens per sample incl. the prompt")  # fmt: skip
    p.add_argument("--trace", default=None,
                   help="draw what each step did (denoising, or the group A3 committed) to "
                   ".html/.png/.svg")  # fmt: skip
    _add_sampler_options(p)
    p.add_argument("--infill", default=None,
                   help="text with blanks to fill: ___ = free length (1..--blank-max, A3), "
                   "___[N] = N tokens")  # fmt: skip
    p.add_argument("--blank-max", type=positive_int, default=None,
                   help="longest free-length blank (default 8; a3)")  # fmt: skip
    p.set_defaults(func=cmd_sample)


def _serve_parser(commands) -> None:
    p = commands.add_parser(
        "serve", help="a live denoising page and an OpenAI-compatible API (the serve extra)"
    )
    _add_checkpoint(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")  # fmt: skip
    p.add_argument("--port", type=bounded(int, 0, 65535), default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (or ?api_key=KEY) on every "
                   "endpoint")  # fmt: skip
    p.add_argument("--queue-size", type=positive_int, default=16,
                   help="requests that may wait for the model; more are answered 503")  # fmt: skip
    p.add_argument("--name", default=None,
                   help="model id in the API (default: the checkpoint's folder name)")  # fmt: skip
    p.set_defaults(func=cmd_serve)


def _eval_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="perplexity (NELBO) on a corpus and the quality of samples (docs/metrics.md)"
    )
    _add_checkpoint(p)
    p.epilog = (
        "--set overrides the checkpoint's data section, e.g. --set data.seq_len=256, and for "
        "a3 checkpoints the evaluation order, e.g. --set a3.eval_order=random"
    )
    p.add_argument("--data", default=None,
                   help="corpus (default: the one it was trained on). Any other file, folder or "
                   "dataset is scored whole (zero-shot, docs/metrics.md); a file is text "
                   "whatever its suffix")  # fmt: skip
    p.add_argument("--split", default=None,
                   help="the training corpus' hash split: train, validation or test (default "
                   "test); for a Hugging Face dataset its own split (default test)")  # fmt: skip
    _add_zero_shot_options(p)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-blocks", type=positive_int, default=None,
                   help="evaluate at most this many blocks (zero-shot: windows)")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--metrics", default="ppl",
                   help="comma-separated: ppl (held-out NELBO), infill (held-out middle spans: "
                   "span NLL, greedy accuracy), story-infill (sentence 3 of five-sentence "
                   "stories in --data: ROUGE-1/2/L, token accuracy), and on samples gen-ppl, "
                   "mauve (against held-out blocks of --split), entropy, distinct (default "
                   "ppl)")  # fmt: skip
    p.add_argument("--infill-length", type=positive_int, default=64,
                   help="infill: block tokens used")  # fmt: skip
    p.add_argument("--infill-span", type=positive_int, default=8,
                   help="infill: hidden middle tokens")  # fmt: skip
    _add_story_options(p)
    p.add_argument("--samples", type=positive_int, default=64, help="samples to draw (64)")
    p.add_argument("--length", type=positive_int, default=None,
                   help="tokens per sample incl. BOS")  # fmt: skip
    p.add_argument("--reference", default=None,
                   help="gen-ppl scorer: an ar run, or a Hugging Face model dir")  # fmt: skip
    _add_sampler_options(p)
    _add_progress(p)
    _add_set(p)
    p.set_defaults(func=cmd_eval)


def _add_zero_shot_options(p: argparse.ArgumentParser) -> None:
    """`hdlm eval` options of zero-shot perplexity and diffusion bounds (`hdlm.eval.zero_shot`)."""
    p.add_argument("--hash-split", action="store_true",
                   help="score --data's hash --split, not all of it")  # fmt: skip
    p.add_argument("--mc-samples", type=positive_int, default=None,
                   help="Monte Carlo draws of the noise level per block for diffusion bounds "
                   "(default diffusion.eval_steps; HDLM's official protocol: 96)")  # fmt: skip
    p.add_argument("--stride", type=positive_int, default=None,
                   help="zero-shot sliding window: score chunks of this many tokens, each after "
                   "the block's other tokens (ar, a3, mdlm, eps-hybrid; default: fixed "
                   "blocks)")  # fmt: skip


def _add_story_options(p: argparse.ArgumentParser) -> None:
    """`hdlm eval --metrics story-infill` options (`hdlm.eval.story`)."""
    p.add_argument("--story-length", default="given", choices=["given", "free"],
                   help="story-infill: sentence 3's token count given, or free (a3 picks "
                   "it)")  # fmt: skip
    p.add_argument("--max-stories", type=positive_int, default=None,
                   help="story-infill: at most N")  # fmt: skip
    p.add_argument("--blank-max", type=positive_int, default=None,
                   help="story-infill free: longest sentence 3 (default twice the longest "
                   "reference)")  # fmt: skip


def _harness_parser(commands) -> None:
    p = commands.add_parser(
        "harness", help="lm-evaluation-harness tasks on a checkpoint (docs/metrics.md)"
    )
    _add_checkpoint(p)
    p.add_argument("--tasks", required=True, help="comma-separated task names, e.g. piqa,hellaswag")
    p.add_argument("--include-path", default=None, help="folder of local task YAML files")
    p.add_argument("--limit", type=bounded(float, 0, low_open=True), default=None,
                   help="examples per task (< 1: a fraction)")  # fmt: skip
    p.add_argument("--num-fewshot", type=nonnegative_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--mc-samples", type=positive_int, default=None,
                   help="diffusion bounds: Monte Carlo draws per window")  # fmt: skip
    p.add_argument("--stride", type=positive_int, default=None,
                   help="loglikelihood_rolling: sliding window (default: blocks)")  # fmt: skip
    p.add_argument("--score-order", default=None, choices=["left-to-right", "random"],
                   help="a3 scoring order (default a3.eval_order)")  # fmt: skip
    p.add_argument("--score-group-size", type=positive_int, default=None,
                   help="a3 scoring group size (default a3.eval_group_size)")  # fmt: skip
    p.add_argument("--bootstrap-iters", type=nonnegative_int, default=100_000,
                   help="stderr resamples (0: none)")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the results to this file")
    _add_progress(p)
    _add_sampler_options(p)  # generate_until: greedy unless a task samples
    p.set_defaults(func=cmd_harness)


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
    p.add_argument("--batches", type=positive_int, nargs="+",
                   help="sample: batch sizes, one row each (default: --batch)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=3, help="train: timed steps per round")
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(bench.TRAIN_FAMILIES),
        help="train: only these families (default all)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=bench.TRAIN_VARIANTS,
        help="train: only these row groups (default all: " + ", ".join(bench.TRAIN_VARIANTS) + ")",
    )
    p.add_argument(
        "--sample-precisions",
        nargs="+",
        choices=list(bench.SAMPLE_PRECISIONS),
        help="sample: compare these per sampler (bf16: weights cast once; "
        "autocast-bf16: float32 weights under autocast); default: --precision",
    )
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
        "ar models of a GPT-2, Llama, Qwen2 or Qwen3 shape are written as that transformers "
        "architecture; other models as hdlm checkpoints (model_type hdlm) for hdlm.load"
    )
    p.set_defaults(func=cmd_export)
    p = commands.add_parser(
        "import",
        help="turn a released model (HDLM, MDLM, SEDD, BD3-LM) or a Hugging Face model "
        "(gpt2, llama, mistral, qwen2, qwen3) into a checkpoint",
    )
    p.add_argument(
        "path",
        help="a model directory or hf:OWNER/NAME: HDLM eps/gamma, MDLM, SEDD, BD3-LM "
        "(docs/reproduce.md), or a gpt2 / llama / mistral / qwen2 / qwen3 directory "
        "(config.json, model.safetensors or its shards, tokenizer.json)",
    )
    p.add_argument("out", help="checkpoint directory to write")
    _add_set(p)
    p.epilog = "--set changes data, diffusion or train keys, e.g. --set diffusion.eval_steps=96"
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
    p.add_argument("--train-only", action="store_true",
                   help="train (or resume) the runs and stop before evaluating them")  # fmt: skip
    p.add_argument("--progress", choices=("all", "training", "none"), default="all",
                   help="progress bars: all, training (one line per family while it trains) "
                   "or none")  # fmt: skip
    _add_progress(p)
    p.set_defaults(func=cmd_study)
    p = commands.add_parser("plot", help="draw what a model or schedule does")
    plots = p.add_subparsers(dest="what", required=True)
    p = plots.add_parser("schedule", help="a hyperschedule as a heatmap (steps x positions)")
    p.add_argument("spec", help="quenched_ar | flat:STEPS | block:W:K[:O] | slide:W:T | file:PATH")
    p.add_argument("--length", type=positive_int, default=64, help="positions (default 64)")
    p.add_argument("--out", default="schedule.png", help=".png or .svg (default schedule.png)")
    p.set_defaults(func=cmd_plot_schedule)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hdlm",
        description="Train, sample and evaluate AR, diffusion, hybrid (HDLM) and A3 models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _data_parser, _sample_parser, _serve_parser, _eval_parser,
                _harness_parser, _bench_parser, _interop_parsers,
                _study_and_plot_parsers):  # fmt: skip
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for any user mistake, argparse's included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad option (2, its one line already printed)
        return int(e.code or 0)
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
