"""Story infilling: DiffuLLaMA's ROCStories protocol, which A3 reports (docs/metrics.md).

A story is five sentences. Sentences 1-2 and 4-5 are given, sentence 3 is hidden and generated:

    [BOS] s1 s2 [blank] s4 s5        ids: encode(s1 + " " + s2), blank, encode(" " + s4 + " " + s5)

The reference is encode(" " + s3). Its length is given in tokens (every family), or free for A3
(the model picks it, `hdlm.sampling.a3.infill_template`). An ar model cannot see text after a
blank: it continues sentences 1-2 with as many tokens (a left-context baseline). Scores:
ROUGE-1/2/L F1 (Google's `rouge-score`, Porter stemming) of the decoded sentence against the
reference sentence, exact-token accuracy (share of reference tokens reproduced at their
position), and the span NLL per token where the family has one (exact for a3 and, given sentences
1-2 only, for ar; the conditional NELBO, an upper bound, for mdlm / eps-hybrid).

Stories come from a .jsonl/.json file (or a Hugging Face dataset split) whose records have
fields `sentence1` ... `sentence5` (ROCStories) or a text field split into sentences by
`split_sentences` (records that do not give exactly five sentences are skipped and counted).
Batches hold stories of one layout (the same token counts of the three parts), since the
samplers fill one known/unknown layout per batch; stories are sorted so that equal layouts meet.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hdlm import sampling
from hdlm.data.readers import check_hub_reachable
from hdlm.errors import DataError, HdlmError
from hdlm.eval.perplexity import one_step_per_blank
from hdlm.eval.scoring import conditional_support

SENTENCE_FIELDS = tuple(f"sentence{i}" for i in range(1, 6))
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# a sentence ends at . ! or ? (maybe with a closing quote or bracket) before white space and a
# capital letter or digit (maybe after an opening quote or bracket)
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: cut after . ! ? (plus closing quotes) followed by white space and
    an upper-case letter or digit. Simple on purpose: abbreviations like "e.g. Python" split."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def story_sentences(record: dict, text_field: str = "text") -> list[str] | None:
    """The five sentences of a record, or None when it does not have exactly five."""
    if all(isinstance(record.get(f), str) for f in SENTENCE_FIELDS):
        sentences = [" ".join(record[f].split()) for f in SENTENCE_FIELDS]
    elif isinstance(record.get(text_field), str):
        sentences = split_sentences(record[text_field])
    else:
        raise DataError(
            f"a story record needs fields {', '.join(SENTENCE_FIELDS)} or a text field "
            f"'{text_field}' (data.text_field); this one has: {', '.join(record) or 'nothing'}"
        )
    return sentences if len(sentences) == 5 and all(sentences) else None


def read_records(spec: str, split: str | None = None) -> list[dict]:
    """Records of a local .jsonl / .json file, else of split `split` (default test) of a
    Hugging Face dataset."""
    path = Path(spec).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                records = json.loads(text)
                return records if isinstance(records, list) else [records]
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON lines / JSON: {e}") from e
    if path.exists() or spec.startswith(("/", ".", "~")):
        raise DataError(f"stories file {spec} not found (or not a file); give a .jsonl file")
    check_hub_reachable(f"stories '{spec}'")
    import datasets  # heavy: only for stories from a Hugging Face dataset

    try:
        return list(datasets.load_dataset(spec, split=split or "test"))
    except Exception as e:
        reason = next(iter(str(e).splitlines()), type(e).__name__)
        raise DataError(f"could not load stories '{spec}' ({reason}); give a .jsonl file") from e


def load_stories(
    spec: str, text_field: str = "text", split: str | None = None, limit: int | None = None
) -> tuple[list[list[str]], int]:
    """(stories of five sentences, number of records skipped) of `read_records(spec, split)`."""
    stories, skipped = [], 0
    for record in read_records(spec, split):
        if not isinstance(record, dict):
            raise DataError(f"{spec}: every record must be a JSON object, not {record!r:.40}")
        sentences = story_sentences(record, text_field)
        if sentences is None:
            skipped += 1
        else:
            stories.append(sentences)
    stories = stories[:limit]
    if not stories:
        raise DataError(f"{spec} holds no story of exactly five sentences ({skipped} skipped)")
    return stories, skipped


# -- layouts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """Token ids of the three parts (no BOS) and the five sentences."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    sentences: tuple[str, ...]

    @property
    def reference(self) -> str:
        return self.sentences[2]

    def layout(self, left_only: bool) -> tuple[int, int, int]:
        """(prefix, blank, suffix) lengths as the model sees them (ar, `left_only`: no suffix)."""
        return len(self.prefix), len(self.middle), 0 if left_only else len(self.suffix)


