"""The safetensors layout, read and written in pieces without a tensor library.

A safetensors file is a little-endian u64 header length N, N bytes of JSON (name -> dtype, shape and
byte offsets into the data; `__metadata__` -> strings), then the tensor data. `TensorFile` parses the
header and reads any byte range of a tensor with positional reads (`os.preadv`) straight into the caller's
buffer: one kernel copy, no memory map whose touched pages pile up as resident memory, and safe to call from
several threads at once. `header` builds the header of a file whose tensors are then appended in order.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

ITEMSIZE = {
    **{"F64": 8, "F32": 4, "F16": 2, "BF16": 2},
    **{"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1},
}
FLOATS = {"F64", "F32", "F16", "BF16"}
# how a worker holds each float dtype's raw elements: bf16 as its bit pattern (numpy has no bf16)
RAW = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}
_MAX_HEADER = 100 << 20  # the safetensors format's own limit on the JSON header


class TensorFile:
    """An open safetensors file: `tensors[name] = (dtype, shape)` and positional reads of their bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            self.tensors, self._offsets = self._parse()
        except BaseException:
            os.close(self.fd)
            raise

    def _parse(self) -> tuple[dict[str, tuple[str, list[int]]], dict[str, int]]:
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, 8, 0)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{self.path}: not a safetensors file (header length {n}, file size {size})")
        try:
            table = json.loads(os.pread(self.fd, n, 8))
        except ValueError as e:
            raise ValueError(f"{self.path}: not a safetensors file (header is not JSON: {e})") from e
        tensors, offsets, base = {}, {}, 8 + n
        for name, entry in table.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{self.path}: header entry {name!r} is malformed ({e!r})") from e
            if dtype not in ITEMSIZE:
                raise ValueError(
                    f"{self.path}: tensor {name} has dtype {dtype}; expected one of {sorted(ITEMSIZE)}"
                )
            if end - start != math.prod(shape) * ITEMSIZE[dtype] or not 0 <= start <= end <= size - base:
                raise ValueError(f"{self.path}: tensor {name}'s data offsets {[start, end]} do not fit")
            tensors[name], offsets[name] = (dtype, shape), base + start
        return tensors, offsets

    def read(self, name: str, first: int, out: np.ndarray) -> np.ndarray:
        """Fill the contiguous array `out` with tensor `name`'s bytes from element `first` on; returns it."""
        if not out.flags.c_contiguous:  # a reshape would copy, and the bytes would land in the copy
            raise ValueError(f"reading {name} of {self.path}: the buffer must be contiguous")
        view = memoryview(out.reshape(-1).view(np.uint8))
        offset = self._offsets[name] + first * ITEMSIZE[self.tensors[name][0]]
        while view.nbytes:  # a regular file returns short reads only at its end
            got = os.preadv(self.fd, [view], offset)
            if got == 0:
                raise ValueError(f"{self.path}: file ends inside tensor {name}; truncated")
            view, offset = view[got:], offset + got
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def header(layout: Iterable[tuple[str, str, list[int]]], meta: dict[str, str]) -> tuple[bytes, int]:
    """The header (u64 length + JSON padded to 8 bytes) of a file holding tensors (name, dtype, shape) in
    this order and string metadata `meta`, and the number of data bytes that must follow it."""
    entries: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset
