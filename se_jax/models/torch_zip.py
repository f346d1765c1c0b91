"""Read a PyTorch `torch.save` zip checkpoint (pytorch_model.bin) into numpy, without torch.

The zip holds `<root>/data.pkl` (a pickle whose tensors are persistent references to
storages) and `<root>/data/<key>` (each storage's raw little-endian bytes). We unpickle
with an allow-list: only tensor/parameter rebuild functions, storage types and
OrderedDict resolve, so a checkpoint cannot run code on load.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_args):
    """A view of `storage` (a flat numpy array) with torch's element strides, copied."""
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset].copy()
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


def _rebuild_parameter(data, *_args):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str, source: str):
        super().__init__(file)
        self.archive, self.root, self.source = archive, root, source

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load {module}.{name}; convert the checkpoint to "
            f"safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"{self.source}: unknown persistent id {kind!r}")
        raw = self.archive.read(f"{self.root}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def load_torch_zip(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} of a zip-format torch.save file (PyTorch >= 1.6 default)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: legacy (non-zip) PyTorch checkpoint; convert it to safetensors "
            f"(transformers: model.save_pretrained(dir, safe_serialization=True))")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        root = pkl[0][: -len("/data.pkl")]
        with archive.open(pkl[0]) as f:
            state = _Unpickler(f, archive, root, str(path)).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: np.asarray(v) for k, v in state.items()}
