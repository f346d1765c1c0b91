"""The header of a GGUF file: its metadata and tensor directory, parsed with `struct`.

    data = np.memmap("model.gguf", dtype=np.uint8, mode="r")
    header = read_header(data)
    header.metadata["llama.block_count"]          # -> 30
    info = header.tensors["blk.0.attn_q.weight"]  # TensorInfo(dims inner-first, type, ...)
    raw = data[info.start:info.start + info.nbytes]

gguf's `GGUFReader` builds numpy views of every metadata string (the embedded SmolLM2 has
98k vocabulary and merge strings), which makes each load seconds slower than this parser
(docs/log/2026-12-02-test-suite-speed.md). Tensor
data are not read here: `TensorInfo.start` and `.nbytes` locate them in the file, and
`gguf.quants` dequantises them.

Layout (little-endian, versions 2 and 3): b"GGUF", u32 version, u64 tensor count, u64
metadata count; each metadata entry = string key, u32 value type, value; each tensor info =
string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml type, u64 offset;
tensor data from the first multiple of `general.alignment` (default 32) after the header.
A string is a u64 byte length and UTF-8 bytes; an array a u32 item type, u64 count, items.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_STRING, _ARRAY = 8, 9
# GGUF value type -> struct format of a scalar (little-endian); 8/9 are string/array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the directory: `dims` innermost first (ggml's order), `ggml_type` its
    `gguf.GGMLQuantizationType`, `start` / `nbytes` its bytes in the file."""
    name: str
    dims: tuple[int, ...]
    ggml_type: Any   # gguf.GGMLQuantizationType (gguf is imported where it is needed)
    start: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]   # in file order


class _Cursor:
    """Sequential little-endian reads from a buffer. Running past its end raises
    struct.error (a scalar) or ValueError (a string or numeric array)."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"a string of {n} bytes runs past the end at byte {self.pos}")
        text = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item == _STRING:
                return [self.string() for _ in range(count)]
            if item not in _SCALARS:   # arrays of arrays: none in the files we read
                raise ValueError(f"unsupported GGUF array item type {item}")
            dtype = np.dtype(_SCALARS[item])
            values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
            self.pos += count * dtype.itemsize
            return values
        if kind not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {kind} at byte {self.pos - 4}")
        return self.scalar(_SCALARS[kind])


def read_header(data: np.ndarray) -> GGUFHeader:
    """Metadata and tensor directory of a GGUF file's bytes `data` (uint8[N], e.g. a memory
    map). Raises ValueError for bytes that are not a GGUF, are big-endian or of another
    version, or are cut short (header or tensor data)."""
    import gguf
    buf = memoryview(data)
    cursor = _Cursor(buf)
    try:
        if bytes(buf[:4]) != _MAGIC:
            raise ValueError(f"no GGUF magic (starts with {bytes(buf[:4])!r})")
        cursor.pos = 4
        version = cursor.scalar("<I")
        if version not in _VERSIONS:
            raise ValueError(f"GGUF version {version} (or big-endian) is not supported; "
                             f"supported: little-endian versions {_VERSIONS}")
        n_tensors, n_kv = cursor.scalar("<Q"), cursor.scalar("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = cursor.string()
            metadata[key] = cursor.value(cursor.scalar("<I"))
        raw = []
        for _ in range(n_tensors):
            name = cursor.string()
            dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
            raw.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
    except struct.error as e:
        raise ValueError(f"the header runs past the end of the file ({e})") from None
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = {}
    for name, dims, type_id, offset in raw:
        ggml_type = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        info = TensorInfo(name, dims, ggml_type, data_start + offset,
                          math.prod(dims) // block * type_size)
        if info.start + info.nbytes > len(buf):
            raise ValueError(f"tensor {name!r} ends at byte {info.start + info.nbytes}, past "
                             f"the end of the file ({len(buf)} bytes): the file is cut short")
        tensors[name] = info
    return GGUFHeader(metadata, tensors)
