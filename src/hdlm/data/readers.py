"""Documents of a corpus, read one at a time in a fixed order, and a description of the corpus
that changes when its content may have (the token store's key).

Local files, by suffix (each also as .gz or .zst, as public corpora ship them):

* `.txt`, `.md`: one document per file (a file named on its own is one document whatever its
  suffix, e.g. WikiText's `wiki.test.raw`);
* `.jsonl`, `.json` (JSON lines, or one JSON array of records) and `.parquet`: one document per
  record, its text in `data.text_field`.

A folder is read as its text files, then its record files, each group sorted by path. A Hugging
Face dataset name is read in streaming mode: nothing is downloaded beyond the records read, so
`data.max_documents` bounds the download too. Built-in corpora: `pydocs`, `synthetic`, `hmm`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from pydoc_data.topics import topics
from urllib.parse import urlsplit

import numpy as np
import zstandard
from huggingface_hub import constants as hub_constants

from hdlm.config import DataConfig
from hdlm.data.sources import HiddenMarkov, markov_chain, synthetic_alphabet
from hdlm.errors import DataError

PYDOCS_DIR = "/usr/share/doc/python3.11-doc/html/_sources"  # Debian package python3.11-doc
TEXT_SUFFIXES = (".txt", ".md")  # one document per file
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")  # one document per record
COMPRESSIONS = ("", ".gz", ".zst")
READER_VERSION = 2  # part of every store key: bump when a reader's output changes
PARQUET_BATCH = 1024  # rows read at a time from a parquet file
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_PROBE_SECONDS = 5.0

# reStructuredText that is markup only. Dropped with their indented body: the directives below,
# comments and link targets (".. " then anything but a directive, footnote or substitution).
# Dropped alone: a directive without argument (".. note::") and a directive option (":noindex:").
_RST_BLOCK = re.compile(
    r"\.\. ((index|toctree|module|currentmodule|moduleauthor|sectionauthor|highlight|"
    r"tabularcolumns|testsetup|testcleanup|include|literalinclude)::|(?![\w:-]+::|\[|\|))"
)
_RST_LINE = re.compile(r"\s*(\.\. [\w-]+::|:[\w-]+:(\s.*)?)")


def iter_documents(cfg: DataConfig, hub_split: str | None = None) -> Iterator[str]:
    """The non-empty documents of `cfg.corpus` in a deterministic order, at most max_documents
    (of a Hub dataset: every split in its order, or only `hub_split`)."""
    if cfg.corpus == "pydocs":
        docs = pydocs_documents()
    elif cfg.corpus == "synthetic":
        docs = synthetic_documents(cfg)
    elif cfg.corpus == "hmm":
        docs = hmm_documents(cfg)
    else:
        path = Path(cfg.corpus).expanduser()
        docs = (
            local_documents(path, cfg.text_field)
            if path.exists()
            else hub_documents(cfg, hub_split)
        )
    return islice((d for d in docs if d), cfg.max_documents)


def describe_source(cfg: DataConfig) -> dict:
    """What identifies the corpus' documents without reading them: the built-in corpus' settings,
    each local file's path, size and modification time, or the Hub dataset's name."""
    described = {"corpus": cfg.corpus, "reader_version": READER_VERSION,
                 "max_documents": cfg.max_documents}  # fmt: skip
    if cfg.corpus == "pydocs":
        root = pydocs_root()
        return described | {"files": _file_stamps(sorted(root.rglob("*.rst.txt")), root)}
    if cfg.corpus in ("synthetic", "hmm"):
        return described | {cfg.corpus: repr(getattr(cfg, cfg.corpus))}
    path = Path(cfg.corpus).expanduser()
    if path.exists():
        root = path if path.is_dir() else path.parent
        stamps = _file_stamps(local_files(path), root)
        return described | {"path": str(path.resolve()), "files": stamps,
                            "text_field": cfg.text_field}  # fmt: skip
    return described | {"hub": cfg.corpus, "subset": cfg.hf_subset, "text_field": cfg.text_field}


def _file_stamps(files: list[Path], root: Path) -> list[list]:
    stats = [f.stat() for f in files]
    return [
        [str(f.relative_to(root)), s.st_size, s.st_mtime_ns]
        for f, s in zip(files, stats, strict=True)
    ]


# ----------------------------------------------------------------------------- built-in corpora


def pydocs_root() -> Path:
    return Path(os.environ.get("HDLM_PYDOCS_DIR", PYDOCS_DIR))


def pydocs_documents() -> Iterator[str]:
    """One document per .rst.txt source of the Python docs (markup-only lines removed)."""
    root = pydocs_root()
    files = sorted(root.rglob("*.rst.txt"))
    if files:
        return (strip_rst_markup(f.read_text(encoding="utf-8")) for f in files)
    print(
        f"hdlm: warning: {root} has no Python docs, so corpus pydocs is the small fallback "
        "pydoc_data.topics (~0.5 MB); for the full corpus (~12 MB): apt-get install python3.11-doc",
        file=sys.stderr,
    )
    return (topics[name] for name in sorted(topics))


def strip_rst_markup(text: str) -> str:
    kept, block_indent = [], None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue  # inside a dropped block
        block_indent = None
        if _RST_BLOCK.match(line.lstrip()):
            block_indent = indent
        elif not _RST_LINE.fullmatch(line):
            kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def synthetic_documents(cfg: DataConfig) -> list[str]:
    """`n_docs` strings of `doc_len` symbols sampled from the seeded Markov chain."""
    s = cfg.synthetic
    states = markov_chain(s).sample(s.n_docs, s.doc_len, seed=s.seed + 1)  # seed drew P itself
    return _spell(states, s.n_states)


def hmm_documents(cfg: DataConfig) -> list[str]:
    """`n_docs` strings of `doc_len` symbols drawn from the seeded hidden Markov source."""
    h = cfg.hmm
    source = HiddenMarkov.random(h.n_hidden, h.n_symbols, h.stay, h.concentration, h.seed)
    return _spell(source.sample(h.n_docs, h.doc_len, h.seed + 1), h.n_symbols)


def _spell(symbols: np.ndarray, n_symbols: int) -> list[str]:
    alphabet = np.array(list(synthetic_alphabet(n_symbols)))
    return ["".join(row) for row in alphabet[symbols]]


# ----------------------------------------------------------------------------- local files


def _kind(path: Path) -> str:
    """The suffix that says how to read a file, compression removed ('.jsonl' for x.jsonl.zst)."""
    name = path.name
    for compression in COMPRESSIONS[1:]:
        name = name.removesuffix(compression)
    return Path(name).suffix


def local_files(path: Path) -> list[Path]:
    """The files of a local corpus in reading order: a named file, or a folder's text files then
    its record files, each sorted by path."""
    if path.is_file():
        return [path]
    found = sorted(f for f in path.rglob("*") if f.is_file())
    texts = [f for f in found if _kind(f) in TEXT_SUFFIXES]
    records = [f for f in found if _kind(f) in RECORD_SUFFIXES]
    if not texts + records:
        suffixes = "/".join(TEXT_SUFFIXES + RECORD_SUFFIXES)
        raise DataError(f"corpus path {path} holds no {suffixes} file (or .gz/.zst); add some")
    return texts + records


def local_documents(path: Path, text_field: str) -> Iterator[str]:
    """The documents of a local file or folder (module docstring)."""
    for file in local_files(path):
        if _kind(file) in RECORD_SUFFIXES:
            yield from _records(file, text_field)
        else:
            with _opened(file) as f:
                yield _read(f, file)


@contextmanager
def _opened(file: Path):
    """`file` opened as text (universal newlines), decompressed by its .gz / .zst suffix."""
    try:
        if file.name.endswith(".gz"):
            f = gzip.open(file, "rt", encoding="utf-8")  # noqa: SIM115 (closed below)
        elif file.name.endswith(".zst"):
            f = io.TextIOWrapper(zstandard.open(file, "rb"), encoding="utf-8")
        else:
            f = open(file, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise DataError(f"cannot open corpus file {file} ({e}); check it is readable") from e
    with f:
        yield f


def _read(f, file: Path, size: int = -1) -> str:
    """f.read(size), with a broken compressed stream or bad UTF-8 as a DataError naming `file`."""
    try:
        return f.read(size)
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {file} is not UTF-8 text ({e}); convert it") from e
    except Exception as e:  # gzip.BadGzipFile, EOFError (truncated), zstandard.ZstdError, ...
        raise DataError(
            f"corpus file {file} cannot be read ({type(e).__name__}: {e}); it is corrupt or "
            "truncated: download it again"
        ) from e


def _records(file: Path, text_field: str) -> Iterator[str]:
    """The `text_field` of each record of a .jsonl / .json / .parquet file (null: skipped)."""
    if _kind(file) == ".parquet":
        yield from _parquet_texts(file, text_field)
        return
    with _opened(file) as f:
        first = _read(f, file, 1)
        while first.isspace():
            first = _read(f, file, 1)
        if first == "[":  # one JSON array of records
            rows = enumerate(_json_array(first + _read(f, file), file), 1)
        else:  # JSON lines
            lines = _lines(f, file, first)
            rows = ((n, _json_line(line, file, n)) for n, line in lines if line.strip())
        for n, record in rows:
            text = _text_of(record, text_field, file, n)
            if text is not None:
                yield text


def _lines(f, file: Path, first: str) -> Iterator[tuple[int, str]]:
    number, line = 1, first + _readline(f, file)
    while line:
        yield number, line
        number, line = number + 1, _readline(f, file)


def _readline(f, file: Path) -> str:
    try:
        return f.readline()
    except Exception:
        return _read(f, file)  # raises the DataError that names the file


def _json_line(line: str, file: Path, number: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{file} line {number} is not JSON ({e}); fix or remove that line") from e


def _json_array(text: str, file: Path) -> list:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{file} is not a JSON array or JSON lines ({e}); fix the file") from e


def _text_of(record, text_field: str, file: Path, number: int) -> str | None:
    if not isinstance(record, dict) or text_field not in record:
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{file} record {number} has no field data.text_field='{text_field}' (it has: "
            f"{fields}); set data.text_field to the field that holds the text"
        )
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(
            f"{file} record {number}: field '{text_field}' holds {type(text).__name__}, not "
            "text; set data.text_field to the field that holds the text"
        )
    return text


def _parquet_texts(file: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # installed with `datasets`; only parquet corpora need it

    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
    except Exception as e:
        raise DataError(f"{file} is not a readable parquet file ({e}); check the file") from e
    if text_field not in names:
        raise DataError(
            f"{file} has no column data.text_field='{text_field}'; set data.text_field to one "
            f"of: {', '.join(names)}"
        )
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=[text_field]):
        yield from batch.column(0).to_pylist()


# ----------------------------------------------------------------------------- the Hub


def hub_documents(cfg: DataConfig, split: str | None = None) -> Iterator[str]:
    """The `text_field` of every record of a Hub dataset, split after split in the dataset's
    order (or of its split `split`), streamed: records are downloaded as they are read."""
    if split is not None:
        yield from hub_texts(hub_dataset(cfg, split, streaming=True), cfg)
        return
    for records in hub_dataset(cfg, streaming=True).values():
        yield from hub_texts(records, cfg)


def hub_texts(dataset: Iterable, cfg: DataConfig) -> Iterator[str]:
    """The text column of a (streamed or loaded) dataset, with a missing column named."""
    for record in dataset:
        if cfg.text_field not in record:
            raise DataError(
                f"corpus '{cfg.corpus}' has no column data.text_field='{cfg.text_field}'; "
                f"set data.text_field to one of: {', '.join(record)}"
            )
        yield record[cfg.text_field]


def hub_dataset(cfg: DataConfig, split: str | None = None, streaming: bool = False):
    """`datasets.load_dataset(cfg.corpus, cfg.hf_subset, split=split, streaming=streaming)`: all
    splits or the one named; a DataError that names the problem when it fails."""
    if looks_like_path(cfg.corpus):
        raise DataError(
            f"corpus path {cfg.corpus} not found; give an existing file or folder "
            "(.txt/.md/.json/.jsonl/.parquet), or data.corpus=pydocs or synthetic"
        )
    check_hub_reachable(f"corpus '{cfg.corpus}'")
    import datasets  # heavy: imported only when a corpus comes from the Hub

    try:
        return datasets.load_dataset(cfg.corpus, cfg.hf_subset, split=split, streaming=streaming)
    except Exception as e:
        reason = next(iter(str(e).splitlines()), type(e).__name__)
        which = f"split '{split}' of corpus" if split else "corpus"
        raise DataError(
            f"could not load {which} '{cfg.corpus}' from the Hugging Face hub ({reason}); check "
            "the name, data.hf_subset, --split and the connection, or use data.corpus=pydocs, "
            "synthetic or a local path"
        ) from e


def check_hub_reachable(what: str) -> None:
    """A DataError at once when the Hugging Face hub cannot be reached, instead of the hub
    clients' half minute of retries. Skipped when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set:
    then the local cache answers."""
    if any(os.environ.get(v, "0").lower() not in ("0", "", "false", "no") for v in OFFLINE_VARS):
        return
    if hub_constants.HF_HUB_OFFLINE:  # read from the environment when huggingface_hub loaded
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as e:
        raise DataError(
            f"cannot reach the Hugging Face hub at {endpoint} for {what} "
            f"({e.strerror or type(e).__name__}); check the connection, or set HF_HUB_OFFLINE=1 "
            "to use what is already in the local cache"
        ) from e


def looks_like_path(corpus: str) -> bool:
    """Hub names are `name` or `owner/name`; a leading / . ~, more slashes or a suffix: a path."""
    suffixes = tuple(s + c for s in TEXT_SUFFIXES + RECORD_SUFFIXES for c in COMPRESSIONS)
    return corpus.startswith(("/", ".", "~")) or corpus.count("/") > 1 or corpus.endswith(suffixes)
