"""Render the numbers of README.md and docs/*.md from the committed results, or check them.

    python scripts/render-docs.py          # rewrite every marked number from its results file
    python scripts/render-docs.py --check  # exit 1, naming file, line and source, on any drift
    python scripts/render-docs.py --check FILE...   # only these Markdown files

Markers are HTML comments, invisible when the Markdown is rendered; the text between a marker
and its end is what the script owns (paths relative to the repository root; fields separated
by ";", since a "|" would split a Markdown table row):

    <!--include results/study-tiny/table.md#Perplexity-->...<!--/include-->
        a section of a results Markdown file (the lines under that heading, up to the next
        heading of the same or a higher level), or all of it without #Heading
    <!--cell results/study-pydocs/table.md#Samples; mdlm & ancestral-steps128; gen-PPL; ,.0f-->
    2,444<!--/cell--> (on one line in a document)
        one cell of a Markdown table in that section: the row whose first columns are the given
        keys (separated by "&"), the column of that header; with a format, its first number
        formatted so
    <!--value results/bench/data.json; sizes/1024/start_store/data_seconds; .2f-->0.56<!--/value-->
        one value of a JSON file, by its /-separated keys
    <!--calc .1f; value("results/x.json", "a/b") / value("results/x.json", "c")-->1.5<!--/calc-->
        a Python expression over value(path, keys), cell(path#heading, rowkeys, column), num(text)
        (a cell's first number) and log
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--(include|cell|value|calc) (.*?)-->(.*?)<!--/\1-->", re.DOTALL)
NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?")


class DocError(Exception):
    """A marker that cannot be rendered (bad path, key, row or column)."""


@cache
def read(path: str) -> str:
    file = ROOT / path
    if not file.is_file():
        raise DocError(f"{path} does not exist")
    return file.read_text()


def section(spec: str) -> str:
    """The lines of `path#Heading` under that heading (all of the file without #)."""
    path, _, heading = spec.partition("#")
    text = read(path.strip())
    if not heading:
        return text.strip("\n")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:].strip() == heading.strip():
            depth = [len(x) - len(x.lstrip("#")) for x in lines]
            later = (j for j in range(i + 1, len(lines)) if 0 < depth[j] <= level)
            end = next(later, len(lines))
            return "\n".join(lines[i + 1 : end]).strip("\n")
    raise DocError(f"{path} has no heading '{heading}'")


def cell(spec: str, row: str, column: str) -> str:
    """The cell of the first Markdown table of `spec`'s section in the row whose first columns
    are `row` (keys separated by "&") and the column headed `column`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section(spec).splitlines() if line.strip().startswith("|")]  # fmt: skip
    if len(rows) < 3:
        raise DocError(f"{spec} holds no table")
    header, body = rows[0], rows[2:]
    if column not in header:
        raise DocError(f"{spec} has no column '{column}' (it has: {', '.join(header)})")
    keys = [k.strip() for k in row.split("&")]
    for cells in body:
        if cells[: len(keys)] == keys:
            return cells[header.index(column)]
    raise DocError(f"{spec} has no row {keys}")


def value(path: str, keys: str):
    node = json.loads(read(path.strip()))
    for key in keys.strip().split("/"):
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError) as e:
            raise DocError(f"{path} has no {keys.strip()} (at '{key}')") from e
    return node


def num(text) -> float:
    """The first number of a table cell ("2,444.8 ± 34.4" -> 2444.8; "52.9%" -> 52.9)."""
    if not isinstance(text, str):
        return float(text)
    match = NUMBER.search(text)
    if match is None:
        raise DocError(f"'{text}' holds no number")
    return float(match.group().replace(",", ""))


def formatted(found, spec: str | None) -> str:
    """`found` formatted by `spec`; a string's first number when it is not a number itself."""
    if not spec:
        return str(found)
    return format(num(found), spec.strip())


def render_marker(kind: str, spec: str) -> str:
    """The text a marker owns, computed from the results."""
    fields = [f.strip() for f in spec.split(";")]
    if kind == "include":
        return "\n" + section(spec) + "\n"
    if kind == "cell":
        return formatted(cell(*fields[:3]), fields[3] if len(fields) > 3 else None)
    if kind == "value":
        return formatted(value(*fields[:2]), fields[2] if len(fields) > 2 else None)
    fmt, _, expression = spec.partition(";")
    try:
        names = {"value": value, "cell": cell, "num": num, "log": math.log, "__builtins__": {}}
        result = eval(expression, names)  # noqa: S307
    except DocError:
        raise
    except Exception as e:
        raise DocError(f"calc '{expression.strip()}' failed: {e}") from e
    return formatted(result, fmt)


def render(path: str, text: str) -> tuple[str, list[str]]:
    """`text` with every marker's text computed, and one line per marker that could not be
    (its text is left as it was)."""
    problems = []

    def one(m: re.Match) -> str:
        try:
            return f"<!--{m[1]} {m[2]}-->{render_marker(m[1], m[2])}<!--/{m[1]}-->"
        except DocError as e:
            problems.append(f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {e}")
            return m[0]

    return MARKER.sub(one, text), problems


def drift(path: str, text: str) -> list[str]:
    """One line per marker whose text differs from what its results say."""
    problems = []
    for m in MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        try:
            wanted = render_marker(m[1], m[2])
        except DocError as e:
            problems.append(f"{path}:{line}: {e}")
            continue
        if m[3] != wanted:
            shown = m[3] if len(m[3]) < 60 else m[3][:57] + "..."
            problems.append(f"{path}:{line}: '{shown.strip()}' but {m[1]} {m[2].strip()} says "
                            f"'{wanted.strip()[:60]}'")  # fmt: skip
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description="render or check the numbers of the docs")
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    parser.add_argument("files", nargs="*", help="Markdown files (default: README and docs/)")
    args = parser.parse_args()
    files = args.files or [str(ROOT / f) for f in DOCS]
    problems, markers = [], 0
    for name in files:
        path = Path(name)
        text = path.read_text()
        markers += len(MARKER.findall(text))
        if args.check:
            problems += drift(name, text)
            continue
        rendered, failed = render(name, text)
        problems += failed
        if rendered != text:
            path.write_text(rendered)
            print(f"rendered {name}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{markers} marked numbers and tables in {len(files)} files agree with the results")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
