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
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from se_jax import lora
from se_jax.models.hf_names import param_specs
from se_jax.models.loading import save_hf_checkpoint
from se_jax.stage_io import atomic_path, atomic_write_text


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
        a, b = jax.device_get((layer.lora.lora_a[...], layer.lora.lora_b[...]))
        out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, np.float32).T)
        out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, np.float32).T)
    if not out:
        raise ValueError("the model has no LoRA adapters to export")
    return out


def adapter_config(spec: lora.LoRASpec, base_model: str,
                   modules: list[str]) -> dict[str, Any]:
    """PEFT's LoraConfig fields for `spec` (scale = alpha / r, no rsLoRA / DoRA / bias).

    A regex target (matched against our paths, which lack HF's "model." prefix) is written
    as the explicit list of HF module names `modules`, which PEFT matches as suffixes.
    """
    targets = (sorted(modules) if isinstance(spec.target_modules, str)
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
    if jax.process_index() == 0:
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
