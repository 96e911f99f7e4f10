"""Markdown tables of results/harness-tiny/*.json (written by scripts/harness-tiny.sh).

python3 scripts/harness_table.py [results/harness-tiny]  -> prints and writes table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def perplexity_table(folder: Path, families: list[str]) -> list[str]:
    columns = [
        ("test-split", "hash test split, 256 blocks"),
        ("zero-shot-pydocs", "pydocs-sample.txt, blocks"),
        ("zero-shot-pydocs-stride32", "pydocs-sample.txt, stride 32"),
        ("zero-shot-pydocs-mc96", "pydocs-sample.txt, blocks, 96 MC"),
        ("zero-shot-gpl", "gpl-3.raw, blocks"),
    ]
    lines = ["| family | kind | " + " | ".join(c[1] for c in columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    for family in families:
        cells = []
        for key, _ in columns:
            result = load(folder, f"{family}-{key}")
            cells.append("–" if result is None else f"{result['perplexity']:,.2f}")
        kind = "exact" if family in ("ar", "a3") else "upper bound"
        lines.append(f"| {family} | {kind} | " + " | ".join(cells) + " |")
    tokens = {k: load(folder, f"{families[0]}-{k}") for k, _ in columns}
    counts = ", ".join(f"{k}: {r['tokens']:,}" for k, r in tokens.items() if r)
    return [*lines, "", f"Tokens scored ({families[0]}): {counts}."]


def harness_table(folder: Path, families: list[str]) -> list[str]:
    metrics = [
        ("pydocs_next", "acc"), ("pydocs_next", "acc_norm"), ("pydocs_order", "acc"),
        ("pydocs_lastword", "acc"), ("pydocs_lastword", "perplexity"),
        ("pydocs_lastword_gen", "exact_match"),
        ("pydocs_ppl", "word_perplexity"), ("pydocs_ppl", "bits_per_byte"),
    ]  # fmt: skip
    lines = ["| family | " + " | ".join(f"{t} {m}" for t, m in metrics) + " |"]
    lines.append("|---|" + "---|" * len(metrics))
    for family in families:
        result = load(folder, f"{family}-harness")
        if result is None:
            continue
        result["results"].update((load(folder, f"{family}-order") or {"results": {}})["results"])
        cells = []
        for task, metric in metrics:
            values = result["results"].get(task, {})
            keys = [k for k in values if k.startswith(f"{metric},")]  # any filter's name
            value = values[keys[0]] if keys else None
            stderr = values.get(keys[0].replace(",", "_stderr,", 1)) if keys else None
            if value is None:
                cells.append("–")
                continue
            text = f"{value:,.3f}" if value < 1000 else f"{value:,.0f}"
            if isinstance(stderr, float) and metric in ("acc", "acc_norm", "exact_match"):
                text += f" ± {stderr:.3f}"
            cells.append(text)
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def story_table(folder: Path, families: list[str]) -> list[str]:
    lines = [
        "| family | sentence 3 length | context | ROUGE-1 | ROUGE-2 | ROUGE-L | token accuracy "
        "| span NLL / token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in families:
        for name in (f"{family}-story", f"{family}-story-free"):
            result = load(folder, name)
            if result is None:
                continue
            r = result["story_infill"]
            nll = r.get("span_nll_per_token")
            kind = {"exact": "", "upper bound": " (bound)"}.get(r.get("span_nll_kind"), "")
            nll_text = "–" if nll is None else f"{nll:.3f}{kind}"
            lines.append(
                f"| {family} | {r['length']} | {r['context']} | {r['rouge1']:.3f} | "
                f"{r['rouge2']:.3f} | {r['rougeL']:.3f} | {r['token_accuracy']:.3f} | {nll_text} |"
            )
    return lines


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/harness-tiny")
    families = [f for f in ("ar", "mdlm", "a3") if load(folder, f"{f}-test-split")]
    text = "\n".join([
        "## Zero-shot perplexity", "", *perplexity_table(folder, families), "",
        "## lm-evaluation-harness tasks", "", *harness_table(folder, families), "",
        "## Story infilling", "", *story_table(folder, families), "",
    ])  # fmt: skip
    (folder / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
