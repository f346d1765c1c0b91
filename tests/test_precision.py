"""se_jax.config.precision: what model.dtype="auto" resolves to."""
from __future__ import annotations

import pytest

from se_jax.config import precision


@pytest.mark.parametrize("platform, flags, capability, native", [
    ("tpu", frozenset(), None, True),
    ("gpu", frozenset(), "9.0", True),          # H100
    ("cuda", frozenset(), "8.0", True),         # A100
    ("gpu", frozenset(), "7.0", False),         # V100: no bfloat16 tensor cores
    ("gpu", frozenset(), None, False),
    ("cpu", frozenset({"avx512f", "avx512_bf16"}), None, True),
    ("cpu", frozenset({"amx_bf16", "amx_tile"}), None, True),
    ("cpu", frozenset({"avx2", "avx512f"}), None, False),
    ("cpu", frozenset(), None, False),
])
def test_native_bfloat16(platform, flags, capability, native):
    assert precision.native_bfloat16(platform, flags, capability) is native


def test_resolve_dtype_keeps_explicit_names_and_resolves_auto():
    assert precision.resolve_dtype("float32") == "float32"
    assert precision.resolve_dtype("bfloat16") == "bfloat16"
    expected = "bfloat16" if precision.native_bfloat16("cpu", precision.cpu_flags()) else "float32"
    assert precision.resolve_dtype("auto") == expected


def test_load_llama_resolves_auto(tmp_path):
    from se_jax.models.loading import load_llama
    from tests.tiny_models import write_tiny_llama_dir
    model = load_llama(write_tiny_llama_dir(tmp_path / "tiny"), dtype="auto")
    assert model.config.dtype == precision.resolve_dtype("auto")
    assert model.config.param_dtype == "float32"
