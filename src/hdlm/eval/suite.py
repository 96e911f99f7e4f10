"""What `hdlm eval` computes: every metric asked for, on the data it needs (docs/metrics.md).

`--data` that is not the training corpus is scored whole (zero-shot, `eval.zero_shot`); the
training corpus by its hash `--split`. Perplexity (`eval.perplexity`), held-out infilling,
story infilling (`eval.story`) and the quality of samples (`eval.samples`) each read the
options of the `hdlm eval` command line (`args`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hdlm.config import apply_overrides, from_dict, to_dict
from hdlm.data import prepare_data
from hdlm.errors import DataError, HdlmError
from hdlm.eval.perplexity import infill_metrics, middle_span, perplexity
from hdlm.eval.samples import SAMPLE_METRICS, load_reference, sample_metrics
from hdlm.eval.story import load_stories, story_infill_metrics
from hdlm.eval.zero_shot import zero_shot_perplexity, zero_shot_store


def evaluate(
    args: argparse.Namespace,
    lm,
    metrics: list[str],
    data_overrides: list[str],
    sampler_options: dict,
) -> dict:
    """The JSON result of `hdlm eval`: every metric asked for, on the data it needs.
    `sampler_options` are the keywords of `LanguageModel.sample` the command line gave."""
    overrides = data_overrides + ([f"corpus={args.data}"] if args.data else [])
    data_config = from_dict(
        type(lm.config.data), apply_overrides(to_dict(lm.config.data), overrides), "data"
    )
    result = {"checkpoint": str(args.checkpoint), "family": lm.config.family}
    progress = not args.no_progress
    blocks = scored_store = None
    zero_shot = bool(args.data) and not args.hash_split and not _is_training_corpus(args.data, lm)
    if "story-infill" in metrics:
        result["story_infill"] = _story_infill(args, lm, data_config, sampler_options)
    if {"ppl", "mauve", "infill"} & set(metrics):
        blocks, scored_store, info = _held_out_data(args, lm, data_config, zero_shot)
        result.update(info, zero_shot=zero_shot)
    if "ppl" in metrics and zero_shot:
        result.update(zero_shot_perplexity(lm, scored_store, data_config.seq_len, args.stride,
                                           args.mc_samples, args.batch_size, progress,
                                           args.max_blocks))  # fmt: skip
    elif "ppl" in metrics:
        if args.stride:
            raise HdlmError("--stride is a zero-shot protocol; score a file or dataset with it")
        result.update(perplexity(lm, blocks, args.batch_size, max_blocks=args.max_blocks,
                                 progress=progress, mc_samples=args.mc_samples))  # fmt: skip
    if "infill" in metrics:  # the middle --infill-span tokens of --infill-length-token blocks
        tokens, hidden = middle_span(blocks[: args.max_blocks], args.infill_length,
                                     args.infill_span)  # fmt: skip
        result["infill"] = infill_metrics(lm, tokens, hidden, args.batch_size, progress,
                                          seed=args.seed, **sampler_options)  # fmt: skip
    sampled = [m for m in metrics if m in SAMPLE_METRICS]
    if sampled:
        seq_len = data_config.seq_len
        result.update(_sample_quality(args, lm, sampled, blocks, seq_len, sampler_options))
    return result


def _is_training_corpus(spec: str, lm) -> bool:
    """Whether `--data` names the corpus the model was trained on (same name or same path)."""
    trained = lm.config.data.corpus
    if spec == trained:
        return True
    mine, theirs = Path(spec).expanduser(), Path(trained).expanduser()
    return mine.exists() and theirs.exists() and mine.resolve() == theirs.resolve()


def _held_out_data(args: argparse.Namespace, lm, data_config, zero_shot: bool):
    """(blocks [n, seq_len], the zero-shot token store or None, what the JSON says about the
    data): all of `--data` when it is not the training corpus (zero-shot: one token store of
    it, `zero_shot_store`), else its `--split` by hash."""
    if zero_shot:
        store = zero_shot_store(data_config, args.split, lm.tokenizer, not args.no_progress)
        blocks = store.blocks("train", data_config.seq_len, lm.tokenizer.bos_id)
        return blocks, store, {"corpus": data_config.corpus, "split": args.split or "all"}
    split = args.split or "test"
    data = prepare_data(data_config, lm.tokenizer)
    blocks = data.blocks.get(split, [])
    if len(blocks) == 0:
        raise DataError(f"split '{split}' is empty; choose one of {', '.join(data.blocks)}")
    info = {"corpus": data_config.corpus, "split": split, "entropy_floor": data.entropy_floor}
    return blocks, None, info


def _story_infill(args: argparse.Namespace, lm, data_config, sampler_options: dict) -> dict:
    if not args.data:
        raise HdlmError("story-infill needs --data STORIES.jsonl (sentence1..sentence5 or text)")
    stories, skipped = load_stories(args.data, data_config.text_field, args.split, args.max_stories)
    metrics = story_infill_metrics(
        lm, stories, args.story_length, args.batch_size, args.blank_max, args.seed,
        not args.no_progress, **sampler_options,
    )  # fmt: skip
    return {"data": args.data, "skipped_records": skipped, **metrics}


def _sample_quality(
    args: argparse.Namespace, lm, sampled: list[str], blocks, seq_len: int, sampler_options: dict
):
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
    options = sampler_options | {"batch_size": args.batch_size, "seed": args.seed}
    return sample_metrics(lm, args.samples, length, references, reference, sampled,
                          progress=not args.no_progress, **options)  # fmt: skip
