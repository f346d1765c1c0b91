"""Hostile pytorch_model.bin files against the torch-free reader (se_jax/models/torch_zip.py).

Each case builds a torch.save-format zip by hand (a pickle with persistent storage ids, the
storages' raw bytes), so sizes, strides and offsets can lie; the reader must refuse with a
message naming the tensor or member, never read outside the bytes it was given, and keep
its memory bounded (the zip bomb's peak RSS is measured in a subprocess).
"""
from __future__ import annotations

import collections
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from se_jax.models import torch_zip

REPO = Path(__file__).resolve().parents[1]


class _Storage:
    def __init__(self, key: str, numel: int, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def write_checkpoint(path: Path, state, storages: dict[str, bytes],
                     compression=zipfile.ZIP_STORED, pkl_override: bytes | None = None,
                     extra_pkl: bool = False) -> Path:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("archive/data.pkl", pkl_override if pkl_override is not None
                   else buf.getvalue())
        if extra_pkl:
            z.writestr("other/data.pkl", buf.getvalue())
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


def _floats(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def _one(size, stride, offset=0, numel=16, raw=None, name="model.w"):
    s = _Storage("0", numel)
    return collections.OrderedDict({name: _Tensor(s, offset, size, stride)}), \
        {"0": _floats(numel) if raw is None else raw}


# (case, state/storages builder, expected message fragments)
HOSTILE = {
    "huge_stride": (lambda: _one((2, 2), (1 << 40, 1)), ["'model.w'", "reach element"]),
    "size_larger_than_storage": (lambda: _one((64,), (1,)), ["'model.w'", "holds 16"]),
    "offset_past_end": (lambda: _one((4,), (1,), offset=100), ["'model.w'", "offset 100"]),
    "offset_past_end_scalar": (lambda: _one((), (), offset=16), ["'model.w'"]),
    "negative_offset": (lambda: _one((4,), (1,), offset=-1), ["'model.w'", "offset"]),
    "negative_stride": (lambda: _one((4,), (-1,), offset=3), ["'model.w'", "negative"]),
    "negative_size": (lambda: _one((-4,), (1,)), ["'model.w'", "negative"]),
    "size_stride_rank_mismatch": (lambda: _one((4, 4), (1,)), ["'model.w'", "stride"]),
    "float_size": (lambda: _one((4.0,), (1,)), ["'model.w'", "integers"]),
    "overflowing_size_product": (lambda: _one((1 << 62, 1 << 62), (0, 0)),
                                 ["'model.w'"]),
    "overlapping_broadcast": (lambda: _one((1 << 20,), (0,)), ["'model.w'", "elements"]),
    "storage_bytes_short": (lambda: _one((4,), (1,), numel=16, raw=_floats(8)),
                            ["archive/data/0", "expected 64"]),
    "storage_numel_negative": (lambda: _one((4,), (1,), numel=-5, raw=b""),
                               ["storage '0'", "element count"]),
    "storage_member_missing": (lambda: (collections.OrderedDict(
        {"w": _Tensor(_Storage("7", 4), 0, (4,), (1,))}), {}), ["archive/data/7", "missing"]),
    "non_tensor_entry": (lambda: (collections.OrderedDict({"w": 3}), {}), ["'w'", "not a tensor"]),
    "not_a_state_dict": (lambda: ([1, 2], {}), ["expected a state dict"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tensor_refused_naming_it(case, tmp_path):
    build, fragments = HOSTILE[case]
    state, storages = build()
    path = write_checkpoint(tmp_path / "pytorch_model.bin", state, storages)
    with pytest.raises(torch_zip.TorchZipError) as e:
        torch_zip.load_torch_zip(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for f in fragments:
        assert f in message, (case, message)


@pytest.mark.parametrize("fn,arg", [("os.system", "echo pwned"), ("builtins.eval", "1+1"),
                                    ("builtins.exec", "x=1"), ("subprocess.call", "true")])
def test_code_in_pickle_refused(fn, arg, tmp_path):
    import importlib
    module, name = fn.rsplit(".", 1)
    state = collections.OrderedDict({"w": _Evil(getattr(importlib.import_module(module), name),
                                                arg)})
    path = write_checkpoint(tmp_path / "pytorch_model.bin", state, {})
    with pytest.raises(torch_zip.TorchZipError, match=f"refusing to load .*{name}"):
        torch_zip.load_torch_zip(path)


def test_two_pickles_and_legacy_and_garbage_refused(tmp_path):
    state, storages = _one((4,), (1,))
    path = write_checkpoint(tmp_path / "two.bin", state, storages, extra_pkl=True)
    with pytest.raises(torch_zip.TorchZipError, match="one data.pkl"):
        torch_zip.load_torch_zip(path)
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(torch_zip.TorchZipError, match="legacy"):
        torch_zip.load_torch_zip(legacy)
    truncated = write_checkpoint(tmp_path / "t.bin", state, storages, pkl_override=b"\x80\x02}")
    with pytest.raises(torch_zip.TorchZipError, match="data.pkl is not a valid"):
        torch_zip.load_torch_zip(truncated)


def test_valid_views_still_load_exactly(tmp_path):
    """Offsets, transposed strides and shared storages: what torch.save really writes."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"full": base, "t": base.t(), "row": base[2], "col": base[:, 1],
             "empty": torch.zeros(0, 3), "half": torch.ones(3, dtype=torch.float16),
             "scalar": torch.tensor(7.0)}
    torch.save(state, tmp_path / "ok.bin")
    out = torch_zip.load_torch_zip(tmp_path / "ok.bin")
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v.numpy())


BOMB_GIB = 1


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """1 GiB of zeros deflated to ~1 MB, declared as one float32 storage."""
    numel = (BOMB_GIB << 30) // 4
    state = collections.OrderedDict({"bomb": _Tensor(_Storage("0", numel), 0, (numel,), (1,))})
    path = tmp_path_factory.mktemp("bomb") / "pytorch_model.bin"
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(64 << 20)
            for _ in range((BOMB_GIB << 30) // len(chunk)):
                f.write(chunk)
    return path


def test_zip_bomb_refused_with_bounded_memory(zip_bomb):
    """Refused before decompressing; the loading process's peak RSS stays small (measured)."""
    assert zip_bomb.stat().st_size < 4 << 20
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's, the
    # pytest process, because Linux carries the pre-exec high-water mark over).
    script = (
        "import json, sys\n"
        "def peak():\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        "    return int(line.split()[1])\n"
        "from se_jax.models import torch_zip\n"
        "before = peak()\n"
        "try:\n"
        "    torch_zip.load_torch_zip(sys.argv[1]); msg = None\n"
        "except torch_zip.TorchZipError as e:\n"
        "    msg = str(e)\n"
        "print(json.dumps({'msg': msg, 'rss_before_kib': before, 'rss_peak_kib': peak()}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(zip_bomb)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"zip bomb ({zip_bomb.stat().st_size} bytes -> {BOMB_GIB} GiB): peak RSS "
          f"{result['rss_peak_kib'] / 1024:.0f} MiB (after imports "
          f"{result['rss_before_kib'] / 1024:.0f} MiB)")
    assert result["msg"] and "zip bomb" in result["msg"] and "archive/data/0" in result["msg"]
    assert result["rss_peak_kib"] - result["rss_before_kib"] < 64 * 1024


def test_total_size_limit(tmp_path):
    state, storages = _one((16,), (1,))
    path = write_checkpoint(tmp_path / "pytorch_model.bin", state, storages)
    with pytest.raises(torch_zip.TorchZipError, match="above the limit"):
        torch_zip.load_torch_zip(path, max_bytes=32)


def test_hostile_nli_checkpoint_read_by_the_deberta_loader(tmp_path):
    """The reported segfault path (entropy.nli_path -> deberta_loading -> torch_zip)."""
    from se_jax.models import deberta_loading
    nli = tmp_path / "nli"
    nli.mkdir()
    state, storages = _one((2, 2), (1 << 40, 1), name="deberta.embeddings.word_embeddings.weight")
    write_checkpoint(nli / "pytorch_model.bin", state, storages)
    with pytest.raises(ValueError, match="word_embeddings.*reach element"):
        deberta_loading.read_state_dict(nli)
