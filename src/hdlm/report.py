"""The written result of a study: `table.md`, `frontier.png` and `results.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _number(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def perplexity_table(results: dict) -> list[str]:
    lines = [
        "| family | test NELBO (nats/token) | test perplexity | kind | A3 random order |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        ppl = result["perplexity"]
        exact = result["family"] in ("ar", "a3")
        orders = ppl.get("by_order", {})
        random_order = _number(orders["random"]["perplexity"]) if "random" in orders else "–"
        lines.append(
            f"| {name} | {ppl['nelbo_per_token']:.4f} | {_number(ppl['perplexity'])} | "
            f"{'exact' if exact else 'upper bound'} | {random_order} |"
        )
    return lines


def sample_table(results: dict) -> list[str]:
    lines = [
        "| family | sampler | gen-PPL | MAUVE | unigram entropy | distinct-2 | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for label, s in result["samples"].items():
            lines.append(
                f"| {name} | {label} | {_number(s.get('gen_ppl'))} | "
                f"{_number(s.get('mauve'), 3)} | {_number(s.get('unigram_entropy'), 3)} | "
                f"{_number(s.get('distinct_2'), 3)} | {_number(s.get('tokens_per_second'), 0)} |"
            )
    references = [s for r in results.values() for s in r["samples"].values()]
    if references and "reference_unigram_entropy" in references[0]:
        first = references[0]
        lines.append(
            f"| held-out text | – | – | – | {_number(first['reference_unigram_entropy'], 3)} | "
            f"{_number(first.get('reference_distinct_2'), 3)} | – |"
        )
    return lines


def infill_table(results: dict) -> list[str]:
    lines = [
        "| family | span NLL (nats/token) | span perplexity | kind | greedy accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "infill" not in result:
            continue
        infill = result["infill"]
        exact = result["family"] == "a3"
        lines.append(
            f"| {name} | {infill['span_nll_per_token']:.4f} | "
            f"{_number(infill['span_perplexity'])} | {'exact' if exact else 'upper bound'} | "
            f"{infill['accuracy']:.3f} |"
        )
    return lines


def frontier_plot(results: dict, path: Path) -> None:
    """MAUVE against generative perplexity, one point per family and sampler setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
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
    plt.close(fig)


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
