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
"""
from __future__ import annotations

import logging as py_logging
import os
from pathlib import Path

from se_jax.io.telemetry import Telemetry

CACHE_ENV = "SE_JAX_COMPILE_CACHE"
# Path fragments of the libraries whose INFO lines are dropped from the console.
_NOISY = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/absl/", "/jax/_src/")


def cache_root() -> Path:
    """se_jax's per-machine cache: $SE_JAX_CACHE, else ~/.cache/se_jax."""
    return Path(os.environ.get("SE_JAX_CACHE") or Path.home() / ".cache" / "se_jax")


def compile_cache_dir() -> Path | None:
    """Where compiled programs are kept, or None when disabled."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
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
    import jax
    cache = compile_cache_dir()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        # Keep every program that took a second or more to compile; small ones are cheap.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if not library_logs:
        quiet_libraries()
    return Telemetry.install()
