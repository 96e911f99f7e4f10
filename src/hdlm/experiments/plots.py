"""The plots of study reports: the quality–diversity frontier (sample quality against unigram
entropy), with labels placed where they do not overlap."""

from __future__ import annotations

import math
from pathlib import Path

from hdlm.files import new_figure


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); nan for one value) of finite `values`."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var / len(finite))


def place_labels(ax, points: list[tuple[float, float, str, str]], fontsize: int = 6) -> int:
    """Annotate each (x, y, label, color) at the first of a ring of offsets whose box overlaps
    no label placed before and no point marker (display coordinates); a label with no free spot
    is left out (the tables list every point). Returns how many were left out."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = []
    markers = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    offsets = [(dx * r, dy * r) for r in (4, 10, 18) for dx, dy in
               ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]  # fmt: skip
    left_out = 0
    for x, y, label, color in points:
        for dx, dy in offsets:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, ha="left" if dx >= 0 else "right",
                               va="bottom" if dy >= 0 else "top", color=color)  # fmt: skip
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            clash = any(box.overlaps(b) for b in taken) or any(
                box.contains(mx, my) for mx, my in markers
            )
            if not clash:
                taken.append(box)
                break
            text.remove()
        else:
            left_out += 1
    return left_out


def frontier_plot(
    summary: dict,
    path: Path,
    reference: float | None = None,
    quality: str = "true-nll",
    held_out_entropy: float | None = None,
    over_seeds: bool = True,
) -> None:
    """Unigram entropy (diversity) against sample quality: the NLL per token of the samples
    under the source (`quality="true-nll"`; `reference`: the source's own) or their generative
    perplexity under the judge (`"gen-ppl"`, log axis); means over seeds with standard-error
    bars (`over_seeds`; else one run per point); `held_out_entropy`: real text's unigram
    entropy, a horizontal line."""
    key = "true_noisy_nll_per_token" if quality == "true-nll" else "gen_ppl"
    fig = new_figure(figsize=(9, 6.5))
    ax = fig.subplots()
    labelled = []
    for name, settings in summary.items():
        xs, ys, xe, ye = [], [], [], []
        for label, entry in settings.items():
            (x, sx), (y, sy) = (
                mean_se(entry[key]),
                mean_se(entry["unigram_entropy"]),
            )
            if math.isnan(x) or math.isnan(y):
                continue
            xs.append(x)
            ys.append(y)
            xe.append(0 if math.isnan(sx) else sx)
            ye.append(0 if math.isnan(sy) else sy)
            labelled.append((x, y, label, f"C{len(ax.containers)}"))
        if xs:
            ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="o", ms=4, capsize=2, label=name,
                        color=f"C{len(ax.containers)}")  # fmt: skip
    if reference is not None:
        ax.axvline(reference, color="k", ls="--", lw=0.8, label="source entropy (ideal)")
    if held_out_entropy is not None:
        ax.axhline(held_out_entropy, color="grey", ls=":", lw=0.8, label="held-out text")
    judge = "the source" if quality == "true-nll" else "the reference AR model"
    if quality == "true-nll":
        ax.set_xlabel("NLL of samples under the δ-noisy source, nats/token (lower is better)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("generative perplexity under the judge AR model (lower is better)")
    ax.set_ylabel("unigram entropy of samples, nats (diversity)")
    spread = " (mean ± s.e. over seeds)" if over_seeds else ""
    ax.set_title(f"quality–diversity frontier, judged by {judge}{spread}")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    if labelled:
        ax.legend(fontsize=8, loc="best")
        if place_labels(ax, labelled):
            ax.text(0.01, 0.01, "crowded labels left out: see table.md", fontsize=6,
                    transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=150)
