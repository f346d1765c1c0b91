"""Tiny random DeBERTa NLI checkpoints on disk (built once per session, shared by tests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tools import random_nli

VARIANTS = ("v1", "v2", "v3")


@pytest.fixture(scope="session")
def tiny_nli_dirs(tmp_path_factory) -> dict[str, Path]:
    """{"v1" | "v2" | "v3": HF directory of a tiny random DeBERTa NLI model + tokenizer}."""
    root = tmp_path_factory.mktemp("tiny_nli")
    return {v: random_nli.save_random_nli(root / v, random_nli.TINY[v],
                                          random_nli.DEFAULT_SENTENCES, seed=i)
            for i, v in enumerate(VARIANTS)}
