"""The yardstick every `launch/bench_*.py` carries: this machine's limits, measured in the
same run as the benchmark, so that a figure reads as a fraction of what the CPU can do
rather than only as a ratio to a peer that may itself be slow.

    stick = Yardstick.measure()            # ~3 s: matmul peaks, bandwidth, CPU model
    watch = LoadWatch.start()              # load average and CPU counters before the run
    ... the benchmark ...
    print(stick.describe())
    print(f"ours {share_of_peak(flops_per_s, stick.peak)}")
    print(ceiling_line("a decode step's", 80, matmul_chain(config, 80).gflops(), stick.peak,
                       {"ours": our_gflops}))
    print(watch.stop().verdict())          # the script's last line

Measured: the median GFLOP/s of a jitted 2048^3 matmul (JAX/XLA) and of torch's, in the
benchmark's compute dtype (float32 unless it runs `--dtype=bfloat16`);
the peak is the faster of the two (what this machine's cores reach on the kernel that
dominates every benchmark). Memory bandwidth: the faster of a jitted matrix-vector product
over a 256 MiB float32 matrix (what a decode step does with the weights) and torch's sum
over the same bytes, in GB/s.

Load: the 1-minute load average before and after, and the CPU time *other* processes used
during the run (/proc/stat busy time minus this process's and its children's rusage), in
cores. The rule judges the others' share during the run, the one direct measurement: the
after-run load average includes the benchmark's own threads (a 2-core benchmark drives it
to ~2), and the before-run one lags by a minute (a previous benchmark's load lingers in it
although nothing else runs), so both are printed, not judged.
The ceiling of a program's own shapes: `matmul_chain` is the model's products alone at the
program's rows (the 2048^3 peak is a square no decode step has); the benchmarks give our
side as a share of it, measured in the same process right after the side's runs, and
`bench_ceiling.py` measures how far each such ceiling sits below the peak.
The pure parts (FLOPs per token, roofline, the load rule) and the chain's FLOP count are
tested in tests/test_yardstick.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

from se_jax.config import precision

# Useful FLOPs per token per matmul parameter: a forward pass multiplies each weight once
# (2 FLOPs: multiply and add); LoRA training adds the backward pass through the frozen
# weights (the activation gradient only, no weight gradient: another 2), the adapters'
# own terms being ~0.1% of it.
FLOPS_PER_PARAM = {"forward": 2.0, "lora_train": 4.0}
LOAD_LIMIT_PER_CORE = 0.5


# ----------------------------------------------------------------------------- pure parts

def flops_per_token(matmul_params: float, kind: str) -> float:
    """Useful FLOPs per token for a model whose tokens each pass through `matmul_params`
    weights (attention's score/value products, ~4*T*hidden*layers, are left out: < 5% at
    the benchmarks' lengths)."""
    if kind not in FLOPS_PER_PARAM:
        raise ValueError(f"kind={kind!r} is not one of {sorted(FLOPS_PER_PARAM)}")
    return FLOPS_PER_PARAM[kind] * matmul_params


def llama_matmul_shapes(config) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The products a token passes through in a Llama-family decoder (`LlamaConfig` fields):
    one layer's projections as (in, out) in the order a token meets them (q, k, v, o, gate,
    up, down), and the output head (hidden, vocab; a tied embedding counts once, as the
    head; the embedding lookup itself costs no FLOPs)."""
    h = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    mlp = config.intermediate_size
    return [(h, q), (h, kv), (h, kv), (q, h), (h, mlp), (h, mlp), (mlp, h)], (h, config.vocab_size)


def llama_matmul_params(config) -> int:
    """Weights a token passes through: every layer's projections and the head
    (`llama_matmul_shapes`)."""
    layer, (h, vocab) = llama_matmul_shapes(config)
    return config.num_hidden_layers * sum(i * o for i, o in layer) + h * vocab


def kv_bytes_per_row(layers: int, kv_heads: int, head_dim: int, context: int,
                     itemsize: int) -> float:
    """Bytes of keys and values one decode step reads for one row holding `context` tokens."""
    return 2.0 * layers * kv_heads * head_dim * context * itemsize


def decode_roofline(bandwidth_gbs: float, weight_bytes: float, kv_bytes_row: float,
                    rows: int) -> float:
    """The memory-bandwidth ceiling of decode in tokens/s: a step reads every weight once
    (shared by the `rows` rows) and each row's keys and values, and yields `rows` tokens."""
    return rows * bandwidth_gbs * 1e9 / (weight_bytes + rows * kv_bytes_row)


