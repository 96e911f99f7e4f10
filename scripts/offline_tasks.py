"""Build offline evaluation tasks from the held-out documents of the `pydocs` corpus.

    python3 scripts/offline_tasks.py [--out runs/offline-tasks] [--seed 0]

Everything comes from documents the tiny models never trained on (the validation and test
splits that `hdlm.data.split_documents` assigns by hash; `hdlm eval` scores the test split) and
is deterministic given --seed. Writes into --out:

* `tasks/pydocs_next.{yaml,jsonl}`: multiple choice — two sentences of a paragraph, then the
  true next sentence against three sentences drawn from other test documents (lm-evaluation-
  harness `multiple_choice`: acc, acc_norm);
* `tasks/pydocs_order.{yaml,jsonl}`: multiple choice — the same context, the true third sentence
  against three shuffles of its words (word order alone);
* `tasks/pydocs_lastword.{yaml,jsonl}`: LAMBADA-style — a paragraph's last word given the rest
  (`loglikelihood`: perplexity, acc = greedy), and `pydocs_lastword_gen` (`generate_until`, the
  first word generated, exact match);
* `tasks/pydocs_ppl.{yaml,jsonl}`: 200 held-out prose paragraphs (`loglikelihood_rolling`: word
  and byte perplexity, bits per byte);
* `stories.jsonl`: five consecutive prose sentences (`sentence1` ... `sentence5`; consecutive
  prose paragraphs of a document count as one run), for
  `hdlm eval --metrics story-infill`;
* `pydocs-heldout/`: one .txt file per held-out document (~0.9 MB); `pydocs-sample.txt`: the
  first held-out documents, about 60,000 characters; `gpl-3.raw`: the GNU GPL v3 text from
  Debian's common-licenses, when present (out-of-domain English, a suffix that is not .txt):
  for zero-shot `hdlm eval --data`.

Run the tasks with `hdlm harness RUN --include-path OUT/tasks --tasks pydocs_next,...`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import textwrap
from pathlib import Path

from hdlm.config import DataConfig
from hdlm.data import load_documents, split_documents
from hdlm.eval.story import split_sentences

STORY_CHARS = 450
PPL_PARAGRAPHS = 200
ZERO_SHOT_CHARS = 60_000
GPL = Path("/usr/share/common-licenses/GPL-3")
_HEADING = re.compile(r"^([=\-~^*#\"'`+.])\1{2,}\s*$")
_MARKUP_START = ("..", ">>>", "...", "* ", "- ", "| ", "+", ":", "#")


def prose_paragraphs(document: str) -> list[str | None]:
    """Paragraphs (blank-line separated, dedented) made of prose lines of one indentation,
    joined into one line; None for any other block (heading underline, list item, table,
    prompt, directive, code)."""
    out: list[str | None] = []
    for block in re.split(r"\n\s*\n", document):
        lines = textwrap.dedent(block).splitlines()
        prose = lines and not any(
            not line.strip() or line[0].isspace() or _HEADING.match(line)
            or line.lstrip().startswith(_MARKUP_START) for line in lines
        )  # fmt: skip
        out.append(" ".join(" ".join(lines).split()) if prose else None)
    return out


def good_sentence(sentence: str) -> bool:
    return 15 <= len(sentence) <= 250 and sentence[0].isupper() and sentence[-1] in ".!?"


def sentence_runs(paragraphs: list[str | None], across: bool = False) -> list[list[str]]:
    """Runs of consecutive prose-looking sentences (`good_sentence`) within each paragraph, or
    across consecutive prose paragraphs (`across`); any other sentence or block ends a run."""
    runs, run = [], []
    for paragraph in [*paragraphs, None]:
        for sentence in [*split_sentences(paragraph or ""), None]:
            if sentence is not None and good_sentence(sentence):
                run.append(sentence)
            elif sentence is not None or paragraph is None or not across:
                if run:
                    runs.append(run)
                run = []
    return runs


def choice_item(run: list[str], choices: list[str], rng: random.Random) -> dict:
    """Two sentences of `run` as context; `choices` (the true one first) in a random order."""
    order = list(range(len(choices)))
    rng.shuffle(order)
    return {
        "context": " ".join(run[:2]),
        "choices": [" " + choices[i] for i in order],
        "label": order.index(0),
    }


def next_sentence_items(docs: list[list[list[str]]], rng: random.Random) -> list[dict]:
    """Context: two sentences; choices: the true third one and three from other documents."""
    items = []
    for d, runs in enumerate(docs):
        others = [s for e, other in enumerate(docs) if e != d for run in other for s in run]
        for run in runs:
            if len(run) < 3 or len(others) < 3:
                continue
            items.append(choice_item(run, [run[2], *rng.sample(others, 3)], rng))
    return items


def word_order_items(docs: list[list[list[str]]], rng: random.Random) -> list[dict]:
    """Context: two sentences; choices: the true third one and three shuffles of its words
    (the same bytes, so acc and acc_norm agree: a test of word order alone)."""
    items = []
    for runs in docs:
        for run in (run for run in runs if len(run) >= 3):
            words = run[2].split()
            shuffles = {" ".join(rng.sample(words, len(words))) for _ in range(10)} - {run[2]}
            if len(shuffles) < 3:
                continue
            items.append(choice_item(run, [run[2], *sorted(shuffles)[:3]], rng))
    return items


def last_word_items(docs: list[list[list[str]]]) -> list[dict]:
    """A paragraph of at least two sentences without its last word (which must be alphabetic)."""
    items = []
    for runs in docs:
        for run in runs:
            text = " ".join(run)
            head, _, last = text[:-1].rpartition(" ")
            if len(run) >= 2 and last.isalpha():
                items.append({"context": head, "target": " " + last})
    return items


def stories(docs: list[list[list[str]]]) -> list[dict]:
    """Every run of five consecutive sentences (overlapping), at most `STORY_CHARS` characters in
    all (about the tiny models' 128-token block)."""
    out = []
    for runs in docs:
        for run in runs:
            for start in range(len(run) - 4):
                story = run[start : start + 5]
                if sum(map(len, story)) + 4 <= STORY_CHARS:
                    out.append({f"sentence{i + 1}": s for i, s in enumerate(story)})
    return out


HEADER = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""
MULTIPLE_CHOICE = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_target: label
doc_to_choice: choices
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""
TASKS = {  # what follows HEADER in each task's YAML
    "pydocs_next": MULTIPLE_CHOICE,
    "pydocs_order": MULTIPLE_CHOICE,
    "pydocs_lastword": """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "pydocs_lastword_gen": """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{target.strip()}}"
generation_kwargs:
  until: [".", ",", "\\n"]
  max_gen_toks: 8
filter_list:
  - name: strip
    filter:
      - function: regex
        regex_pattern: "^\\\\s*(\\\\S*)"
        group_select: 0
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
    "pydocs_ppl": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/offline-tasks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    tasks = out / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig()  # the tiny configs' corpus and split fractions
    splits = split_documents(load_documents(cfg), cfg.val_fraction, cfg.test_fraction)
    test = splits["validation"] + splits["test"]  # never trained on
    paragraphs = [prose_paragraphs(doc) for doc in test]
    docs = [sentence_runs(p) for p in paragraphs]
    long_runs = [sentence_runs(p, across=True) for p in paragraphs]  # stories
    rng = random.Random(args.seed)
    paragraphs = [" ".join(run) for runs in docs for run in runs if len(run) >= 2]
    data = {
        "pydocs_next": next_sentence_items(docs, rng),
        "pydocs_order": word_order_items(docs, rng),
        "pydocs_lastword": last_word_items(docs),
        "pydocs_ppl": [{"text": p} for p in paragraphs[:PPL_PARAGRAPHS]],
    }
    data["pydocs_lastword_gen"] = data["pydocs_lastword"]
    for name, rows in data.items():
        write_jsonl(tasks / f"{name}.jsonl", rows)
        header = HEADER.format(name=name, data=tasks / f"{name}.jsonl")
        (tasks / f"{name}.yaml").write_text(header + TASKS[name])
    write_jsonl(out / "stories.jsonl", stories(long_runs))
    folder = out / "pydocs-heldout"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i, doc in enumerate(test):
        (folder / f"{i:03d}.txt").write_text(doc)
    sample, size = [], 0  # whole held-out documents, about ZERO_SHOT_CHARS characters
    for doc in test:
        if size >= ZERO_SHOT_CHARS:
            break
        sample.append(doc)
        size += len(doc)
    (out / "pydocs-sample.txt").write_text("\n\n".join(sample) + "\n")
    if GPL.is_file():
        shutil.copyfile(GPL, out / "gpl-3.raw")
    counts = {name: len(rows) for name, rows in data.items()}
    print(json.dumps({"out": str(out), **counts, "stories": len(stories(long_runs))}))


if __name__ == "__main__":
    main()
