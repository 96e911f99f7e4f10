"""Pictures of a sampling trajectory: which tokens were masked, revealed, corrected, remasked.

Every sampler records into a `Trace`: the hyperschedule sampler (what each reverse step revealed,
corrected or remasked), A3 decoding (the group each step committed: its positions are the ones
"revealed" at that step), the AR sampler (one token revealed per step) and τ-leaping (what each
step changed, `step_events`); `hdlm serve` streams the same steps live (`hdlm.serve.live`).
`write_trace(trace, tokenizer, path)` renders the first sample of a `Trace` as an HTML page (one
row per step, every token coloured by what happened to it) or as a PNG/SVG strip (steps x
positions, one colour per state), chosen by the path's suffix.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.files import new_figure


@dataclass
class Trace:
    """What happened at every step (for plots): tokens after the step and per-position events
    ([n, L-1] bool each, position 0 being BOS is left out)."""

    tokens: list[Tensor] = field(default_factory=list)  # [n, L] after each step
    revealed: list[Tensor] = field(default_factory=list)  # masked -> token (A3: committed)
    corrected: list[Tensor] = field(default_factory=list)  # token -> another token
    remasked: list[Tensor] = field(default_factory=list)  # token -> MASK
    title: str = "hdlm denoising trace"

    def add(self, tokens: Tensor, **events: Tensor) -> None:
        """Record one step: `tokens` [n, L] after it and the events [n, L-1] that happened
        (`revealed`, `corrected`, `remasked`; a missing one happened nowhere)."""
        none = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
        self.tokens.append(tokens.detach().cpu().clone())
        for name in ("revealed", "corrected", "remasked"):
            getattr(self, name).append(events.pop(name, none).detach().cpu())
        if events:
            raise TypeError(f"unknown trace events {sorted(events)}")


def step_events(before: Tensor, after: Tensor, mask_id: int) -> dict[str, Tensor]:
    """The events of a step from tokens `before` to `after` [n, L-1] (positions after BOS):
    revealed (MASK -> token), corrected (token -> another token), remasked (token -> MASK); for
    samplers that change tokens without saying why (τ-leaping)."""
    was_masked, is_masked = before == mask_id, after == mask_id
    return {
        "revealed": was_masked & ~is_masked,
        "corrected": ~was_masked & ~is_masked & (before != after),
        "remasked": ~was_masked & is_masked,
    }


# state codes, in drawing order; the colours are shared by the HTML and the strip
STATES = ("masked", "visible", "revealed", "corrected", "remasked")
COLOURS = ("#d9d9d9", "#ffffff", "#8fd18f", "#f5a623", "#e05d5d")
SUFFIXES = (".html", ".png", ".svg")


def trace_states(trace: Trace, mask_id: int, row: int = 0) -> torch.Tensor:
    """[steps, L-1] state code of every position after every step, for sample `row`."""
    tokens = torch.stack([step[row, 1:] for step in trace.tokens])
    revealed, corrected, remasked = (
        torch.stack([e[row] for e in events])
        for events in (trace.revealed, trace.corrected, trace.remasked)
    )
    return state_codes(tokens, revealed, corrected, remasked, mask_id)


def state_codes(
    tokens: Tensor, revealed: Tensor, corrected: Tensor, remasked: Tensor, mask_id: int
) -> Tensor:
    """The `STATES` code of every position: `tokens` after a step and its events, any shape."""
    states = torch.where(tokens == mask_id, 0, 1)
    for code, events in ((2, revealed), (3, corrected), (4, remasked)):
        states = torch.where(events, code, states)
    return states


def write_trace(trace: Trace, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    if not trace.tokens:
        raise HdlmError("nothing to draw: the sampler recorded no steps")
    states = trace_states(trace, tokenizer.mask_id)
    if path.suffix == ".html":
        path.write_text(_html(trace, tokenizer, states))
    elif path.suffix in (".png", ".svg"):
        _strip(states, path)
    else:
        raise HdlmError(f"--trace {path}: use a {', '.join(SUFFIXES)} file")
    return path


def _html(trace: Trace, tokenizer, states: torch.Tensor) -> str:
    legend = " ".join(
        f'<span style="background:{c};padding:2px 6px">{s}</span>'
        for s, c in zip(STATES, COLOURS, strict=True)
    )
    rows = []
    for step, (tokens, codes) in enumerate(zip(trace.tokens, states, strict=True), 1):
        cells = "".join(
            f'<span style="background:{COLOURS[code]}" title="{STATES[code]}">'
            f"{html.escape(tokenizer.decode([token]) if code else '·')}</span>"
            for token, code in zip(tokens[0, 1:].tolist(), codes.tolist(), strict=True)
        )
        rows.append(f"<tr><td>{step}</td><td style='white-space:pre-wrap'>{cells}</td></tr>")
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(trace.title)}</title>"
        "<body style='font-family:monospace'>"
        f"<p>{legend}</p><table>{''.join(rows)}</table></body>"
    )


def _strip(states: torch.Tensor, path: Path) -> None:
    """Steps x positions, one colour per state (RGB pixels), the legend naming the colours."""
    rgb = torch.tensor([[int(c[k : k + 2], 16) / 255 for k in (1, 3, 5)] for c in COLOURS])
    figure = new_figure(figsize=(10, max(2.0, 0.12 * len(states) + 1)))
    axes = figure.subplots()
    axes.imshow(rgb[states].numpy(), aspect="auto", interpolation="nearest")
    for state, colour in zip(STATES, COLOURS, strict=True):  # legend entries, nothing drawn
        axes.scatter([], [], marker="s", color=colour, edgecolors="grey", label=state)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axes.set_xlabel("position")
    axes.set_ylabel("step")
    figure.tight_layout()
    figure.savefig(path)
