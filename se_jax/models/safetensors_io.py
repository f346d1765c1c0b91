"""Read and write .safetensors files as memory maps, validating them with errors naming the file.

The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw little-endian data. Reading memory-maps the data, so slicing a
tensor (e.g. one device's shard) reads only those bytes; bfloat16 and float8 come through
ml_dtypes, which plain numpy lacks.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A .safetensors file is malformed, truncated or lacks a tensor."""


class SafetensorsFile:
    """Lazy view of one .safetensors file: `names`, `shape(name)`, `get(name) -> np.memmap`."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such safetensors file")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if 8 + n > size:
                raise SafetensorsError(f"{path}: truncated safetensors file (header says "
                                       f"{n} header bytes, file has {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._header = header
        end = max((h["data_offsets"][1] for h in header.values()), default=0)
        if self._data_start + end > size:
            bad = [k for k, h in header.items() if self._data_start + h["data_offsets"][1] > size]
            raise SafetensorsError(
                f"{path}: truncated safetensors file: data ends at byte {self._data_start + end} "
                f"but the file has {size} bytes; incomplete tensors: {bad[:5]}"
                f"{' ...' if len(bad) > 5 else ''}")

    @property
    def names(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def _entry(self, name: str) -> Mapping:
        if name not in self._header:
            raise SafetensorsError(f"{self.path}: no tensor {name!r}")
        return self._header[name]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory map (no bytes are read until used)."""
        h = self._entry(name)
        if h["dtype"] not in DTYPES:
            raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {h['dtype']}")
        dtype, shape = np.dtype(DTYPES[h["dtype"]]), tuple(h["shape"])
        start, end = h["data_offsets"]
        if end - start != math.prod(shape) * dtype.itemsize:
            raise SafetensorsError(f"{self.path}: tensor {name!r}: {end - start} bytes do not "
                                   f"hold {h['dtype']}{list(shape)}")
        if not shape or math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + start,
                         shape=shape)


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None):
    """Write `tensors` (numpy, incl. ml_dtypes bfloat16) as .safetensors, atomically."""
    header, offset = {}, 0
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for name, a in arrays.items():
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)
