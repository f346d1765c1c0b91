"""Load a Hugging Face DeBERTa NLI directory into `DebertaForSequenceClassification`.

Reads config.json (architecture and the label order, id2label), the weights from
model.safetensors (single or sharded) or pytorch_model.bin (read without PyTorch by
`torch_zip.py`), and the tokenizer with transformers' AutoTokenizer. Parameters are
created abstractly (nnx.eval_shape) and filled straight from the checkpoint, so loading
an xlarge model costs no random initialisation.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from se_jax.models.deberta import DebertaConfig, DebertaForSequenceClassification
from se_jax.models.torch_zip import load_torch_zip
from se_jax.models.safetensors_io import SafetensorsFile


@dataclasses.dataclass
class NliModel:
    """A loaded NLI classifier: the module, its tokenizer, config, and where it came from."""
    model: DebertaForSequenceClassification
    tokenizer: Any
    config: DebertaConfig
    path: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.id2label


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, validated first (errors name file and tensor)."""
    f = SafetensorsFile(str(path))
    return {name: np.array(f.get(name)) for name in f.names}


def read_state_dict(model_dir: str | Path) -> dict[str, np.ndarray]:
    """PyTorch-named weights of a HF directory as numpy arrays."""
    d = Path(model_dir)
    if (d / "model.safetensors").is_file():
        return _read_safetensors(d / "model.safetensors")
    if (d / "model.safetensors.index.json").is_file():
        index = json.loads((d / "model.safetensors.index.json").read_text())
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(_read_safetensors(d / shard))
        return out
    if (d / "pytorch_model.bin").is_file():
        return load_torch_zip(d / "pytorch_model.bin")
    raise FileNotFoundError(
        f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _hf_name(path: tuple) -> str:
    """NNX state path -> PyTorch parameter name (the module names match)."""
    *modules, leaf = (str(p) for p in path)
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join([*modules, leaf])


def _from_torch(path: tuple, array: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Flax layout: Linear [out,in] -> [in,out]; Conv1d [out,in,k] -> [k,in,out]."""
    if str(path[-1]) == "kernel":
        return array.transpose(2, 1, 0) if array.ndim == 3 else array.T
    return array


def _legacy_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old checkpoints name LayerNorm parameters gamma/beta (transformers renames them too)."""
    out = {}
    for k, v in state.items():
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def model_from_state_dict(config: DebertaConfig, state_dict: dict[str, np.ndarray],
                          source: str = "checkpoint") -> DebertaForSequenceClassification:
    """Build the module with parameters taken (and checked) from a PyTorch state dict."""
    abstract = nnx.eval_shape(lambda: DebertaForSequenceClassification(config, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    state_dict = _legacy_names(state_dict)
    used, missing = set(), []

    def fill(path, leaf):
        name = _hf_name(path)
        if name not in state_dict:
            missing.append(name)
            return leaf
        used.add(name)
        array = _from_torch(path, np.asarray(state_dict[name]))
        if array.shape != leaf.shape:
            raise ValueError(f"{source}: {name} has shape {array.shape}, the config "
                             f"implies {leaf.shape}")
        return jnp.asarray(array, dtype=leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(
        lambda p, leaf: fill(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in p), leaf),
        nnx.to_pure_dict(abs_state))
    if missing:
        raise ValueError(f"{source}: missing weights {missing[:6]}{'...' if len(missing) > 6 else ''}")
    unused = sorted(set(state_dict) - used)
    if unused:  # e.g. position_embeddings of position_biased_input=False models, LM heads
        logging.info("%s: %d checkpoint tensors unused: %s", source, len(unused), unused[:6])
    nnx.replace_by_pure_dict(abs_state, pure)
    return nnx.merge(graphdef, abs_state)


def load_nli(model_dir: str | Path, dtype: str = "float32",
             param_dtype: str = "float32") -> NliModel:
    """Load a DeBERTa NLI checkpoint directory (config.json, weights, tokenizer files)."""
    d = Path(model_dir)
    config_path = d / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a Hugging Face model directory")
    hf = json.loads(config_path.read_text())
    try:
        config = DebertaConfig.from_hf_dict(hf, dtype=jnp.dtype(dtype),
                                            param_dtype=jnp.dtype(param_dtype))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from None
    model = model_from_state_dict(config, read_state_dict(d), source=str(d))
    from transformers import AutoTokenizer  # tokenizers only; no PyTorch import
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    logging.info("loaded NLI model %s (DeBERTa v%d, %d layers, labels %s)", d, config.version,
                 config.num_hidden_layers, config.id2label)
    return NliModel(model=model, tokenizer=tokenizer, config=config, path=str(d))
