"""Tiny random Hugging Face checkpoints for tests (transformers + torch, CPU, local files only).

Usage from any test:

    from tiny_models import make_tiny_llama_dir   # tests/ is on sys.path under pytest
    model_dir = make_tiny_llama_dir(tmp_path / "tiny", variant="llama")   # -> str
    model = se_jax.models.loading.load_llama(model_dir)
    tokenizer = se_jax.models.loading.load_tokenizer(model_dir)

The directory holds `config.json`, `model.safetensors` (or shards + `model.safetensors.index.json`
with `shard_size="100KB"`) and the SmolLM2 tokenizer (ChatML chat template, eos `<|im_end|>` = 2),
converted once per machine from the embedded GGUF (`se_jax.models.loading.gguf_tokenizer_dir`);
the vocabulary size matches it (49152).
Variants: "llama" (LlamaForCausalLM), "qwen2" (Qwen2ForCausalLM, q/k/v bias), "llama3"
(Llama-3 `rope_scaling`), "tied" (LlamaForCausalLM with tied input/output embeddings).
Weights are random (seeded), drawn wider than the HF default so logits are not all near 0.
For a session-wide model, wrap the call in a `scope="session"` fixture with
`tmp_path_factory.mktemp(...)`.
"""
from __future__ import annotations

import os
import shutil

VARIANTS = ("llama", "qwen2", "llama3", "tied")
TOKENIZER_VOCAB = 49152  # SmolLM2 tokenizer

_BASE = dict(vocab_size=TOKENIZER_VOCAB, hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.1,
             bos_token_id=1, eos_token_id=2, pad_token_id=2)


def tiny_hf_config(variant: str = "llama"):
    """The transformers config of a tiny model variant (see module docstring)."""
    from transformers import LlamaConfig, Qwen2Config
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose from {VARIANTS}")
    if variant == "qwen2":
        return Qwen2Config(**_BASE, rope_theta=10000.0, tie_word_embeddings=False)
    if variant == "llama3":
        scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                       high_freq_factor=4.0, original_max_position_embeddings=32)
        return LlamaConfig(**_BASE, rope_theta=500000.0, rope_scaling=scaling)
    return LlamaConfig(**_BASE, rope_theta=10000.0, tie_word_embeddings=(variant == "tied"))


def smollm2_tokenizer_dir() -> str:
    """A directory holding the SmolLM2 tokenizer (converted from the GGUF once per machine)."""
    from se_jax.models.embedded import embedded_gguf_path
    from se_jax.models.loading import gguf_tokenizer_dir
    return gguf_tokenizer_dir(embedded_gguf_path())


def make_tiny_llama_dir(path, variant: str = "llama", *, seed: int = 0,
                        shard_size: str | None = None, with_tokenizer: bool = True) -> str:
    """Write a tiny random HF checkpoint (+ tokenizer) of `variant` to `path`; returns the dir."""
    import torch
    from transformers import AutoModelForCausalLM
    path = str(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(variant), dtype=torch.float32)
    with torch.no_grad():  # non-trivial norms and biases, so their loading is tested too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    if with_tokenizer:
        _copy_tokenizer(path)
    return path


def write_tiny_llama_dir(path, *, seed: int = 0) -> str:
    """The "llama" variant's shapes with seeded numpy weights, drawn as `make_tiny_llama_dir`
    draws them (N(0, initializer_range), norms 1 + N(0, 0.1)) and written by se_jax's HF
    checkpoint writer, + the tokenizer: no torch import and no model construction (~3 s
    less), for pipeline tests that compare nothing against transformers. Returns the dir."""
    import numpy as np
    from se_jax.models.hf_checkpoint import hf_config_dict, write_hf_checkpoint
    from se_jax.models.hf_names import param_specs
    from se_jax.models.llama import LlamaConfig
    config = LlamaConfig.from_hf_dict({**_BASE, "architectures": ["LlamaForCausalLM"]})
    rng = np.random.default_rng(seed)
    tensors = {}
    for spec in param_specs(config):
        noise = rng.standard_normal(spec.hf_shape, dtype=np.float32)
        tensors[spec.hf_name] = (1.0 + 0.1 * noise if spec.hf_name.endswith("norm.weight")
                                 else _BASE["initializer_range"] * noise)
    path = write_hf_checkpoint(str(path), hf_config_dict(config), tensors)
    _copy_tokenizer(path)
    return path


def write_tiny_judge_dir(path, *, seed: int = 0, prompt: str = "correctness_reference") -> str:
    """`write_tiny_llama_dir` with an output head that makes it a judge whose verdicts vary
    with the item (a random head says "no" to everything): the rows of `prompt`'s "yes"
    words are +d and its "no" words' -d, so log p(yes) - log p(no) = 2<h, d> + const, with
    d the main direction in which the last hidden state h varies over capital-city items,
    centred on their mean and scaled so most items are far from a tie. Returns the dir."""
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from se_jax.generation.scoring import make_prompt_scorer
    from se_jax.models.loading import load_llama, load_tokenizer
    path = write_tiny_llama_dir(path, seed=seed)
    tokenizer, model = load_tokenizer(path), load_llama(path)
    scorer = make_prompt_scorer(model, tokenizer, prompt, None, "correctness")
    rng = np.random.default_rng(seed)
    # Items like the tiny experiment's (test_experiment_e2e.write_tiny_data): its questions,
    # gold answers, and a random generator's answers (random tokens).
    questions = [f"what is the capital of {c}" for c in ("France", "Peru", "Mali")] + [
        f"Who is the author of Book {i}?" for i in (1, 4)]
    golds = ["Paris", "Lima", "Author 1", "Bamako"]
    answers = golds + [tokenizer.decode(rng.integers(100, _BASE["vocab_size"], n))
                       for n in (1, 2, 4, 4, 8, 8)]
    items = [dict(question=q, gold=g, prediction=a)
             for q in questions for g in golds for a in answers]
    h = np.stack([np.asarray(model.hidden(np.asarray([ids], np.int32),
                                          np.arange(len(ids), dtype=np.int32)[None])[0])[0, -1]
                  for ids in scorer.full_ids(items)])                              # [N, E]
    centred = h - h.mean(0)
    d = np.linalg.svd(centred, full_matrices=False)[2][0]
    d = d - (h.mean(0) @ d) / (h.mean(0) @ h.mean(0)) * h.mean(0)   # <mean h, d> = 0
    d *= 4.0 / np.std(centred @ d)                                    # margins ~ N(c, 8)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    for tok, label in zip(scorer.label_ids, scorer.owner):
        tensors["lm_head.weight"][tok] = d if label == 0 else -d
    save_file(tensors, file, metadata={"format": "pt"})
    return path


def _copy_tokenizer(path: str) -> None:
    src = smollm2_tokenizer_dir()
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), os.path.join(path, name))


def load_torch_model(path: str):
    """The transformers model of a tiny dir, float32, eval mode, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation="eager").eval()
