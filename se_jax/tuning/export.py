"""Export a fine-tuned model for PyTorch users: a PEFT adapter directory, or a merged full
Hugging Face checkpoint.

PEFT adapter (`export_peft_adapter`): `adapter_config.json` + `adapter_model.safetensors`
with PEFT's tensor names and layouts,

    base_model.model.<hf module>.lora_A.weight   [r, in]   (= our lora_a.T)
    base_model.model.<hf module>.lora_B.weight   [out, r]  (= our lora_b.T)

where <hf module> comes from the decoder's one HF name map (`hf_names.param_specs`), so
`PeftModel.from_pretrained(AutoModelForCausalLM..., adapter_dir)` reproduces our logits.
Merged (`export_merged`): adapters folded into the base kernels, written by the decoder's
`save_hf_checkpoint` (config.json + model.safetensors [+ tokenizer]).
`load_peft_adapter` reads such an adapter directory back onto a base model (ours or PEFT's).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from se_jax.parallel import distributed
from se_jax.parallel.distributed import to_host
from se_jax.tuning import lora
from se_jax.models.hf_names import param_specs
from se_jax.models.loading import save_hf_checkpoint
from se_jax.io.stage_io import atomic_path, atomic_write_text


def _hf_module_names(model) -> dict[tuple, str]:
    """Our linear's path (tuple) -> its HF module name ("model.layers.0.self_attn.q_proj")."""
    return {spec.path[:-1]: spec.hf_name[:-len(".weight")]
            for spec in param_specs(model.config) if spec.path[-1] == "kernel"}


def adapter_tensors(model) -> dict[str, np.ndarray]:
    """PEFT-named adapter tensors (float32, torch layout) of every `LoRALinear` in `model`."""
    names = _hf_module_names(model)
    out = {}
    for path, layer in lora.lora_layers(model):
        key = tuple(int(p) if p.isdigit() else p for p in path.split("."))
        if key not in names:
            raise ValueError(f"LoRA layer {path} has no Hugging Face name")
        prefix = f"base_model.model.{names[key]}"
        # to_host: an fsdp-sharded adapter spanning several hosts is gathered first
        # (jax.device_get fails on an array this host does not fully address).
        a, b = to_host(layer.lora.lora_a[...]), to_host(layer.lora.lora_b[...])
        out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, np.float32).T)
        out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, np.float32).T)
    if not out:
        raise ValueError("the model has no LoRA adapters to export")
    return out


def adapter_config(spec: lora.LoRASpec, base_model: str,
                   modules: list[str]) -> dict[str, Any]:
    """PEFT's LoraConfig fields for `spec` (scale = alpha / r, no rsLoRA / DoRA / bias).

    A regex target (matched against our paths, which lack HF's "model." prefix) or one
    limited to the top layers is written as the explicit list of HF module names `modules`,
    which PEFT matches as suffixes.
    """
    targets = (sorted(modules) if isinstance(spec.target_modules, str) or spec.top_layers
               else sorted(spec.target_modules))
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": targets, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
            "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def export_peft_adapter(model, spec: lora.LoRASpec, out_dir: str, *,
                        base_model: str = "") -> str:
    """Write the PEFT adapter directory of `model`'s adapters; returns `out_dir`."""
    tensors = adapter_tensors(model)
    modules = sorted({n[len("base_model.model."):-len(".lora_A.weight")]
                      for n in tensors if n.endswith(".lora_A.weight")})
    if distributed.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        # atomic, and no .tmp left behind when the disk fills up
        with atomic_path(os.path.join(out_dir, "adapter_model.safetensors")) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        atomic_write_text(os.path.join(out_dir, "adapter_config.json"),
                          json.dumps(adapter_config(spec, base_model, modules), indent=2)
                          + "\n")
    return out_dir


def export_merged(model, out_dir: str, *, tokenizer=None) -> str:
    """Fold the adapters into the base weights (in place: `model` ends without adapters) and
    write a full HF safetensors checkpoint; returns `out_dir`."""
    lora.merge_lora(model)
    return save_hf_checkpoint(model, out_dir, tokenizer=tokenizer)


def load_peft_adapter(model, adapter_dir: str | os.PathLike, *, merge: bool = False):
    """Add the adapters of a PEFT adapter directory to `model` (in place; returns it).

    Exactly the linears named in `adapter_model.safetensors` get a `LoRALinear` with the
    file's A and B (scale lora_alpha / r, no dropout); `merge=True` folds them into the
    base kernels instead (a plain model, e.g. a taught base for a new experiment).
    Raises ValueError naming the file and tensor when the adapter does not fit the model.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"PEFT adapter: {path} does not exist")
    cfg = json.loads(config_path.read_text())
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or cfg[field] <= 0:
            raise ValueError(f"{config_path}: field {field!r} must be a positive number, got "
                             f"{cfg.get(field)!r}")
    tensors = load_file(str(weights_path))
    ours = {hf: ".".join(map(str, path)) for path, hf in _hf_module_names(model).items()}
    suffix = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
    found: dict[str, dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        m = suffix.match(name)
        if m is None or m.group(1) not in ours:
            raise ValueError(f"{weights_path}: tensor {name!r} names no linear of the model")
        found.setdefault(ours[m.group(1)], {})[m.group(2)] = value
    if not found:
        raise ValueError(f"{weights_path}: no LoRA tensors")
    spec = lora.LoRASpec(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=0.0,
                         target_modules="|".join(re.escape(p) for p in sorted(found)))
    lora.add_lora(model, spec, rngs=nnx.Rngs(0))
    for path, layer in lora.lora_layers(model):
        pair = found[path]
        a, b = pair.get("A"), pair.get("B")
        want_a, want_b = layer.lora.lora_a.shape, layer.lora.lora_b.shape
        if a is None or b is None or a.T.shape != want_a or b.T.shape != want_b:
            raise ValueError(f"{weights_path}: adapter of {path} has shapes "
                             f"{None if a is None else list(a.shape)} / "
                             f"{None if b is None else list(b.shape)}, the model needs "
                             f"{list(want_a[::-1])} / {list(want_b[::-1])} (r={spec.rank})")
        for var, host in ((layer.lora.lora_a, a.T), (layer.lora.lora_b, b.T)):
            value = var[...]
            var[...] = jax.device_put(np.asarray(host, value.dtype), value.sharding)
    if merge:
        lora.merge_lora(model)
    return model
