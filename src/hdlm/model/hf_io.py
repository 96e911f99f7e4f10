"""Reading the weights of a Hugging Face model directory one tensor at a time.

`WeightFiles` indexes model.safetensors, a sharded checkpoint (model.safetensors.index.json and
its shards), or the legacy pytorch_model.bin (sharded: pytorch_model.bin.index.json). Safetensors
tensors are read with `readinto` straight into the caller's (preallocated) tensor: the files are
not memory-mapped, so the pages read count in the OS page cache, not in this process' resident
memory, and importing a model needs about one copy of it in memory (safetensors' own `safe_open`
maps the files, and every page it touches stays resident until the file is closed).

Layout of a safetensors file: an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data;
offsets count from the end of the header.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hdlm.errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
SINGLE = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: its file, dtype, shape and absolute byte offset (safetensors)."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = 0


def safetensors_entries(path: Path) -> dict[str, Entry]:
    """The tensors of one safetensors file, after checking that the header is whole and that
    every tensor's bytes lie inside the file (a truncated download is refused here)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated (no safetensors header); download it again")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise CheckpointError(f"{path} is truncated (header cut off); download it again")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file ({e})") from e
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}"
            )
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != math.prod(shape) * dtype.itemsize or 8 + length + end > size:
            raise CheckpointError(
                f"{path} is truncated or damaged (tensor {name} lies outside the file); "
                "download it again"
            )
        entries[name] = Entry(path, dtype, shape, 8 + length + begin)
    return entries


def shard_files(directory: Path) -> list[Path]:
    """The weight files of a model directory: one file, or the shards an index lists (all of
    them must be present)."""
    for index in INDEXES:
        if (directory / index).is_file():
            try:
                weight_map = json.loads((directory / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{directory / index} is not a valid index ({e})") from e
            shards = sorted({directory / name for name in weight_map.values()})
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise CheckpointError(
                    f"{directory}: shard {missing[0]} listed in {index} is missing "
                    f"({len(missing)} of {len(shards)} shards absent); download all of them"
                )
            return shards
    for name in SINGLE:
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(
        f"{directory} has no model.safetensors, model.safetensors.index.json or "
        "pytorch_model.bin; pass a Hugging Face model directory"
    )


class WeightFiles:
    """The tensors of a model directory by name, read on demand (`read_into`, `read`)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.entries: dict[str, Entry] = {}
        self.legacy: dict[str, Tensor] = {}  # pytorch_model.bin tensors (memory-mapped)
        for path in shard_files(directory):
            if path.suffix == ".safetensors":
                self.entries.update(safetensors_entries(path))
            else:
                self.legacy.update(
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                )
        self.handles: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries or name in self.legacy

    def names(self) -> list[str]:
        return [*self.entries, *self.legacy]

    def shape(self, name: str) -> tuple[int, ...]:
        entry = self.entries.get(name)
        return entry.shape if entry is not None else tuple(self.legacy[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        entry = self.entries.get(name)
        return entry.dtype if entry is not None else self.legacy[name].dtype

    def read_into(self, name: str, out: Tensor) -> None:
        """Fill the contiguous tensor `out` with the leading elements of tensor `name` (all of
        them, or its first rows when `out` has fewer), in `name`'s dtype."""
        if name in self.legacy:
            out.copy_(self.legacy[name].flatten()[: out.numel()].view(out.shape))
            return
        entry = self.entries[name]
        if out.dtype != entry.dtype or not out.is_contiguous():
            raise ValueError(f"read_into needs a contiguous {entry.dtype} tensor")
        buffer = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        handle = self.handles.get(entry.file)
        if handle is None:
            handle = self.handles[entry.file] = open(entry.file, "rb")  # noqa: SIM115
        handle.seek(entry.offset)
        done = 0
        while done < len(buffer):
            got = handle.readinto(buffer[done:])
            if not got:
                raise CheckpointError(f"{entry.file} ended inside tensor {name}; download it again")
            done += got

    def read(self, name: str, rows: int | None = None) -> Tensor:
        """Tensor `name` (its first `rows` rows only, when given) in a new tensor."""
        shape = self.shape(name)
        out = torch.empty((rows, *shape[1:]) if rows is not None else shape, dtype=self.dtype(name))
        self.read_into(name, out)
        return out

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
        self.legacy.clear()

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
