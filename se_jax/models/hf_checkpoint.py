"""Hugging Face model directories: config.json + model.safetensors (or a sharded index).

`HFDirectory` is a lazy reader: tensors come back as memory maps in HF layout, so a loader can
slice out one device's shard without reading the rest. `write_hf_checkpoint` is the inverse.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from se_jax.models.llama import LlamaConfig
from se_jax.models.safetensors_io import SafetensorsFile, save_file
from se_jax.io.stage_io import atomic_path, atomic_write_text

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class HFDirectory:
    """Reader of a HF model directory. `config_dict()`, `names`, `shape(n)`, `read(n)`, `where(n)`."""

    def __init__(self, path: str):
        self.path = path
        config_path = os.path.join(path, CONFIG)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path}: missing (a Hugging Face model directory "
                                    f"needs config.json)")
        try:
            with open(config_path) as f:
                self._config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from None
        self._files: dict[str, SafetensorsFile] = {}
        self._file_of: dict[str, str] = {}
        index_path = os.path.join(path, INDEX)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index_path}: no 'weight_map'")
            files = sorted(set(weight_map.values()))
        elif os.path.isfile(os.path.join(path, SINGLE)):
            files = [SINGLE]
        else:
            raise FileNotFoundError(
                f"{path}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read; "
                f"convert .bin files with transformers' save_pretrained)")
        for name in files:  # opening validates each header and its size (truncation)
            st = SafetensorsFile(os.path.join(path, name))
            self._files[name] = st
            for t in st.names:
                self._file_of[t] = name

    @property
    def source(self) -> str:
        return self.path

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)

    def config_where(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def names(self) -> list[str]:
        return list(self._file_of)

    def where(self, name: str) -> str:
        return os.path.join(self.path, self._file_of.get(name, SINGLE))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._files[self._file_of[name]].shape(name)

    def read(self, name: str) -> np.ndarray:
        """The tensor in HF layout as a memory map (slicing reads only the slice)."""
        return self._files[self._file_of[name]].get(name)


def hf_config_dict(config: LlamaConfig) -> dict[str, Any]:
    """A transformers `config.json` dict for `config` (inverse of LlamaConfig.from_hf_dict)."""
    c = config
    is_qwen2 = c.architecture == "Qwen2ForCausalLM"
    rope = {"rope_type": c.rope_scaling.rope_type}
    if c.rope_scaling.rope_type != "default":
        rope.update({k: v for k, v in dataclasses.asdict(c.rope_scaling).items()
                     if k != "rope_type"})
    d = dict(
        architectures=[c.architecture], model_type="qwen2" if is_qwen2 else
        {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}[c.architecture],
        vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim, hidden_act="silu", rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta, rope_scaling=None if rope["rope_type"] == "default" else rope,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings, bos_token_id=c.bos_token_id,
        eos_token_id=list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
        torch_dtype=c.param_dtype,
    )
    if not is_qwen2:
        if c.attention_bias != c.o_proj_bias:
            raise ValueError("HF Llama has one attention_bias for q/k/v/o; this config differs")
        d.update(attention_bias=c.attention_bias, mlp_bias=c.mlp_bias)
    return d


def write_hf_checkpoint(path: str, config_dict: Mapping[str, Any],
                        tensors: Mapping[str, np.ndarray]) -> str:
    """Write config.json and model.safetensors to `path` (created); returns `path`."""
    os.makedirs(path, exist_ok=True)
    # Atomic: a full disk leaves the old file (or none) and no partial or .tmp file.
    with atomic_path(os.path.join(path, SINGLE)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(os.path.join(path, CONFIG), json.dumps(dict(config_dict), indent=2))
    return path