def encode_story(tokenizer, sentences: Sequence[str]) -> Story:
    s1, s2, s3, s4, s5 = sentences
    return Story(
        tuple(tokenizer.encode(f"{s1} {s2}")),
        tuple(tokenizer.encode(f" {s3}")),
        tuple(tokenizer.encode(f" {s4} {s5}")),
        tuple(sentences),
    )


def story_rows(stories: Sequence[Story], left_only: bool, bos: int, mask_id: int):
    """(tokens [n, L] with the true middle, known [L]) of stories sharing one layout."""
    prefix, blank, suffix = stories[0].layout(left_only)
    tokens = torch.tensor(
        [[bos, *s.prefix, *s.middle, *s.suffix[:suffix]] for s in stories], dtype=torch.long
    )
    known = torch.ones(tokens.shape[1], dtype=torch.bool)
    known[1 + prefix : 1 + prefix + blank] = False
    return tokens, known


# -- scores ---------------------------------------------------------------------------------------


def rouge_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (rouge-score, Porter stemmer; 1.0 for identical text)."""
    try:
        from rouge_score import rouge_scorer  # the optional `eval` extra
    except ImportError as e:
        raise HdlmError("ROUGE needs `pip install 'hdlm[eval]'` (rouge-score)") from e
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for reference, prediction in zip(references, predictions, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: total / len(references) for name, total in totals.items()}


def token_accuracy(references: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]]):
    """Σ reference tokens reproduced at their position / Σ reference tokens."""
    hits = sum(
        sum(a == b for a, b in zip(ref, pred, strict=False))
        for ref, pred in zip(references, predictions, strict=True)
    )
    return hits / max(sum(map(len, references)), 1)


# -- filling --------------------------------------------------------------------------------------


def _fill_given(lm, group: list[Story], seed: int, options: dict) -> tuple[list, float | None]:
    """Fill one batch of equal layout: (predicted middles, Σ span NLL or None)."""
    tokens, known = story_rows(group, _left_only(lm), lm.tokenizer.bos_id, lm.tokenizer.mask_id)
    tokens, known = tokens.to(lm.device), known.to(lm.device)
    blank = ~known
    options = one_step_per_blank(lm, options, int(blank.sum()))
    filled = sampling.fill(lm, tokens, known, seed=seed, **options)
    nll = None
    if conditional_support(lm):
        nll = lm.nelbo(tokens, blank[1:].expand(len(group), -1)).double().sum().item()
    return filled[:, blank].tolist(), nll


def _fill_free(lm, story: Story, seed: int, blank_max: int, options: dict) -> list[int]:
    """A3 with a free-length blank: the model picks the length (1..blank_max)."""
    s1, s2, _, s4, s5 = story.sentences
    if any("___" in s for s in story.sentences):
        raise DataError("a story contains '___', the blank marker of infilling templates")
    template = f"{s1} {s2} ___ {s4} {s5}"  # encoded as `encode_story` does (sampling.prompt)
    tokens = lm.sample(1, infill=template, blank_max=blank_max, seed=seed, **options)[0]
    return tokens[1 + len(story.prefix) : len(tokens) - len(story.suffix)].tolist()


@torch.no_grad()
def story_infill_metrics(
    lm,
    stories: Sequence[Sequence[str]],
    length: str = "given",
    batch_size: int = 16,
    blank_max: int | None = None,
    seed: int = 0,
    progress: bool = True,
    **fill_options,
) -> dict:
    """Fill sentence 3 of each story and score it (module docstring). `length`: `given` (the
    reference's token count) or `free` (a3: the model picks 1..`blank_max`, default twice the
    longest reference). `fill_options` go to `sampling.fill` (greedy unless given; samplers on
    the model's own flat schedule walk one step per blank token). Batch k uses seed `seed` + k."""
    if length not in ("given", "free"):
        raise HdlmError(f"story length '{length}' must be 'given' or 'free'")
    if length == "free" and not lm.family.is_a3:
        raise HdlmError("free-length story infilling needs an a3 model; use --story-length given")
    encoded = _encode_all(lm, stories)
    options = {"temperature": 0.0, **fill_options}
    used = sampling.settings(lm, **options)  # checks the options once, reported in the JSON
    if length == "free":
        blank_max = blank_max or 2 * max(len(s.middle) for s in encoded)
        predictions = [
            _fill_free(lm, story, seed + i, blank_max, options)
            for i, story in enumerate(tqdm(encoded, desc="stories", disable=not progress))
        ]
        nll, used["blank_max"] = None, blank_max
    else:
        predictions, nll = _fill_all(lm, encoded, batch_size, seed, progress, options)
        if "schedule" in used and not {"steps", "schedule"} & set(options):
            used["schedule"] = "flat, one step per blank token"
    texts = [lm.tokenizer.decode(p) for p in predictions]
    result = {
        "stories": len(encoded),
        "length": length,
        **rouge_scores([s.reference for s in encoded], texts),
        "token_accuracy": token_accuracy([s.middle for s in encoded], predictions),
        "reference_tokens": sum(len(s.middle) for s in encoded),
        "context": "sentences 1-2 only" if _left_only(lm) else "sentences 1-2 and 4-5",
        "fill": used,
        "examples": [{"reference": s.reference, "filled": t.strip()}
                     for s, t in itertools.islice(zip(encoded, texts, strict=True), 3)],
    }  # fmt: skip
    if nll is not None:
        scored = result["reference_tokens"]
        result.update(span_nll_per_token=nll / scored, span_perplexity=math.exp(nll / scored))
        result["span_nll_kind"] = "exact" if lm.family.objective in ("ar", "a3") else "upper bound"
    return result


def _left_only(lm) -> bool:
    """An ar model sees no text after the blank."""
    return lm.family.objective == "ar"


def _encode_all(lm, stories: Sequence[Sequence[str]]) -> list[Story]:
    """The stories' ids; a story longer than the model's context is an error."""
    encoded = [encode_story(lm.tokenizer, s) for s in stories]
    limit = lm.config.model.max_len
    for i, story in enumerate(encoded):
        size = 1 + sum(story.layout(_left_only(lm)))
        if size > limit:
            raise HdlmError(
                f"story {i} is {size} tokens, longer than the model's context ({limit}); "
                "drop long stories"
            )
    return encoded


def _fill_all(lm, encoded: list[Story], batch_size: int, seed: int, progress: bool, options):
    """(predicted middles in story order, Σ span NLL or None) with given lengths."""
    predictions: list[list[int]] = [[] for _ in encoded]
    nll: float | None = 0.0
    batches = _layout_batches(encoded, _left_only(lm), batch_size)
    for k, batch in enumerate(tqdm(batches, desc="stories", disable=not progress)):
        middles, batch_nll = _fill_given(lm, [encoded[i] for i in batch], seed + k, options)
        for i, middle in zip(batch, middles, strict=True):
            predictions[i] = middle
        nll = None if batch_nll is None or nll is None else nll + batch_nll
    return predictions, nll


def _layout_batches(stories: Sequence[Story], left_only: bool, batch_size: int) -> list[list[int]]:
    """Story indices in batches of at most `batch_size` that share a layout."""
    order = sorted(range(len(stories)), key=lambda i: stories[i].layout(left_only))
    return [
        chunk
        for _, same in itertools.groupby(order, key=lambda i: stories[i].layout(left_only))
        for chunk in _chunks(list(same), batch_size)
    ]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
