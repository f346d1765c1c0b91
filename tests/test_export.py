"""Exports load in PyTorch and reproduce our logits: the PEFT adapter directory through
transformers + peft, and the merged full checkpoint through transformers alone."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from se_jax.tuning import export
from se_jax.tuning import lora
from se_jax.tuning import training
from se_jax.models.loading import load_llama
import typed_configs
from tiny_models import load_torch_model, make_tiny_llama_dir

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_export"), with_tokenizer=False)


def _tuned_model(path: str, targets, top_layers: int = 0) -> tuple:
    """A model with adapters on `targets` (of the top `top_layers` layers when > 0) and
    random (non-zero) adapter weights."""
    cfg = typed_configs.training(mode="lora", lora=dict(
        rank=4, alpha=16.0, dropout=0.1, target_modules=targets, top_layers=top_layers))
    model = load_llama(path)
    training.prepare_model(model, cfg, seed=1)
    for i, (_, layer) in enumerate(lora.lora_layers(model)):
        b = layer.lora.lora_b
        b[...] = 0.2 * jax.random.normal(jax.random.key(i), b.shape)
    model.eval()  # dropout off, as at inference
    return model, training.lora_spec(cfg)


def _tokens(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(0).integers(3, vocab, (2, 12)).astype(np.int32)
    return tokens, np.broadcast_to(np.arange(12, dtype=np.int32), (2, 12))


def _torch_logits(torch_model, tokens: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return torch_model(input_ids=torch.from_numpy(tokens).long()).logits.float().numpy()


@pytest.mark.parametrize("targets,top_layers", [
    (("q_proj", "v_proj"), 0), (r"layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)", 0),
    (("q_proj", "down_proj"), 1)], ids=["q_v", "regex_o_down", "q_down_top1"])
def test_peft_adapter_loads_in_transformers_with_the_same_logits(tiny_dir, tmp_path, targets,
                                                                 top_layers):
    from peft import PeftModel

    model, spec = _tuned_model(tiny_dir, targets, top_layers)
    if top_layers:   # only the top layer's projections (the tiny model has 2 layers)
        assert sorted(p for p, _ in lora.lora_layers(model)) == [
            "layers.1.mlp.down_proj", "layers.1.self_attn.q_proj"]
    tokens, positions = _tokens(model.config.vocab_size)
    ours = np.asarray(model(tokens, positions)[0])
    out = export.export_peft_adapter(model, spec, str(tmp_path / "adapter"),
                                     base_model=tiny_dir)

    tensors = load_file(f"{out}/adapter_model.safetensors")
    layers = lora.lora_layers(model)
    assert len(tensors) == 2 * len(layers)
    first = layers[0][0]  # PEFT's names and [r, in] / [out, r] layouts
    a = tensors[f"base_model.model.model.{first}.lora_A.weight"]
    b = tensors[f"base_model.model.model.{first}.lora_B.weight"]
    assert a.shape == (4, layers[0][1].base_layer.in_features)
    assert b.shape == (layers[0][1].base_layer.out_features, 4)
    config = json.loads(open(f"{out}/adapter_config.json").read())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 16.0, "LORA")

    peft_model = PeftModel.from_pretrained(load_torch_model(tiny_dir), out).eval()
    loaded = {n: p.detach().numpy() for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(tensors)  # every adapter tensor found a home, no extra ones
    np.testing.assert_array_equal(
        loaded[f"base_model.model.model.{first}.lora_A.default.weight"], a)
    theirs = _torch_logits(peft_model, tokens)
    np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL)
    # The adapter really changes the model (the comparison is not base vs base).
    base = _torch_logits(load_torch_model(tiny_dir), tokens)
    assert np.abs(base - theirs).max() > 100 * TOL


def test_merged_checkpoint_loads_in_transformers_and_back(tiny_dir, tmp_path):
    model, _ = _tuned_model(tiny_dir, ("q_proj", "v_proj"))
    tokens, positions = _tokens(model.config.vocab_size)
    ours = np.asarray(model(tokens, positions)[0])
    out = export.export_merged(model, str(tmp_path / "merged"))
    assert not lora.lora_layers(model)  # merged in place: plain nnx.Linear again
    np.testing.assert_allclose(np.asarray(model(tokens, positions)[0]), ours, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(_torch_logits(load_torch_model(out), tokens), ours,
                               rtol=TOL, atol=TOL)
    reloaded = load_llama(out)
    np.testing.assert_allclose(np.asarray(reloaded(tokens, positions)[0]), ours,
                               rtol=TOL, atol=TOL)