def share(achieved: float, limit: float) -> float:
    """achieved / limit (0 when the limit is unknown)."""
    return achieved / limit if limit > 0 else 0.0


def share_of_peak(flops: float, seconds: float, peak_gflops: float) -> str:
    """'123.4 GFLOP/s = 56% of peak' for `flops` done in `seconds`."""
    rate = flops / seconds / 1e9
    return f"{rate:.1f} GFLOP/s = {share(rate, peak_gflops):.0%} of peak"


def load_verdict(load_before: float, load_after: float, others_cores: float,
                 cores: int) -> str:
    """The last line of every benchmark: 'load ok' or, loudly, 'figures unreliable'.

    Unreliable when the CPU other processes used during the run (in cores) exceeded
    LOAD_LIMIT_PER_CORE per core. The load averages are shown but not judged: the one after
    includes the benchmark's own threads, the one before lags a minute behind the machine.
    """
    facts = (f"load average {load_before:.2f} before, {load_after:.2f} after (incl. this "
             f"benchmark); other processes used {others_cores:.2f} cores during the run; "
             f"{cores} cores")
    if others_cores > LOAD_LIMIT_PER_CORE * cores:
        return (f"!!! FIGURES UNRELIABLE: others' load {others_cores:.2f} on {cores} cores "
                f"(> {LOAD_LIMIT_PER_CORE} per core) !!! {facts}")
    return f"load ok: {facts}"


# ----------------------------------------------------------------------------- measuring

def cpu_model() -> str:
    """/proc/cpuinfo's first 'model name' (the platform's name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def wall_seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn()` (the caller synchronises device work inside it)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timings(fn: Callable[[], object], repeats: int, warmup: int = 0) -> list[float]:
    """Wall seconds of `repeats` calls of `fn()`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [wall_seconds(fn) for _ in range(repeats)]


def median_seconds(fn: Callable[[], object], repeats: int,
                   stat: Callable[[list[float]], float] = statistics.median) -> float:
    """Median wall seconds of `fn()` over `repeats` calls, after one untimed call
    (stat=min: the fastest call, the best reading of a peak on a host whose speed drifts)."""
    return stat(timings(fn, repeats, warmup=1))


