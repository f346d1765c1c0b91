"""Which compute dtype `model.dtype="auto"` means on this machine.

bfloat16 where the hardware multiplies it natively (TPUs, NVIDIA GPUs from Ampere on, CPUs
with AVX512-BF16 or AMX), float32 elsewhere: on a CPU without those instructions XLA
emulates bfloat16 products and they run slower than float32. Measured on a 2-core AMD EPYC
with avx512_bf16 (docs/log/2026-12-03-bfloat16.md): bfloat16 trains SmolLM2's LoRA step
1.45x, prefills 1.6x and samples 1.9x faster than float32.

Storage (`param_dtype`) is not chosen here: weights that an optimizer updates stay float32
(`se_jax.tuning.training.float32_trainable` makes a run's trainable parameters float32,
and so Adam's moments, whatever the storage dtype of the base weights).
Importing this module does not import JAX (config validation reads its names before JAX
starts).
"""
from __future__ import annotations

AUTO = "auto"
DTYPES = ("float32", "bfloat16")   # the compute and storage dtypes a config may name
# /proc/cpuinfo flags of native bfloat16 products.
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# CUDA compute capability from which tensor cores multiply bfloat16 (Ampere).
_MIN_CUDA_BF16 = 8.0


def cpu_flags() -> frozenset[str]:
    """/proc/cpuinfo's 'flags' of the first CPU (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16(platform: str, flags: frozenset[str] = frozenset(),
                    compute_capability: str | None = None) -> bool:
    """Whether `platform` (jax's backend name) multiplies bfloat16 natively."""
    if platform == "tpu":
        return True
    if platform in ("gpu", "cuda"):
        try:
            return float(compute_capability or 0) >= _MIN_CUDA_BF16
        except ValueError:
            return False
    if platform == "rocm":
        return True
    return bool(flags & _CPU_BF16_FLAGS)


def resolve_dtype(name: str) -> str:
    """`name` itself, or for "auto" the compute dtype this machine's first device runs
    fastest (see the module doc)."""
    if name != AUTO:
        return name
    import jax
    device = jax.devices()[0]
    native = native_bfloat16(device.platform, cpu_flags() if device.platform == "cpu"
                             else frozenset(), getattr(device, "compute_capability", None))
    return "bfloat16" if native else "float32"
