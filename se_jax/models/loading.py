"""Load a `Llama` (sharded onto a mesh) and its tokenizer; export back to HF tensors.

    model = load_llama("embedded")                        # SmolLM2 GGUF shipped with the wheel
    model = load_llama("/ckpt/Llama-3.1-8B-Instruct", mesh=mesh, param_dtype="bfloat16")
    tokenizer = load_tokenizer("embedded")

Sources: "embedded", a HF model directory (config.json + safetensors, single or sharded),
a .gguf file, or a hub id (downloaded with huggingface_hub; needs internet).

The model is built abstractly (nnx.eval_shape) and filled one tensor at a time, each placed
straight onto the mesh with its NamedSharding via jax.make_array_from_callback: every process
reads only the slices its devices hold (safetensors are memory-mapped), so an 8B checkpoint
never needs two host copies. Every tensor's presence and shape is checked against the config
before any is read; any error leaves nothing behind (the model is returned only when complete).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from se_jax.config import precision
from se_jax.io import runtime
from se_jax.parallel import distributed
from se_jax.parallel.distributed import to_host
from se_jax.models.embedded import resolve_model_path
from se_jax.parallel.mesh import ShardingRules, variable_sharding
from se_jax.models.gguf_checkpoint import GGUFCheckpoint
from se_jax.models.gguf_header import read_header
from se_jax.models.hf_checkpoint import HFDirectory, hf_config_dict, write_hf_checkpoint
from se_jax.models.hf_names import param_specs
from se_jax.models.llama import Llama, LlamaConfig

log = logging.getLogger(__name__)

# Tensors some checkpoints carry that the decoder recomputes or does not use.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint does not match its config (missing, unexpected or mis-shaped tensors)."""


def open_checkpoint(path_or_id: str) -> HFDirectory | GGUFCheckpoint:
    """A lazy reader for "embedded", a .gguf file, a HF directory or a hub id."""
    path = resolve_model_path(str(path_or_id))
    if path.endswith(".gguf"):
        return GGUFCheckpoint(path)
    if os.path.isdir(path):
        return HFDirectory(path)
    if os.path.exists(path):
        raise ValueError(f"{path}: not a model directory or a .gguf file")
    if _HUB_ID.match(path) and not path.startswith("."):
        return HFDirectory(_download(path))
    raise FileNotFoundError(f"{path}: no such model directory or .gguf file")


def _download(repo_id: str) -> str:
    """Snapshot the config, safetensors and tokenizer files of a hub model; its local dir."""
    from huggingface_hub import snapshot_download
    log.info("downloading %s from the Hugging Face hub", repo_id)
    return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                      "tokenizer*", "*.model", "*.txt"])


def load_config(reader: HFDirectory | GGUFCheckpoint, **overrides) -> LlamaConfig:
    try:
        return LlamaConfig.from_hf_dict(reader.config_dict(), **overrides)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{reader.config_where()}: {e}") from None


def check_tensors(reader: HFDirectory | GGUFCheckpoint, config: LlamaConfig) -> None:
    """Every tensor the config implies exists with its shape, and no unexplained extras."""
    specs = param_specs(config)
    expected = {s.hf_name for s in specs}
    for s in specs:
        if s.hf_name not in reader.names:
            raise CheckpointError(f"{reader.source}: missing tensor {s.hf_name!r} "
                                  f"(implied by {reader.config_where()})")
        shape = reader.shape(s.hf_name)
        if shape != s.hf_shape:
            raise CheckpointError(
                f"{reader.where(s.hf_name)}: tensor {s.hf_name!r} has shape {list(shape)} but "
                f"{reader.config_where()} implies {list(s.hf_shape)}")
    extra = [n for n in reader.names if n not in expected and not _IGNORED.match(n)
             and not (n == "lm_head.weight" and config.tie_word_embeddings)]
    if extra:
        raise CheckpointError(f"{reader.source}: tensors not in the model its config describes "
                              f"({reader.config_where()}): {extra[:5]}{' ...' if len(extra) > 5 else ''}")


def load_llama(path_or_id: str, *, mesh: Mesh | None = None, rules: ShardingRules | None = None,
               dtype: str = "float32", param_dtype: str = "float32",
               scan_layers: bool = False) -> Llama:
    """A `Llama` with the checkpoint's weights, sharded on `mesh` by `rules`.

    Without a mesh the weights go to the first local device. `dtype` is the compute dtype
    ("auto": `precision.resolve_dtype`, bfloat16 where the hardware multiplies it natively),
    `param_dtype` the storage dtype (weights are cast on the host, one slice at a time).
    `scan_layers`: run the layers as one `lax.scan` (LlamaConfig.scan_layers).
    """
    start = time.perf_counter()
    dtype = precision.resolve_dtype(dtype)
    reader = open_checkpoint(path_or_id)
    config = load_config(reader, dtype=dtype, param_dtype=param_dtype,
                         scan_layers=bool(scan_layers))
    check_tensors(reader, config)
    rules = rules or ShardingRules()
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    variables = dict(nnx.to_flat_state(state))
    target = np.dtype(jax.numpy.dtype(param_dtype))
    for spec in param_specs(config):
        var = variables.pop(spec.path)
        host = reader.read(spec.hf_name)
        host = host.T if spec.transpose else host
        sharding = (variable_sharding(var, mesh, rules) if mesh is not None
                    else SingleDeviceSharding(jax.local_devices()[0]))
        var.set_value(jax.make_array_from_callback(
            var.shape, sharding, lambda index, h=host: np.asarray(h[index], dtype=target)))
    if variables:  # param_specs and Llama disagree: a bug here, not in the checkpoint
        raise RuntimeError(f"parameters with no checkpoint tensor: {sorted(variables)}")
    model = nnx.merge(graphdef, state)
    if mesh is not None:
        model.mesh_rules = (mesh, rules)
    log.info("loaded %s (%d layers, hidden %d; compute %s, weights %s) in %.1fs",
             reader.source, config.num_hidden_layers, config.hidden_size, dtype, param_dtype,
             time.perf_counter() - start)
    return model