def jax_matmul_gflops(n: int = 2048, repeats: int = 5, dtype: str = "float32",
                      stat: Callable[[list[float]], float] = statistics.median) -> float:
    """A jitted n^3 matmul in `dtype`, summed in float32 (as se_jax's projections are)."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    return 2.0 * n ** 3 / median_seconds(lambda: mm(a, b).block_until_ready(), repeats,
                                         stat) / 1e9


def torch_matmul_gflops(n: int = 2048, repeats: int = 5, dtype: str = "float32",
                        stat: Callable[[list[float]], float] = statistics.median) -> float:
    import torch
    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    return 2.0 * n ** 3 / median_seconds(lambda: a @ b, repeats, stat) / 1e9


def matmul_peaks(dtype: str = "float32") -> tuple[float, float]:
    """(jax, torch) 2048^3 matmul GFLOP/s in `dtype`; torch 0 where it is not installed.
    The faster of the two is the peak the benchmarks quote."""
    try:
        torch_gf = torch_matmul_gflops(dtype=dtype)
    except ImportError:
        torch_gf = 0.0
    return jax_matmul_gflops(dtype=dtype), torch_gf


@dataclasses.dataclass(frozen=True)
class MatmulChain:
    """A compiled-on-first-call program (`fn(*args)`) that does `flops` useful FLOPs."""
    fn: Callable[..., object]
    args: tuple
    flops: float

    def gflops(self, repeats: int = 3) -> float:
        """Useful GFLOP/s: the median of `repeats` calls after one untimed (compiling) call."""
        import jax
        seconds = median_seconds(lambda: jax.block_until_ready(self.fn(*self.args)), repeats)
        return self.flops / seconds / 1e9


def matmul_chain(config, rows: int, kind: str = "forward", dtype: str = "float32",
                 seed: int = 0) -> MatmulChain:
    """A jitted program that does a model's products and (almost) nothing else, with its
    arguments: the ceiling of a program with these shapes on this machine, a yardstick
    nearer than the 2048^3 peak (XLA's kernels reach different shares of the peak at
    different shapes; a decode step's [80, 576] rows are not a 2048^3 square).

    x [rows, hidden] passes through `config`'s layers (random weights of
    `llama_matmul_shapes`, in `dtype` with float32 sums, as se_jax's projections) and
    the head; what joins the products is a residual add, SiLU times up, and the k and v
    products reduced into q's (so none is dead code); no attention, norms, rotary or loss.
    kind="forward": the products (a prefill or decode step's); "lora_train": forward and
    the backward to the input only (a LoRA step's frozen weights: no weight gradients).
    The useful FLOPs are `flops_per_token(llama_matmul_params(config), kind) * rows`.
    """
    import jax
    import jax.numpy as jnp

    from se_jax.models.matmul import project

    if kind not in FLOPS_PER_PARAM:
        raise ValueError(f"kind={kind!r} is not one of {sorted(FLOPS_PER_PARAM)}")
    layer_shapes, head_shape = llama_matmul_shapes(config)
    keys = iter(jax.random.split(jax.random.key(seed), 2 + len(layer_shapes)
                                 * config.num_hidden_layers))

    def weight(shape):   # the model's init scale: activations stay O(1) over the layers
        return (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    layers = [[weight(s) for s in layer_shapes] for _ in range(config.num_hidden_layers)]
    head = weight(head_shape)
    x = jax.random.normal(next(keys), (rows, config.hidden_size), jnp.float32).astype(dtype)

    def forward(x, layers, head):
        for wq, wk, wv, wo, wg, wu, wd in layers:
            q, k, v = (project(x, w) for w in (wq, wk, wv))
            x = x + project(q + (k.sum(-1, keepdims=True) + v.sum(-1, keepdims=True)), wo)
            x = x + project(jax.nn.silu(project(x, wg)) * project(x, wu), wd)
        return project(x, head, jnp.float32)

    if kind == "forward":
        fn = forward
    else:   # the weights are arguments, not closed-over constants; only x is differentiated
        fn = jax.grad(lambda x, layers, head: jnp.mean(jnp.square(forward(x, layers, head))))
    return MatmulChain(jax.jit(fn), (x, layers, head),
                       flops_per_token(llama_matmul_params(config), kind) * rows)


def ceiling_line(what: str, rows: int, ceiling: float, peak: float,
                 shares: dict[str, float]) -> str:
    """"a decode step's products alone (80 rows, chained, no other work): 105.2 GFLOP/s =
    70% of peak; of that: ours 82%". `shares`: each side's achieved GFLOP/s."""
    sides = ", ".join(f"{side} {share(rate, ceiling):.0%}" for side, rate in shares.items())
    return (f"{what} products alone ({rows} rows, chained, no other work): {ceiling:.1f} "
            f"GFLOP/s = {share(ceiling, peak):.0%} of peak; of that: {sides}")


def bandwidth_gbs(mib: int = 256, repeats: int = 5,
                  stat: Callable[[list[float]], float] = statistics.median) -> float:
    """The faster of JAX's matrix-vector product and torch's sum over `mib` MiB, GB/s."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    cols = 4096
    rows = mib * 2 ** 20 // 4 // cols
    w = jnp.asarray(np.ones((rows, cols), np.float32))
    v = jnp.ones((cols,), jnp.float32)
    mv = jax.jit(jnp.matmul)
    nbytes = rows * cols * 4
    best = nbytes / median_seconds(lambda: mv(w, v).block_until_ready(), repeats, stat)
    w = None   # free it before torch allocates its copy
    try:
        import torch
        t = torch.ones(rows * cols)
        best = max(best, nbytes / median_seconds(lambda: t.sum(), repeats, stat))
    except ImportError:
        pass
    return best / 1e9


@dataclasses.dataclass(frozen=True)
class Yardstick:
    """This machine's limits, measured now, for compute in `dtype`."""
    cpu: str
    cores: int
    jax_gflops: float       # jitted 2048^3 matmul in `dtype`, median
    torch_gflops: float     # torch 2048^3 matmul in `dtype`, median (0: torch absent)
    bandwidth_gbs: float    # streaming read, GB/s
    dtype: str = "float32"

    @property
    def peak(self) -> float:
        """The machine's matmul peak in `dtype`, GFLOP/s: the faster library's."""
        return max(self.jax_gflops, self.torch_gflops)

    @classmethod
    def measure(cls, dtype: str = "float32") -> "Yardstick":
        """`dtype`: the benchmark's compute dtype (bfloat16 runs at up to twice float32's
        rate where the CPU has AVX512-BF16 or AMX; its peak is its own yardstick)."""
        return cls(cpu_model(), os.cpu_count() or 1, *matmul_peaks(dtype), bandwidth_gbs(),
                   dtype)

    def describe(self) -> str:
        wide = sorted(precision.cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"})
        flags_seen = ", ".join(wide) or "no avx512f/avx512_bf16/amx"
        return (f"machine: {self.cpu}, {self.cores} cores ({flags_seen}); {self.dtype} "
                f"2048^3 matmul: jax "
                f"{self.jax_gflops:.1f}, torch {self.torch_gflops:.1f} GFLOP/s -> peak "
                f"{self.peak:.1f}; memory bandwidth {self.bandwidth_gbs:.1f} GB/s")


def _busy_seconds() -> float:
    """CPU seconds all processes spent busy since boot (/proc/stat; 0 where absent)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass
class LoadWatch:
    """Load before and after a run, and the cores other processes used during it."""
    wall: float
    busy: float
    own: float
    load_before: float
    load_after: float = 0.0
    others_cores: float = 0.0

    @classmethod
    def start(cls) -> "LoadWatch":
        return cls(time.monotonic(), _busy_seconds(), _own_seconds(), os.getloadavg()[0])

    def stop(self) -> "LoadWatch":
        wall = max(time.monotonic() - self.wall, 1e-9)
        others = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        self.load_after = os.getloadavg()[0]
        self.others_cores = max(others, 0.0) / wall
        return self

    def verdict(self) -> str:
        return load_verdict(self.load_before, self.load_after, self.others_cores,
                            os.cpu_count() or 1)


RESULT_PREFIX = "RESULT "


def print_result(result: dict) -> None:
    """A side's result line, read back by `run_side` in the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_side(script: str, flags: list[str]) -> dict:
    """Run one side of a benchmark (`script` with `flags`, e.g. ["--side=jax", ...]) in its
    own process, so the sides share no threads, caches or allocator state; its last
    `print_result` line is the result. The repository root goes on PYTHONPATH so the child
    imports this checkout's se_jax."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.abspath(script), *flags],
                         capture_output=True, text=True, env=env, cwd=root)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if out.returncode or not lines:
        raise RuntimeError(f"{script} {' '.join(flags)} failed (rc={out.returncode}):\n"
                           f"{out.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])
