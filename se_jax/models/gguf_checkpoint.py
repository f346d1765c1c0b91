"""GGUF (llama.cpp) checkpoints: the config from the metadata, tensors dequantised to float32.

Tensors come back in HF layout and HF row order, with HF names (`hf_names.gguf_to_hf_name`).
llama.cpp's converter permutes the rows of q_proj/k_proj of Llama models (interleaved rotary
pairs); `unpermute_qk` undoes it exactly as transformers' GGUF loader does.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from se_jax.models.gguf_header import TensorInfo, read_header
from se_jax.models.hf_names import gguf_to_hf_name

# Types this loader dequantises (and tests); others (IQ*, TQ*, ...) are refused up front.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_PERMUTED_ARCHS = ("llama",)  # llama.cpp permutes q/k rows only for these


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q/k weight [n_head * Dh, ...] (or bias)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


class GGUFCheckpoint:
    """Reader of a .gguf file. `config_dict()`, `names`, `shape(n)`, `read(n)`, `where(n)`."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such GGUF file")
        try:
            self._data = np.memmap(path, dtype=np.uint8, mode="r")
            header = read_header(self._data)
        except Exception as e:  # truncated / not a GGUF: name the file
            raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        self._metadata = header.metadata
        self._arch = self._field("general.architecture")
        if self._arch not in _ARCHITECTURES:
            raise ValueError(f"{path}: GGUF general.architecture={self._arch!r} is not supported "
                             f"(supported: {', '.join(_ARCHITECTURES)})")
        self._tensors: dict[str, TensorInfo] = {}
        for t in header.tensors.values():
            hf = gguf_to_hf_name(t.name)
            if t.name == "rope_freqs.weight":
                raise ValueError(f"{path}: tensor 'rope_freqs.weight' (llama.cpp rope scaling "
                                 f"factors) is not supported; load the HF checkpoint instead")
            if hf is None:
                continue
            if t.ggml_type.name not in SUPPORTED_TYPES:
                raise ValueError(
                    f"{path}: tensor {t.name!r} has quantisation type {t.ggml_type.name}, "
                    f"which is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
            self._tensors[hf] = t

    def _field(self, key: str, default: Any = None) -> Any:
        return self._metadata.get(key, default)

    @property
    def source(self) -> str:
        return self.path

    def config_where(self) -> str:
        return f"{self.path} (GGUF metadata)"

    def config_dict(self) -> dict[str, Any]:
        """HF-style config dict from the GGUF metadata (`{arch}.*` keys)."""
        a = self._arch
        f = lambda key, default=None: self._field(f"{a}.{key}", default)  # noqa: E731
        heads = f("attention.head_count")
        hidden = f("embedding_length")
        vocab = f("vocab_size") or len(self._field("tokenizer.ggml.tokens"))
        rope: dict[str, Any] = {"rope_type": "default"}
        if f("rope.scaling.type") == "linear":
            rope = {"rope_type": "linear", "factor": float(f("rope.scaling.factor"))}
        return dict(
            architectures=[_ARCHITECTURES[a]], model_type=a, vocab_size=int(vocab),
            hidden_size=hidden, intermediate_size=f("feed_forward_length"),
            num_hidden_layers=f("block_count"), num_attention_heads=heads,
            num_key_value_heads=f("attention.head_count_kv", heads),
            head_dim=f("attention.key_length", f("rope.dimension_count", hidden // heads)),
            rms_norm_eps=f("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=f("rope.freq_base", 10000.0), rope_scaling=rope,
            max_position_embeddings=f("context_length", 2048),
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            bos_token_id=self._field("tokenizer.ggml.bos_token_id"),
            eos_token_id=self._field("tokenizer.ggml.eos_token_id"),
        )

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def where(self, name: str) -> str:
        t = self._tensors.get(name)
        return f"{self.path} [{t.name}]" if t is not None else self.path

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(reversed(self._tensors[name].dims))  # ggml lists dims inner-first

    def read(self, name: str) -> np.ndarray:
        """float32 tensor in HF layout and row order."""
        import gguf
        t = self._tensors[name]
        raw = self._data[t.start:t.start + t.nbytes]
        w = gguf.quants.dequantize(raw, t.ggml_type).astype(np.float32, copy=False)
        w = w.reshape(self.shape(name))
        if self._arch in _PERMUTED_ARCHS and (".q_proj." in name or ".k_proj." in name):
            heads = self._field(f"{self._arch}.attention.head_count")
            if ".k_proj." in name:
                heads = self._field(f"{self._arch}.attention.head_count_kv", heads)
            w = unpermute_qk(w, heads)
        return w
