"""The written result of a study with several seeds per family: every number is a mean over the
seeds ± its standard error (`table.md`, `frontier.png`, `results.json`).

Sample quality is judged by the source itself where the corpus is synthetic (`true-nll`): the
frontier plots the exact NLL per token of the samples against their unigram entropy. On real
text the judge is the study's reference model (`gen-ppl`, with MAUVE): the frontier plots
generative perplexity against unigram entropy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hdlm.experiments.plots import frontier_plot, mean_se
from hdlm.experiments.report import bound_kind, markdown

TRUE_NLL_COLUMNS = (  # (result key, column title, digits)
    ("true_noisy_nll_per_token", "NLL, δ-noisy source", 3),
    ("true_noisy_nll_gap", "gap to its entropy", 3),
    ("true_nll_per_token", "NLL, exact source (possible samples)", 3),
    ("true_impossible_fraction", "impossible under the exact source", 3),
    ("unigram_entropy", "unigram entropy", 3),
    ("distinct_2", "distinct-2", 3),
)
GEN_PPL_COLUMNS = (
    ("gen_ppl", "gen-PPL (judge)", 1),
    ("mauve", "MAUVE", 3),
    ("unigram_entropy", "unigram entropy", 3),
    ("distinct_2", "distinct-2", 3),
)


def sample_columns(first: dict) -> tuple[tuple[str, str, int], ...]:
    """The sample columns of a study: the source's exact NLL when its samples have one
    (`true-nll`), else the judge's generative perplexity."""
    return TRUE_NLL_COLUMNS if "true_noisy_nll_per_token" in first else GEN_PPL_COLUMNS


def pm(values: list[float], digits: int = 3, sign: str = "") -> str:
    """`mean ± se (n)` of `values` (`sign="+"`: always signed); `–` when there is none."""
    mean, se = mean_se(values)
    if math.isnan(mean):
        return "–"
    n = sum(1 for v in values if v is not None and math.isfinite(v))
    spread = "" if math.isnan(se) else f" ± {se:.{digits}f}"
    return f"{mean:{sign}.{digits}f}{spread}" + (f" (n={n})" if n < len(values) else "")


def by_family(results: dict) -> dict[str, list[dict]]:
    """Run results grouped by study family, in the order the runs appear."""
    groups: dict[str, list[dict]] = {}
    for run, result in results.items():
        groups.setdefault(result.get("study_family", run), []).append(result)
    return groups


def perplexity_rows(groups: dict[str, list[dict]]) -> list[str]:
    rows = []
    for name, runs in groups.items():
        ppl = [r["perplexity"] for r in runs]
        terms = [p.get("nelbo_terms_per_token", {}) for p in ppl]
        rows.append([
            name, str(len(runs)), pm([p["nelbo_per_token"] for p in ppl]),
            pm([t.get("diffusion") for t in terms]), pm([t.get("reconstruction") for t in terms]),
            bound_kind(runs[0]["family"] in ("ar", "a3")),
        ])  # fmt: skip
    header = ["family", "seeds", "test NELBO (nats/token)", "diffusion term",
              "reconstruction term", "kind"]  # fmt: skip
    return markdown(header, rows)


def infill_rows(groups: dict[str, list[dict]]) -> list[str]:
    """Span NLL and greedy accuracy of infilling, mean ± s.e. over the seeds that have one."""
    rows = []
    for name, runs in groups.items():
        fills = [r["infill"] for r in runs if "infill" in r]
        if fills:
            rows.append([
                name, str(len(fills)), pm([f["span_nll_per_token"] for f in fills]),
                bound_kind(runs[0]["family"] == "a3"), pm([f["accuracy"] for f in fills]),
            ])  # fmt: skip
    header = ["family", "seeds", "span NLL (nats/token)", "kind", "greedy accuracy"]
    return markdown(header, rows) if rows else []


