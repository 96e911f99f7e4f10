"""The written result of a study: `table.md`, `frontier.png` and `results.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hdlm.experiments import plots
from hdlm.files import new_figure


def _number(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def bound_kind(exact: bool) -> str:
    return "exact" if exact else "upper bound"


def perplexity_table(results: dict) -> list[str]:
    rows = []
    for name, result in results.items():
        ppl = result["perplexity"]
        random_order = ppl.get("by_order", {}).get("random", {}).get("perplexity")
        rows.append([
            name, f"{ppl['nelbo_per_token']:.4f}", _number(ppl["perplexity"]),
            bound_kind(result["family"] in ("ar", "a3")), _number(random_order),
        ])  # fmt: skip
    header = ["family", "test NELBO (nats/token)", "test perplexity", "kind", "A3 random order"]
    return markdown(header, rows)


def sample_table(results: dict) -> list[str]:
    rows = [
        [name, label, _number(s.get("gen_ppl")), _number(s.get("mauve"), 3),
         _number(s.get("unigram_entropy"), 3), _number(s.get("distinct_2"), 3)]
        for name, result in results.items()
        for label, s in result["samples"].items()
    ]  # fmt: skip
    first = next((s for r in results.values() for s in r["samples"].values()), {})
    if "reference_unigram_entropy" in first:
        rows.append([
            "held-out text", "–", "–", "–", _number(first["reference_unigram_entropy"], 3),
            _number(first.get("reference_distinct_2"), 3),
        ])  # fmt: skip
    # sampling speed is in results/bench (`hdlm bench sample`): timings of a study that shares
    # the machine with other jobs are not comparable, so they stay in the JSON only
    header = ["family", "sampler", "gen-PPL", "MAUVE", "unigram entropy", "distinct-2"]
    return markdown(header, rows)


def infill_table(results: dict) -> list[str]:
    rows = [
        [name, f"{r['infill']['span_nll_per_token']:.4f}", _number(r["infill"]["span_perplexity"]),
         bound_kind(r["family"] == "a3"), f"{r['infill']['accuracy']:.3f}"]
        for name, r in results.items()
        if "infill" in r
    ]  # fmt: skip
    header = ["family", "span NLL (nats/token)", "span perplexity", "kind", "greedy accuracy"]
    return markdown(header, rows)


def frontier_plot(results: dict, path: Path) -> None:
    """MAUVE against generative perplexity, one point per family and sampler setting; without
    MAUVE (a study that skips it), unigram entropy against generative perplexity, with held-out
    text's entropy as a line (`plots.frontier_plot`)."""
    samples = [s for result in results.values() for s in result.get("samples", {}).values()]
    if not any(s.get("mauve") is not None for s in samples):
        summary = {name: {label: {"gen_ppl": [s.get("gen_ppl")],
                                  "unigram_entropy": [s.get("unigram_entropy")]}
                          for label, s in result.get("samples", {}).items()}
                   for name, result in results.items()}  # fmt: skip
        held_out = next((s["reference_unigram_entropy"] for s in samples
                         if s.get("reference_unigram_entropy") is not None), None)  # fmt: skip
        plots.frontier_plot(summary, path, quality="gen-ppl", held_out_entropy=held_out,
                            over_seeds=False)  # fmt: skip
        return
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    for name, result in results.items():
        points = [
            (s["gen_ppl"], s["mauve"], label)
            for label, s in result["samples"].items()
            if s.get("gen_ppl") is not None and s.get("mauve") is not None
        ]
        if not points:
            continue
        xs, ys, labels = zip(*points, strict=True)
        ax.scatter(xs, ys, label=name, s=36)
        for x, y, label in points:
            ax.annotate(
                label, (x, y), fontsize=6, alpha=0.7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_xlabel("generative perplexity under the reference AR model (lower is better)")
    ax.set_ylabel("MAUVE vs held-out text (higher is better)")
    ax.set_title("quality–diversity frontier")
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


def write_report(study, results: dict, out: Path) -> None:
    """Write table.md, frontier.png and results.json for `results` (family -> evaluations)."""
    out.mkdir(parents=True, exist_ok=True)
    budget = ", ".join(study.budget)
    lines = [
        f"# {study.name}",
        "",
        f"Every family trained with the same budget ({budget}); perplexities on the first "
        f"{study.perplexity.max_blocks} blocks of the {study.perplexity.split} split; "
        f"{study.samples.n} samples of {study.samples.length} tokens per sampler setting, "
        f"gen-PPL under the `{study.reference}` run, MAUVE against "
        f"{study.samples.references} held-out blocks; infilling of the middle "
        f"{study.infill.span} tokens of {study.infill.blocks} held-out "
        f"{study.infill.length}-token blocks.",
        "",
        "## Perplexity",
        "",
        *perplexity_table(results),
        "",
        "## Samples",
        "",
        *sample_table(results),
        "",
        "## Infilling",
        "",
        *infill_table(results),
        "",
    ]
    (out / "table.md").write_text("\n".join(lines))
    frontier_plot(results, out / "frontier.png")
    (out / "results.json").write_text(json.dumps(results, indent=2))