def same_model(a: str, b: str) -> bool:
    """Whether two model paths name the same checkpoint (trailing slashes aside)."""
    return str(a).rstrip("/") == str(b).rstrip("/")


def judge_dtypes(dtype: str) -> dict[str, str]:
    """load_llama's dtypes for an inference-only model beside the generator (a judge): the
    generator's compute dtype, weights stored in it too (no float32 copy of a 70B judge)."""
    compute = precision.resolve_dtype(dtype)
    return dict(dtype=compute, param_dtype=compute)


def load_tokenizer(path_or_id: str):
    """The transformers tokenizer (with chat template) of a directory, a .gguf file or a hub id."""
    path = resolve_model_path(str(path_or_id))
    if path.endswith(".gguf"):
        path = gguf_tokenizer_dir(path)   # a generic tokenizer directory
    if not os.path.isdir(path) and not _HUB_ID.match(path):
        raise FileNotFoundError(f"{path}: no such tokenizer directory or .gguf file")
    if os.path.isdir(path) and _is_generic_tokenizer_dir(path):
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


# Llama directories (or tokenizer-only ones) whose tokenizer_config.json names the generic
# fast tokenizer: AutoTokenizer loads that class too (transformers 5; for qwen2 it picks
# Qwen2Tokenizer instead, tests/test_tokenizer_loading.py), and loading it directly skips
# AutoTokenizer's model-config machinery, which imports torch when it is installed (~2 s
# per process). Every other directory goes through AutoTokenizer.
_GENERIC_TOKENIZER_MODEL_TYPES = ("llama",)
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _is_generic_tokenizer_dir(path: str) -> bool:
    def read(name: str) -> dict:
        try:
            with open(os.path.join(path, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    tokenizer_config = read("tokenizer_config.json")
    model_type = read("config.json").get("model_type")
    return (tokenizer_config.get("tokenizer_class") in _GENERIC_TOKENIZER_CLASSES
            and "auto_map" not in tokenizer_config
            and os.path.isfile(os.path.join(path, "tokenizer.json"))
            and model_type in (None, *_GENERIC_TOKENIZER_MODEL_TYPES))


# GGUF's special-token id keys (tokenizer.ggml.<key>) -> transformers' token names.
_GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                        "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def gguf_tokenizer(path: str):
    """The tokenizer GGUF file `path` describes, built from its metadata.

    What `PreTrainedTokenizerFast.from_pretrained(dir, gguf_file=name)` builds (transformers'
    `get_gguf_tokenizer` + `convert_gguf_tokenizer`; the saved files are identical,
    tests/test_gguf_smollm.py), but with the metadata read by se_jax's header parser:
    transformers' GGUF reader imports torch, which se_jax does not require.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
    metadata = read_header(np.memmap(path, dtype=np.uint8, mode="r")).metadata
    tokenizer, tokenizer_config = (
        {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
         if f"tokenizer.{key}" in metadata}
        for renames in (GGUF_TOKENIZER_MAPPING["tokenizer"],
                        GGUF_TOKENIZER_MAPPING["tokenizer_config"]))
    if tokenizer.get("tokenizer_type") == "llama":   # llama.cpp's default for sentencepiece
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in _GGUF_SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


def gguf_tokenizer_dir(path: str) -> str:
    """A directory holding the tokenizer of GGUF file `path`, converted once per machine.

    The converted tokenizer (`gguf_tokenizer`) is kept under $SE_JAX_CACHE (default
    ~/.cache/se_jax)/tokenizers, keyed by the file's name, size and mtime, written to a
    temporary directory and renamed into place, so concurrent processes never read a
    half-written one.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    stat = os.stat(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    root = str(runtime.cache_root() / "tokenizers")
    out = os.path.join(root, f"{stem}-{stat.st_size}-{stat.st_mtime_ns}")
    if os.path.isfile(os.path.join(out, "tokenizer_config.json")):
        return out
    tokenizer = gguf_tokenizer(path)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{stem}-", dir=root)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, out)
    except OSError:   # another process renamed its copy first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def to_hf_state_dict(model: Llama) -> dict[str, np.ndarray]:
    """HF tensor names -> numpy arrays in torch layout (`[out, in]` weights), param dtype.

    Every process gets the full arrays. LoRA adapters must be merged first.
    """
    variables = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = {}
    for spec in param_specs(model.config):
        a = to_host(variables[spec.path].get_value())
        out[spec.hf_name] = np.ascontiguousarray(a.T if spec.transpose else a)
    return out


def save_hf_checkpoint(model: Llama, path: str, tokenizer=None) -> str:
    """Write `model` as a HF directory (config.json + model.safetensors [+ tokenizer]) that
    transformers and `load_llama` read. Only process 0 writes; returns `path`."""
    tensors = to_hf_state_dict(model)
    if distributed.is_main_process():
        write_hf_checkpoint(path, hf_config_dict(model.config), tensors)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    return path
