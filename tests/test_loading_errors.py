"""Bad checkpoints fail before any weight is read, with errors naming the file/tensor/field."""
from __future__ import annotations

import json
import os
import shutil

import gguf
import numpy as np
import pytest

from se_jax.models import hf_checkpoint
from se_jax.models.loading import CheckpointError, load_llama
from se_jax.models.safetensors_io import SafetensorsError
from tiny_models import make_tiny_llama_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_errors"), "llama",
                               with_tokenizer=False)


@pytest.fixture
def copy(tiny_dir, tmp_path):
    """A fresh copy of the tiny checkpoint to damage."""
    return shutil.copytree(tiny_dir, tmp_path / "ckpt")


@pytest.fixture
def no_reads(monkeypatch):
    """Fails the test if any tensor data is read (errors must come from validation first)."""
    def read(self, name):
        raise AssertionError(f"tensor {name} was read before the checkpoint was validated")
    monkeypatch.setattr(hf_checkpoint.HFDirectory, "read", read)


def edit_config(path, **changes):
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.update(changes)
    with open(config_path, "w") as f:
        json.dump(config, f)


def test_missing_files(tmp_path, copy):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_llama(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_llama(str(tmp_path / "no" / "such" / "dir"))
    os.remove(os.path.join(copy, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"{copy}: no model.safetensors"):
        load_llama(str(copy))
    os.remove(os.path.join(copy, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        load_llama(str(copy))


def test_truncated_safetensors(copy):
    path = os.path.join(copy, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: truncated .*"
                                               r"incomplete tensors: \[.*'model\.norm\.weight'\]"):
        load_llama(str(copy))
    with open(path, "r+b") as f:
        f.truncate(20)  # inside the header
    with pytest.raises(SafetensorsError, match="model.safetensors: truncated"):
        load_llama(str(copy))


def test_unknown_architecture(copy):
    edit_config(copy, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match=r"config\.json: config field 'architectures'="
                                         r"\['GPT2LMHeadModel'\].*not supported"):
        load_llama(str(copy))


def test_unsupported_rope_scaling_names_the_field(copy):
    edit_config(copy, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(ValueError, match=r"config\.json: rope_scaling\.rope_type='yarn'"):
        load_llama(str(copy))


def test_shape_mismatch_names_tensor_before_any_read(copy, no_reads):
    edit_config(copy, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor "
                       r"'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[128, 64\] but "
                       r".*config\.json implies \[96, 64\]"):
        load_llama(str(copy))


def test_missing_and_unexpected_tensors(copy, no_reads):
    edit_config(copy, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.2\."):
        load_llama(str(copy))
    edit_config(copy, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"tensors not in the model .*model\.layers\.1\."):
        load_llama(str(copy))


def write_gguf(path, tensor_type: gguf.GGMLQuantizationType) -> str:
    """A small llama GGUF holding one tensor of `tensor_type` (zero bytes) and one F32 norm."""
    block, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((256, 256 // block * type_size), np.uint8),
                      raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_gguf_unsupported_quantisation(tmp_path):
    path = write_gguf(tmp_path / "iq2.gguf", gguf.GGMLQuantizationType.IQ2_XXS)
    with pytest.raises(ValueError, match=r"iq2\.gguf: tensor 'blk\.0\.attn_q\.weight' has "
                                         r"quantisation type IQ2_XXS, which is not supported"):
        load_llama(path)


def test_truncated_gguf(tmp_path, embedded_gguf):
    path = tmp_path / "cut.gguf"
    with open(embedded_gguf, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(1 << 20))  # header and part of the tensor index only
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file"):
        load_llama(str(path))
