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
from se_jax.io.stage_io import atomic_path

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A .safetensors file is malformed, truncated or lacks a tensor."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(path: str, name: str, h) -> None:
    """One header entry: known dtype, a shape of ints >= 0, offsets [begin <= end] holding
    exactly the shape's bytes. Checked for every tensor before any is read."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(h, dict):
        raise SafetensorsError(f"{where}: header entry is not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in h:
            raise SafetensorsError(f"{where}: header entry has no {key!r}")
    if h["dtype"] not in DTYPES:
        raise SafetensorsError(f"{where} has unsupported dtype {h['dtype']!r}")
    shape, offsets = h["shape"], h["data_offsets"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"{where}: shape {shape!r} is not a list of integers >= 0")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r} are not [begin, end] with "
                               f"0 <= begin <= end")
    nbytes = math.prod(shape) * np.dtype(DTYPES[h["dtype"]]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise SafetensorsError(f"{where}: {offsets[1] - offsets[0]} bytes do not hold "
                               f"{h['dtype']}{shape}")


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
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        for name, h in header.items():
            _check_entry(path, name, h)
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
        h = self._entry(name)  # checked in __init__ (_check_entry)
        dtype, shape = np.dtype(DTYPES[h["dtype"]]), tuple(h["shape"])
        start, _ = h["data_offsets"]
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        # (a scalar is mapped as one element: np.memmap has no 0-d shape)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + start,
                         shape=shape or (1,)).reshape(shape)


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None):
    """Write `tensors` (numpy, incl. ml_dtypes bfloat16) as .safetensors, atomically."""
    header, offset = {}, 0
    # (ascontiguousarray makes a 0-d array 1-d: keep scalars' shape)
    arrays = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}
    for name, a in arrays.items():
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # no .tmp left on a full disk
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
