"""Writing files: atomic writes (a reader sees the old file or the new one, never half of one)
and the figures every plot of hdlm is drawn on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name next to `path`, unique to this process: `.NAME.TAG-PID`."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on an
    error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_figure(**options):
    """A matplotlib `Figure` (`options`: figsize, layout, ...) on an Agg canvas, outside
    pyplot (whose global state it leaves alone); it saves PNG or SVG by the file's suffix, and
    its canvas can measure text (`experiments.plots.place_labels`)."""
    # matplotlib is loaded when a picture is drawn, so that importing hdlm stays fast
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    return figure


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
