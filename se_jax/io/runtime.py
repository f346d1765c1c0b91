"""Process-wide settings every launcher applies first: JAX's persistent compilation cache,
a quiet console, and the telemetry counters.

    runtime.setup()                      # in a launcher's main(), before any JAX work

- Compilation cache: compiled XLA programs are kept on disk and reused by later processes
  (a rerun, the next run of a sweep, another config with the same shapes). Directory:
  $SE_JAX_COMPILE_CACHE, else `cache_root()`/xla ($SE_JAX_CACHE, else ~/.cache/se_jax);
  SE_JAX_COMPILE_CACHE=off disables it.
- Console: INFO lines from Orbax, TFDS and absl's own chatter are dropped (dozens per
  checkpoint hid the progress lines); our stages' progress, rate/ETA and result lines stay.
  `library_logs=True` (launchers' --library_logs) keeps everything.
- GPU settings (`gpu_settings`): the XLA flags and memory setting below, applied to the
  environment only when the backend will be a GPU (never on CPU or TPU), before JAX
  starts its backend; a value the user already set is kept.
"""
from __future__ import annotations

import importlib.util
import logging as py_logging
import os
from pathlib import Path
from typing import MutableMapping

from se_jax.io.telemetry import Telemetry

CACHE_ENV = "SE_JAX_COMPILE_CACHE"
# Path fragments of the libraries whose INFO lines are dropped from the console.
_NOISY = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/absl/", "/jax/_src/")


# From JAX's "GPU performance tips" and "GPU memory allocation" pages and NVIDIA's
# JAX-Toolbox "Tips for High-Performance LLMs with JAX and XLA"; each with its reason.
GPU_XLA_FLAGS = {
    # Lets XLA overlap the data/fsdp mesh's all-gathers and reduce-scatters with compute
    # (multi-GPU meshes; a no-op on one GPU). JAX-Toolbox sets it in its images.
    "--xla_gpu_enable_latency_hiding_scheduler": "true",
}
GPU_ENV = {
    # JAX preallocates 75% of GPU memory by default; the KV cache of M x batch rows and the
    # train state of a 7-8B model want more. 0.9 leaves room for cuBLAS/cuDNN workspaces.
    "XLA_CLIENT_MEM_FRACTION": "0.9",
}
# Left out on purpose: --xla_gpu_triton_gemm_any (JAX's tips suggest it, JAX-Toolbox
# disables Triton GEMMs for cuBLAS; unmeasured here), XLA_PYTHON_CLIENT_PREALLOCATE=false
# (fragmentation), collective-combining thresholds (need a profile of the real mesh).
_GPU_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda12",
                "jax_rocm7_plugin", "jax_rocm60_plugin")
_GPU_NAMES = ("cuda", "gpu", "rocm")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def will_use_gpu(env: MutableMapping[str, str] | None = None) -> bool:
    """Whether JAX's default backend will be a GPU, decided without starting JAX: the first
    of $JAX_PLATFORMS when it is set, else a CUDA/ROCm plugin installed and a GPU device
    node present."""
    env = os.environ if env is None else env
    platforms = [p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",")
                 if p.strip()]
    if platforms:
        return platforms[0] in _GPU_NAMES
    has_device = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/kfd")
    return has_device and any(_installed(m) for m in _GPU_PLUGINS)


def gpu_settings(env: MutableMapping[str, str] | None = None, *,
                 gpu: bool | None = None) -> dict[str, str]:
    """Set GPU_XLA_FLAGS (appended to $XLA_FLAGS, a flag already there kept as the user
    wrote it) and GPU_ENV (unless the user set it, or its older name) in `env` when the
    backend will be a GPU (`gpu`, default `will_use_gpu(env)`); returns what was changed
    (empty on CPU and TPU). Must run before JAX initialises its backend."""
    env = os.environ if env is None else env
    if not (will_use_gpu(env) if gpu is None else gpu):
        return {}
    changed = {}
    flags = env.get("XLA_FLAGS", "")
    present = {f.split("=", 1)[0] for f in flags.split()}
    extra = [f"{k}={v}" for k, v in GPU_XLA_FLAGS.items() if k not in present]
    if extra:
        changed["XLA_FLAGS"] = env["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    for key, value in GPU_ENV.items():
        older = key.replace("XLA_CLIENT_", "XLA_PYTHON_CLIENT_")
        if key not in env and older not in env:
            changed[key] = env[key] = value
    return changed


def cache_root() -> Path:
    """se_jax's per-machine cache: $SE_JAX_CACHE, else ~/.cache/se_jax."""
    return Path(os.environ.get("SE_JAX_CACHE") or Path.home() / ".cache" / "se_jax")


def compile_cache_dir() -> Path | str | None:
    """Where compiled programs are kept, or None when disabled. A URL (gs://bucket/xla) is
    kept as the string JAX's cache opens through etils.epath (gcsfs on every host), never
    turned into a local `gs:/` folder."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    if "://" in value:
        return value
    return Path(value) if value else cache_root() / "xla"


class _QuietLibraries(py_logging.Filter):
    """Drops records below WARNING that come from the noisy libraries' source files."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(
            part in record.pathname for part in _NOISY)


def quiet_libraries() -> None:
    """Install the filter on absl's handler and the root logger's handlers (idempotent)."""
    from absl import logging as absl_logging
    handlers = [absl_logging.get_absl_handler(), *py_logging.getLogger().handlers]
    for handler in handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())


def setup(*, library_logs: bool = False) -> Telemetry:
    """Apply the process-wide settings; returns the process's Telemetry."""
    gpu_settings()   # before `import jax` starts anything: XLA reads them at backend start
    import jax
    cache = compile_cache_dir()
    if cache is not None:
        if isinstance(cache, Path):
            cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        # Keep every program that took a second or more to compile; small ones are cheap.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if not library_logs:
        quiet_libraries()
    return Telemetry.install()