def sample_summary(groups: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """family -> sampler label -> {key: (mean, se), "n": seeds} over the seeds' samples."""
    out: dict[str, dict[str, dict]] = {}
    for name, runs in groups.items():
        labels = dict.fromkeys(label for r in runs for label in r["samples"])
        for label in labels:
            values = [r["samples"][label] for r in runs if label in r["samples"]]
            keys = {key for key, _, _ in (*TRUE_NLL_COLUMNS, *GEN_PPL_COLUMNS)}
            entry = {key: [v.get(key) for v in values] for key in keys}
            out.setdefault(name, {})[label] = entry | {"n": len(values)}
    return out


def first_sample(groups: dict[str, list[dict]]) -> dict:
    """The first sample evaluation of the study (which metrics it has), {} when none."""
    return next((s for runs in groups.values() for r in runs for s in r["samples"].values()), {})


def sample_rows(summary: dict, groups: dict[str, list[dict]]) -> list[str]:
    first = first_sample(groups)
    columns = sample_columns(first)
    rows = [
        [name, label, str(entry["n"]), *(pm(entry[key], d) for key, _, d in columns)]
        for name, settings in summary.items()
        for label, entry in settings.items()
    ]
    if "true_noisy_window_entropy" in first:
        rows.append([
            "the source itself", "–", "–",
            f"{first['true_noisy_window_entropy']:.3f} ± "
            f"{first['true_noisy_window_entropy_stderr']:.3f}", "0",
            f"{first['true_window_entropy']:.3f} ± {first['true_window_entropy_stderr']:.3f}",
            "0", pm([first.get("reference_unigram_entropy")]),
            pm([first.get("reference_distinct_2")]),
        ])  # fmt: skip
    if columns is GEN_PPL_COLUMNS and first:
        held_out = [
            pm([first.get(f"reference_{key}")]) for key in ("unigram_entropy", "distinct_2")
        ]
        rows.append(["held-out text", "–", "–", "–", "–", *held_out])
    header = ["family", "sampler", "seeds", *(title for _, title, _ in columns)]
    return markdown(header, rows)


def difference(a: list[float], b: list[float], digits: int = 3) -> str:
    """`mean(a) - mean(b) ± sqrt(se_a² + se_b²)` of two independent groups of seeds."""
    (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
    if math.isnan(ma) or math.isnan(mb):
        return "–"
    spread = math.hypot(sa, sb)
    return f"{ma - mb:+.{digits}f}" + ("" if math.isnan(spread) else f" ± {spread:.{digits}f}")


def baseline_rows(groups: dict[str, list[dict]], baseline: str) -> list[str]:
    """Each family's test NELBO minus the baseline family's (claim 1: hybrid noising beats
    MDLM), mean ± the standard error of the difference; negative is better than the baseline."""
    if baseline not in groups:
        return []
    nelbo = {n: [r["perplexity"]["nelbo_per_token"] for r in runs] for n, runs in groups.items()}
    rows = [
        [name, f"{len(values)} vs {len(nelbo[baseline])}", difference(values, nelbo[baseline])]
        for name, values in nelbo.items()
        if name != baseline
    ]
    return markdown(["family", "seeds", f"test NELBO minus {baseline}'s (nats/token)"], rows)


def quality_key(first: dict) -> str:
    """The per-token NLL that judges samples: the δ-noisy source's, else the judge model's."""
    truth = "true_noisy_nll_per_token"
    return truth if truth in first else "gen_ppl_nll_per_token"


def paired_sampler_rows(groups: dict[str, list[dict]], key: str) -> list[str]:
    """Each sampler setting against its family's first setting with the same steps and
    hyperschedule (claim 2: ACS lowers generative perplexity at similar diversity), paired by
    seed (same model, same sampling seed): the difference in the samples' NLL per token (`key`)
    and in their unigram entropy, mean ± standard error over the seeds that have both."""
    rows = []
    for name, runs in groups.items():
        baselines: dict[tuple, str] = {}
        for label in dict.fromkeys(label for r in runs for label in r["samples"]):
            options = next(r["samples"][label] for r in runs if label in r["samples"])
            chosen = options.get("sampler_options", {})
            base = baselines.setdefault((chosen.get("steps"), chosen.get("schedule")), label)
            pairs = [r["samples"] for r in runs if label in r["samples"] and base in r["samples"]]
            if base == label or not pairs:
                continue
            deltas = {
                column: [s[label].get(column, math.nan) - s[base].get(column, math.nan)
                         for s in pairs]
                for column in (key, "unigram_entropy")
            }  # fmt: skip
            ratio = math.exp(mean_se(deltas[key])[0]) if key == "gen_ppl_nll_per_token" else None
            ratio_cell = [] if ratio is None else [f"{ratio:.2f}"]
            rows.append([
                name, label, base, str(len(pairs)), pm(deltas[key], sign="+"), *ratio_cell,
                pm(deltas["unigram_entropy"], sign="+"),
            ])  # fmt: skip
    judge = "judge" if key == "gen_ppl_nll_per_token" else "δ-noisy source"
    header = ["family", "sampler", "against", "seeds", f"Δ NLL of samples ({judge}, nats/token)",
              *(["gen-PPL ×"] if key == "gen_ppl_nll_per_token" else []),
              "Δ unigram entropy"]  # fmt: skip
    return markdown(header, rows) if rows else []


def comparison_lines(study, groups: dict[str, list[dict]], first: dict) -> list[str]:
    """The differences the claims are about, with their standard errors."""
    lines = []
    if study.baseline and study.baseline in groups:
        table = baseline_rows(groups, study.baseline)
        lines += [f"### Test NELBO against {study.baseline}", "", *table, ""]
    paired = paired_sampler_rows(groups, quality_key(first)) if first else []
    if paired:
        lines += [
            "### Samplers against the family's first setting at the same steps (paired by seed)",
            "",
            "Negative Δ NLL: the samples are more likely (better); Δ unigram entropy: more "
            "diverse when positive.",
            "",
            *paired,
            "",
        ]
    return ["## Differences", "", *lines] if lines else []


TRUE_NLL_INTRO = (
    "scored by the exact likelihood of the corpus' source: under the δ-noisy source (each token "
    "replaced by a uniform one with probability δ = 0.01, so that every sample has a finite "
    "NLL; the gap is to that source's own entropy per token of a window, what samples of it "
    "score) and under the exact source (NLL of the samples it can emit; impossible: the share "
    "it cannot, e.g. an EOS out of place). Entropy: nats; `the source itself`: its window "
    "entropies and held-out text's diversity."
)


def gen_ppl_intro(study) -> str:
    return (
        f"scored by the judge, the study's reference run `{study.reference}`: generative "
        "perplexity (exp of its mean NLL per token of the samples), MAUVE against "
        f"{study.samples.references} held-out blocks (its features), unigram entropy (nats) "
        "and distinct-2; `held-out text`: the same diversity measures of real blocks."
    )


def write_seeded_report(study, results: dict, out: Path) -> None:
    """table.md, frontier.png and results.json of a study with `study.seeds` runs per family."""
    out.mkdir(parents=True, exist_ok=True)
    groups = by_family(results)
    summary = sample_summary(groups)
    first = first_sample(groups)
    quality = "true-nll" if sample_columns(first) is TRUE_NLL_COLUMNS else "gen-ppl"
    lines = [
        f"# {study.name}",
        "",
        f"Every family trained with seeds 0..{study.seeds - 1} (unless the study gives it fewer) "
        f"with the same budget ({', '.join(study.budget)}) and its own settings of the study "
        "config. Each cell: mean ± standard error over the seeds. Perplexities on the first "
        f"{study.perplexity.max_blocks} blocks of the {study.perplexity.split} split; "
        f"{study.samples.n} samples of {study.samples.length} tokens per sampler setting, "
        + (TRUE_NLL_INTRO if quality == "true-nll" else gen_ppl_intro(study)),
        "",
        "## Perplexity",
        "",
        *perplexity_rows(groups),
        "",
        "## Samples",
        "",
        *sample_rows(summary, groups),
        "",
    ]
    lines += comparison_lines(study, groups, first)
    infill = infill_rows(groups)
    if infill:
        lines += [
            f"## Infilling (middle {study.infill.span} of {study.infill.length} tokens, "
            f"{study.infill.blocks} held-out blocks)",
            "",
            *infill,
            "",
        ]
    (out / "table.md").write_text("\n".join(lines))
    reference = first.get("true_noisy_window_entropy")
    held_out = first.get("reference_unigram_entropy")
    frontier_plot(summary, out / "frontier.png", reference, quality, held_out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
