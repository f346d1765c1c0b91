"""Read a PyTorch `torch.save` zip checkpoint (pytorch_model.bin) into numpy, without torch.

The zip holds `<root>/data.pkl` (a pickle whose tensors are persistent references to
storages) and `<root>/data/<key>` (each storage's raw little-endian bytes). We unpickle
with an allow-list: only tensor/parameter rebuild functions, storage types and
OrderedDict resolve, so a checkpoint cannot run code on load.

Nothing in the file is trusted (as safetensors' loader does): every storage's size must
match its bytes in the archive, every tensor's offset, sizes and strides must stay within
its storage, and no zip member may decompress to more than `MAX_RATIO` times its stored
size or more than `max_bytes` in all (a zip bomb). Members are read with bounded memory
(never more than the size they declare). Errors (TorchZipError) name the file and the
tensor or member at fault.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
MAX_RATIO = 20           # uncompressed / compressed size of a member (torch stores, ratio 1)
MAX_BYTES = 1 << 40      # default cap on the total uncompressed size (1 TiB)
MAX_PICKLE_BYTES = 1 << 30
MAX_DIMS = 64


class TorchZipError(ValueError):
    """A malformed or hostile checkpoint; the message names the file and tensor/member."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` was given; checked and materialised once its name is known."""
    storage: np.ndarray   # flat, the storage's elements
    key: str
    offset: Any
    size: Any
    stride: Any


def _rebuild_tensor(storage, offset, size, stride, *_args):
    return _TensorRef(storage[1], storage[0], offset, size, stride)


def _rebuild_parameter(data, *_args):
    return data


def _ints(value: Any) -> tuple[int, ...] | None:
    """`value` as a tuple of plain ints, or None if it is not one (bools refused)."""
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def materialize(ref: _TensorRef, name: str, source: str) -> np.ndarray:
    """The tensor `ref` describes, copied out of its storage after bounds checks."""
    where = f"{source}: tensor {name!r} (storage {ref.key!r})"
    size, stride = _ints(ref.size), _ints(ref.stride)
    offset = ref.offset
    if size is None or stride is None or len(size) != len(stride):
        raise TorchZipError(f"{where}: size {ref.size!r} / stride {ref.stride!r} are not "
                            f"matching lists of integers")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise TorchZipError(f"{where}: storage offset {offset!r} is not an integer >= 0")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchZipError(f"{where}: negative size or stride (size {size}, stride {stride})")
    storage = ref.storage
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, storage.dtype)
    # Python ints: no overflow. The last element read must lie inside the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise TorchZipError(
            f"{where}: offset {offset}, size {size}, stride {stride} reach element {last}, "
            f"but the storage holds {storage.size} elements of {storage.dtype}")
    if numel > storage.size:  # only overlapping strides could; no checkpoint needs them
        raise TorchZipError(f"{where}: {numel} elements from a storage of {storage.size}")
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride)).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, reader: "_ArchiveReader"):
        super().__init__(file)
        self.reader = reader

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise TorchZipError(
            f"{self.reader.source}: refusing to load {module}.{name}; convert the checkpoint "
            f"to safetensors (transformers: model.save_pretrained(dir, "
            f"safe_serialization=True))")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise TorchZipError(f"{self.reader.source}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise TorchZipError(f"{self.reader.source}: malformed storage reference "
                                f"{pid!r:.80}")
        return key, self.reader.storage(key, storage_type.dtype, numel)


class _ArchiveReader:
    """Bounded reads of a torch zip's members; storages cached by key (tensors share them)."""

    def __init__(self, archive: zipfile.ZipFile, root: str, source: str, max_bytes: int):
        self.archive, self.root, self.source = archive, root, source
        self.storages: dict[str, np.ndarray] = {}
        total = 0
        for info in archive.infolist():
            limit = max(MAX_RATIO * info.compress_size, 1 << 16)
            if info.file_size > limit:
                raise TorchZipError(
                    f"{source}: member {info.filename!r} claims {info.file_size} bytes "
                    f"uncompressed from {info.compress_size} stored (more than {MAX_RATIO}x): "
                    f"refusing a possible zip bomb")
            total += info.file_size
        if total > max_bytes:
            raise TorchZipError(f"{source}: the archive unpacks to {total} bytes, above the "
                                f"limit of {max_bytes}")

    def read(self, name: str, expected: int) -> bytes:
        """Exactly `expected` bytes of member `name` (TorchZipError otherwise)."""
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise TorchZipError(f"{self.source}: member {name!r} is missing") from None
        if info.file_size != expected:
            raise TorchZipError(f"{self.source}: member {name!r} holds {info.file_size} "
                                f"bytes, expected {expected}")
        try:
            with self.archive.open(info) as f:
                data = f.read(expected + 1)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise TorchZipError(f"{self.source}: member {name!r} is corrupt ({e})") from None
        if len(data) != expected:
            raise TorchZipError(f"{self.source}: member {name!r} has {len(data)} bytes, "
                                f"expected {expected}")
        return data

    def storage(self, key: str, dtype: np.dtype, numel: Any) -> np.ndarray:
        name = f"{self.root}/data/{key}"
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise TorchZipError(f"{self.source}: storage {key!r} has element count {numel!r}")
        if key not in self.storages:
            raw = self.read(name, numel * dtype.itemsize)
            self.storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
        elif self.storages[key].size != numel or self.storages[key].dtype != dtype:
            raise TorchZipError(f"{self.source}: storage {key!r} referenced with two "
                                f"different types or sizes")
        return self.storages[key]


def load_torch_zip(path: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """{name: array} of a zip-format torch.save file (PyTorch >= 1.6 default)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise TorchZipError(
            f"{path}: legacy (non-zip) PyTorch checkpoint; convert it to safetensors "
            f"(transformers: model.save_pretrained(dir, safe_serialization=True))")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchZipError(f"{path}: not a readable zip archive ({e})") from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise TorchZipError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        root = pkl[0][: -len("/data.pkl")]
        reader = _ArchiveReader(archive, root, str(path), max_bytes)
        size = archive.getinfo(pkl[0]).file_size
        if size > MAX_PICKLE_BYTES:
            raise TorchZipError(f"{path}: data.pkl is {size} bytes, above "
                                f"{MAX_PICKLE_BYTES}")
        try:
            state = _Unpickler(io.BytesIO(reader.read(pkl[0], size)), reader).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError,
                IndexError, KeyError) as e:
            if isinstance(e, TorchZipError):
                raise
            raise TorchZipError(f"{path}: data.pkl is not a valid checkpoint pickle "
                                f"({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise TorchZipError(f"{path}: expected a state dict, got {type(state).__name__}")
        out = {}
        for name, value in state.items():
            if not isinstance(value, _TensorRef):
                raise TorchZipError(f"{path}: entry {name!r} is a {type(value).__name__}, "
                                    f"not a tensor")
            out[str(name)] = materialize(value, str(name), str(path))
    return out
