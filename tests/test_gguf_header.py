"""Our GGUF header parser reads what gguf's own reader reads: every metadata value, every
tensor's dims, type and bytes; and names what is wrong with a file it cannot read."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from se_jax.models.gguf_header import read_header


def assert_same_as_gguf_reader(path: str) -> None:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    ours = read_header(data)
    reference = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, value in fields.items():
        assert ours.metadata[key] == value, key
    assert list(ours.tensors) == [t.name for t in reference.tensors]
    for t in reference.tensors:
        info = ours.tensors[t.name]
        assert info.dims == tuple(int(d) for d in t.shape), t.name
        assert info.ggml_type == t.tensor_type, t.name
        assert bytes(data[info.start:info.start + info.nbytes]) == \
            np.ascontiguousarray(t.data).tobytes(), t.name


def write_every_kind(path, alignment: int = 64) -> str:
    """A GGUF with a value of every metadata type, a custom alignment, an F32 and a Q8_0
    tensor."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(alignment)
    writer.add_uint8("t.u8", 250)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 65000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -70000)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2 ** 40)
    writer.add_int64("t.i64", -(2 ** 40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo wörld")
    writer.add_array("t.ints", [3, 1, 2])
    writer.add_array("t.floats", [0.5, -1.5])
    writer.add_array("t.strs", ["a", "", "ünïcode"])
    writer.add_tensor("norm.weight", np.arange(7, dtype=np.float32))
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0]
    q8 = np.arange(3 * 2 * type_size, dtype=np.uint8).reshape(3, 2 * type_size)
    writer.add_tensor("q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_every_metadata_type_and_alignment(tmp_path):
    path = write_every_kind(tmp_path / "kinds.gguf")
    assert_same_as_gguf_reader(path)
    header = read_header(np.memmap(path, dtype=np.uint8, mode="r"))
    assert header.metadata["t.strs"] == ["a", "", "ünïcode"]
    assert header.metadata["t.bool"] is True and header.metadata["t.u64"] == 2 ** 40
    assert all(t.start % 64 == 0 for t in header.tensors.values())
    assert header.tensors["q.weight"].dims == (64, 3)   # 2 Q8_0 blocks of 32 per row


def test_embedded_smollm2_as_gguf_reads_it(embedded_gguf):
    assert_same_as_gguf_reader(embedded_gguf)


@pytest.mark.parametrize("keep, match", [
    (2, "no GGUF magic"),
    (200, "header runs past the end"),              # inside the metadata
    (-100, "'q.weight' ends at byte .* the file is cut short"),
])
def test_unreadable_files_say_why(tmp_path, keep, match):
    whole = Path(write_every_kind(tmp_path / "kinds.gguf")).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep])
    with pytest.raises(ValueError, match=match):
        read_header(np.memmap(cut, dtype=np.uint8, mode="r"))


def test_other_versions_refused(tmp_path):
    whole = bytearray(Path(write_every_kind(tmp_path / "kinds.gguf")).read_bytes())
    whole[4:8] = (1).to_bytes(4, "little")
    (tmp_path / "v1.gguf").write_bytes(bytes(whole))
    with pytest.raises(ValueError, match="GGUF version 1 .* not supported"):
        read_header(np.memmap(tmp_path / "v1.gguf", dtype=np.uint8, mode="r"))
