"""One command that proves se_jax on an accelerator (or a CPU): every kernel against its
roofline and against PyTorch, the main job end to end, and each program's compile time.

    python -m benchmarks.accelerator_report --out=/tmp/accel            # budget 420 s
    python -m benchmarks.accelerator_report --out=/tmp/accel --quick    # toy sizes, 3-5 min on a loaded 2-core CPU
    python -m benchmarks.accelerator_report --out=DIR --update_table    # also write se_jax/io/throughput.json

On whatever backend JAX sees, in one process (PyTorch sides in-process too, after ours):
  roofline  dense matmul peak in float32 and bfloat16 (2048^3, the faster of JAX's and
            torch's) and memory bandwidth (256 MiB matrix-vector product / sum;
            benchmarks/yardstick.py), each the fastest of its calls, read at the start and
            again at the end of the run; the higher reading is the roofline (a shared
            host's speed drifts, so one reading under-reads the hardware);
  model     prefill [B, T] and one decode step at several batch sizes (bench_model's
            programs, benchmarks/sides.py), tokens/s;
  train     the LoRA train step (bench_lora / bench_training's step; torch: PEFT);
  sampler   the sample stage's sampler, M=10 answers per question (bench_sampling's);
  job       the main job (launch/experiment.py's `experiment.run`) with its phase table:
            --quick: the demo config at toy sizes on the embedded model cut to 2 layers,
            no teach step; on a CPU: a reduced demo (taught facts, one setting, few
            samples), said so in the outputs; on an accelerator: configs/demo.py itself;
  nli       the NLI forward of a random DeBERTa (v3-base shape; --quick: tiny), pairs/s
            (bench_entailment's raw kernel);
  judge     LLM-judge scoring on the embedded model with the shared prefix (bench_judge's).
Every kernel figure is given as a share of the roofline that bounds it: the compute
roofline (the matmul peak a program in its dtype can reach: float32's for float32, the
higher of the two peaks for bfloat16, / useful FLOPs, those the timed calls execute) or,
for decode and the sampler, the lower of that and the memory-bandwidth roofline (weights
+ KV read per step). Shares are computed once the end readings are in. PyTorch's figures (the
same device: torch runs on the CPU only, so on an accelerator its figures are skipped
unless torch sees the same device) are given beside ours as ours/torch. Compile seconds
of every program come from JAX's own compile events (se_jax/io/telemetry.py); the
persistent compilation cache is off so that they are real.

Budget (--budget_s, default 420): the work is cut into parts, run from most to least
informative (roofline, our model/sampler/train kernels, the main job, the torch sides,
NLI, judge). Each part has a fixed estimate (ESTIMATES: seconds measured on the reference
2-core CPU, quick and full); before a part runs its estimate is scaled by how the parts
so far overran or underran theirs (sum of actual / sum of estimated seconds, clamped to
RATIO_BOUNDS; the first parts on an accelerator start at ACCELERATOR_SCALE); a part whose scaled estimate exceeds
what is left of the budget is skipped, and both outputs list it with its estimate and the
time left. The roofline (both readings) always runs.

Writes --out/report.json (one record per figure: section, name, side, value, unit,
device kind, backend, dtype, batch, roofline, roofline_value, share, vs_torch) and
--out/report.md (the table), and prints the table.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from absl import flags

from benchmarks import bench_lora
from benchmarks import sides
from benchmarks import yardstick

_OUT = flags.DEFINE_string("out", None, "directory for report.json and report.md")
_QUICK = flags.DEFINE_bool("quick", False, "every section at toy sizes (3-5 min on a loaded 2-core CPU)")
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "seconds of work; parts that would overrun "
                             "are skipped (and listed)")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "kernels' compute and weight dtype (auto: se_jax/config/precision.py; "
                           "NLI and judge run float32, as their benchmarks)")
_TORCH = flags.DEFINE_bool("torch", True, "time PyTorch's side where torch sees the device")
_UPDATE = flags.DEFINE_bool("update_table", False, "write this device kind's tokens/s into "
                            "the throughput table (not with --quick: toy sizes)")
_TABLE = flags.DEFINE_string("table", None, "throughput table path (default "
                             "se_jax/io/throughput.json)")

# Seconds per part on the reference machine (2-core AMD EPYC, avx512_bf16, shared), quick
# and full sizes; full = the sizes of SIZES["full"]. Measured with this script (quick:
# 2026-12-06 with others using 1.5 of the 2 cores, the probes included).
ESTIMATES = {
    "roofline": (13, 15), "model ours": (20, 60), "sampler ours": (19, 45),
    "train ours": (15, 60), "job": (61, 240), "model torch": (16, 30),
    "sampler torch": (3, 40), "train torch": (8, 45), "nli": (10, 90), "judge": (17, 120),
}
ACCELERATOR_SCALE = 0.5   # first guess of an accelerator's time against the CPU table
RATIO_BOUNDS = (0.25, 8.0)  # the running actual/estimated ratio is clamped to these
SIZES = {
    # layers 0: all; decode batches at context `seq`; train batch x train_seq; sampler
    # questions x M x new tokens; NLI pairs (batch); judge pairs (batch, shots)
    "quick": dict(layers=1, batch=2, seq=32, decode_batches=(1, 2), iters=3, train_batch=2,
                  train_seq=32, warmup=1, steps=2, questions=2, samples=10, new_tokens=8,
                  repeats=1, nli_pairs=32, nli_batch=16, judge_pairs=4, judge_batch=4,
                  shots=1),
    "full": dict(layers=0, batch=8, seq=256, decode_batches=(1, 8, 80), iters=5,
                 train_batch=8, train_seq=64, warmup=3, steps=10, questions=8, samples=10,
                 new_tokens=32, repeats=3, nli_pairs=512, nli_batch=64, judge_pairs=64,
                 judge_batch=16, shots=5),
}
SCHEMA = ("section", "name", "side", "value", "unit", "device_kind", "backend", "dtype",
          "batch", "roofline", "roofline_value", "share", "vs_torch", "note")
SECTIONS = ("roofline", "model", "train", "sampler", "job", "nli", "judge", "compile")


@dataclasses.dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    side: str = "se_jax"
    device_kind: str = ""
    backend: str = ""
    dtype: str = ""
    batch: int | None = None
    roofline: str | None = None        # which roofline bounds it
    roofline_value: float | None = None   # in the figure's unit
    share: float | None = None
    vs_torch: float | None = None      # ours / torch (ours' record only)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Roof:
    """What bounds a figure, in its unit: `flops` useful FLOPs per item at the matmul peak
    that a program in `dtype` can reach, and (decode, sampler) `per_bandwidth(GB/s)` ->
    items/s; the lower of the two. Evaluated against the run's final peaks (`finish`)."""
    flops: float
    dtype: str
    per_bandwidth: Callable[[float], float] | None = None

    def bound(self, report: "Report") -> tuple[str, float]:
        comp = report.compute_roofline(self.flops, self.dtype)
        if self.per_bandwidth is not None:
            bw = self.per_bandwidth(report.bandwidth)
            if bw < comp:
                return "bandwidth", bw
        return "compute", comp


class Probe:
    """The roofline's programs compiled once, read with one call each: JAX's and torch's
    n^3 matmul in float32 and bfloat16, JAX's matrix-vector product over `mib` MiB."""

    def __init__(self, n: int, mib: int, with_torch: bool):
        import jax
        import jax.numpy as jnp
        self.n, self.calls = n, {}
        mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
        for dt in ("float32", "bfloat16"):
            a = jax.random.normal(jax.random.key(0), (n, n), dt)
            self.calls[dt] = [lambda a=a: mm(a, a).block_until_ready()]
            if with_torch:
                import torch
                t = torch.randn(n, n, dtype=getattr(torch, dt))
                self.calls[dt].append(lambda t=t: t @ t)
        cols = 4096
        rows = mib * 2 ** 20 // 4 // cols
        w, v = jnp.ones((rows, cols), jnp.float32), jnp.ones((cols,), jnp.float32)
        mv = jax.jit(jnp.matmul)
        self.bytes = rows * cols * 4
        self.calls["memory bandwidth"] = [lambda: mv(w, v).block_until_ready()]
        for fns in self.calls.values():   # compile
            for fn in fns:
                fn()

    def read(self) -> dict[str, float]:
        """{'matmul peak float32': GFLOP/s, 'matmul peak bfloat16': ..., 'memory
        bandwidth': GB/s}, the faster library's."""
        out = {}
        for key, fns in self.calls.items():
            sec = min(yardstick.wall_seconds(fn) for fn in fns)
            if key == "memory bandwidth":
                out[key] = self.bytes / sec / 1e9
            else:
                out[f"matmul peak {key}"] = 2.0 * self.n ** 3 / sec / 1e9
        return out


@dataclasses.dataclass
class Budget:
    """Seconds left, and the running ratio of actual to estimated seconds."""
    total: float
    quick: bool
    scale: float = 1.0
    start: float = dataclasses.field(default_factory=time.perf_counter)
    spent_est: float = 0.0
    spent_real: float = 0.0
    skipped: list = dataclasses.field(default_factory=list)
    ran: list = dataclasses.field(default_factory=list)

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def estimate(self, part: str) -> float:
        base = ESTIMATES[part][0 if self.quick else 1]
        ratio = self.spent_real / self.spent_est if self.spent_est else self.scale
        return base * min(max(ratio, RATIO_BOUNDS[0]), RATIO_BOUNDS[1])

    def run(self, part: str, fn: Callable[[], Any], *, force: bool = False) -> Any:
        est = self.estimate(part)
        if not force and est > self.left():
            self.skipped.append(dict(part=part, estimate_s=round(est, 1),
                                     left_s=round(self.left(), 1),
                                     reason=f"estimated {est:.0f}s > {self.left():.0f}s left"))
            print(f"[budget] skip {part}: estimated {est:.0f}s, {self.left():.0f}s left",
                  flush=True)
            return None
        print(f"[budget] {part}: estimated {est:.0f}s, {self.left():.0f}s left", flush=True)
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - one failing part must not lose the report
            self.skipped.append(dict(part=part, estimate_s=round(est, 1),
                                     left_s=round(self.left(), 1),
                                     reason=f"failed: {type(e).__name__}: {e}"[:300]))
            print(f"[budget] {part} FAILED: {type(e).__name__}: {e}", flush=True)
            return None
        real = time.perf_counter() - start
        self.spent_est += ESTIMATES[part][0 if self.quick else 1]
        self.spent_real += real
        self.ran.append(dict(part=part, estimate_s=round(est, 1), seconds=round(real, 1)))
        return out


def device_kind() -> tuple[str, str]:
    """(device kind, backend): JAX's device_kind, the CPU model on a CPU."""
    import jax
    d = jax.devices()[0]
    kind = f"cpu: {yardstick.cpu_model()}" if d.platform == "cpu" else d.device_kind
    return kind, d.platform


def torch_on_device(backend: str) -> bool:
    """Whether torch is importable and runs on the device JAX uses (the CPU; a GPU when
    torch was built with CUDA and sees one). Our torch sides put tensors on the CPU, so on
    a GPU they are skipped rather than compared across devices."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return backend == "cpu"


# ----------------------------------------------------------------------------- sections

class Report:
    def __init__(self, quick: bool, budget: float, dtype: str):
        from se_jax.config import precision
        from se_jax.io.telemetry import Telemetry
        self.quick, self.size = quick, SIZES["quick" if quick else "full"]
        self.kind, self.backend = device_kind()
        self.dtype = precision.resolve_dtype(dtype)
        self.budget = Budget(budget, quick, 1.0 if self.backend == "cpu" else ACCELERATOR_SCALE)
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.clock = Telemetry.install()
        self.torch = _TORCH.value and torch_on_device(self.backend)
        self.peaks: dict[str, float] = {}
        self.readings: dict[str, list[str]] = {}
        self.roof_figures: dict[str, Figure] = {}
        self.roofs: dict[int, Roof] = {}
        self.bandwidth = 0.0
        self.prober: Probe | None = None
        self.table_entry: dict[str, Any] = {}

    def add(self, section: str, name: str, value: float, unit: str,
            roof: Roof | None = None, **kw) -> Figure:
        kw.setdefault("dtype", self.dtype)
        fig = Figure(section, name, float(value), unit, device_kind=self.kind,
                     backend=self.backend, **kw)
        self.figures.append(fig)
        if roof is not None:
            self.roofs[id(fig)] = roof
            self._bound(fig)
        return fig

    def _bound(self, fig: Figure) -> None:
        fig.roofline, fig.roofline_value = self.roofs[id(fig)].bound(self)
        fig.share = fig.value / fig.roofline_value

    def finish(self) -> None:
        """Every share against the run's final rooflines (the best reading of each, start
        and end: `roofline`)."""
        for fig in self.figures:
            if id(fig) in self.roofs:
                self._bound(fig)

    def kernel(self, section: str, name: str, rate: float, unit: str, *, batch: int,
               roof: Roof, compile_s: float, since: dict, dtype: str | None = None,
               note: str = "") -> Figure:
        """Our side's figure of one kernel, its compile time (first call - warm call), and
        a figure per program it built since `since`."""
        dtype = dtype or self.dtype
        fig = self.add(section, name, rate, unit, dtype=dtype, batch=batch, roof=roof,
                       note=note)
        self.add("compile", f"{section}: first call - warm call", compile_s, "s",
                 dtype=dtype, batch=batch)
        self.compiles(section, since, dtype)
        return fig

    def compiles(self, section: str, since: dict, dtype: str | None = None) -> None:
        """A figure per program compiled since `since` (seconds, summed over its shapes)."""
        for name, (count, seconds) in self.clock.snapshot(since)["compilations"].items():
            if seconds >= 0.05:
                self.add("compile", f"{section}: {name}", seconds, "s",
                         dtype=dtype or self.dtype, note=f"{count} compilation(s)")

    def model(self, layers: int | None = None, dtype: str | None = None):
        from se_jax.models.loading import load_llama
        dtype = dtype or self.dtype
        model = load_llama("embedded", dtype=dtype, param_dtype=dtype)
        return sides.truncate_layers(model, self.size["layers"] if layers is None else layers)

    # -- rooflines
    def roofline(self) -> None:
        """The peaks, read first as the fastest of several calls each (the faster of JAX's
        and torch's), then again by `probe` right after every kernel is timed; each
        roofline is the highest reading. A host shared with others drifts within seconds:
        one reading at the start under-reads the hardware (40-88 GFLOP/s float32 here
        under others' load, 157-199 quiet), and a kernel timed in a quieter second then
        reads above 100% of it (quick prefill read 124% with start and end readings
        alone)."""
        n, mib, reps = (2048, 64, 3) if self.quick else (2048, 256, 5)
        for dt in ("float32", "bfloat16"):
            jax_gf = yardstick.jax_matmul_gflops(n, reps, dt, stat=min)
            torch_gf = 0.0
            if self.torch:
                torch_gf = yardstick.torch_matmul_gflops(n, reps, dt, stat=min)
            self._reading(f"matmul peak {dt} ({n}^3, best reading)", dt,
                          max(jax_gf, torch_gf), "GFLOP/s",
                          f"first: jax {jax_gf:.1f}, torch {torch_gf:.1f}")
        bw = (yardstick.bandwidth_gbs(mib, stat=min) if self.torch
              else _jax_bandwidth(mib))
        self._reading(f"memory bandwidth ({mib} MiB read, best reading)", "float32", bw,
                      "GB/s", f"first: {bw:.1f}")
        self.prober = Probe(n, mib, self.torch)

    def probe(self) -> None:
        """One more reading of each peak (one call per library and dtype, ~1 s on a
        loaded 2-core CPU), taken beside the kernel just timed."""
        if self.prober is None:
            return
        for name, value in self.prober.read().items():
            fig = self.roof_figures[next(k for k in self.roof_figures if k.startswith(name))]
            self._reading(fig.name, fig.dtype, value, fig.unit, "")

    def _reading(self, name: str, dtype: str, value: float, unit: str, note: str) -> None:
        fig = self.roof_figures.get(name)
        if fig is None:
            fig = self.roof_figures[name] = self.add("roofline", name, value, unit,
                                                     dtype=dtype, note=note)
            self.readings[name] = [value]
        else:
            self.readings[name].append(value)
            fig.value = max(fig.value, value)
            first = fig.note.split(";")[0]
            r = self.readings[name][1:]
            fig.note = (f"{first}; {len(r)} readings beside the kernels: "
                        f"{min(r):.1f}-{max(r):.1f}")
        if unit == "GB/s":
            self.bandwidth = fig.value
        else:
            self.peaks[dtype] = fig.value

    def compute_roofline(self, flops_per_item: float, dtype: str) -> float:
        """Items/s at the matmul peak a program in `dtype` can reach (`peak_for`)."""
        return peak_for(self.peaks, dtype) * 1e9 / flops_per_item

    # -- prefill and decode
    def model_ours(self) -> dict:
        import numpy as np
        since = self.clock.snapshot()
        model = self.model()
        s, cfg = self.size, model.config
        n_params = yardstick.llama_matmul_params(cfg)
        per_token = yardstick.flops_per_token(n_params, "forward")
        itemsize = 2 if self.dtype == "bfloat16" else 4
        out = {"model": model, "tokens": {}, "ours": {}}
        b, t = s["batch"], s["seq"]
        rng = np.random.RandomState(0)
        for rows in sorted({b, *s["decode_batches"]}):
            tokens = rng.randint(0, cfg.vocab_size, (rows, t)).astype(np.int32)
            with_prefill = rows == b
            ours = sides.prefill_decode_ours(model, tokens, s["iters"], prefill=with_prefill)
            out["tokens"][rows], out["ours"][rows] = tokens, ours
            kv = yardstick.kv_bytes_per_row(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                            cfg.head_dim, t + s["iters"], itemsize)
            sec = statistics.median(ours["decode"]() for _ in range(s["iters"]))
            self.probe()
            ours["decode_s"] = sec
            self.add("model", f"decode step, context {t}", rows / sec, "tokens/s",
                     batch=rows, roof=Roof(per_token, self.dtype, functools.partial(
                         _decode_bound, weights=n_params * itemsize, kv=kv, rows=rows)))
            self.add("compile", f"model: decode step, batch {rows}", ours["decode_compile_s"],
                     "s", batch=rows)
            if with_prefill:
                sec = statistics.median(ours["prefill"]() for _ in range(s["iters"]))
                self.probe()
                ours["prefill_s"] = sec
                self.add("model", f"prefill {b}x{t}", b * t / sec, "tokens/s", batch=b,
                         roof=Roof(per_token, self.dtype))
                self.add("compile", f"model: prefill {b}x{t}", ours["prefill_compile_s"], "s",
                         batch=b)
        out["n_params"] = n_params
        self.table_entry["model"] = dict(name="SmolLM2-135M-Instruct (embedded)",
                                         layers=cfg.num_hidden_layers, matmul_params=n_params,
                                         dtype=self.dtype)
        self.table_entry["prefill"] = dict(tokens_per_s=b * t / out["ours"][b]["prefill_s"],
                                           batch=b, seq=t)
        big = max(s["decode_batches"])
        self.table_entry["decode"] = dict(tokens_per_s=big / out["ours"][big]["decode_s"],
                                          batch=big, context=t, by_batch={
                                              str(r): r / o["decode_s"]
                                              for r, o in out["ours"].items()})
        del since
        return out

    def model_torch(self, state: dict) -> None:
        s, b = self.size, self.size["batch"]
        for rows, ours in sorted(state["ours"].items(), key=lambda kv: kv[0] != b):
            if rows != b and self.budget.left() < 0:   # torch's small-batch decode can crawl
                self.budget.skipped.append(dict(part=f"model torch, decode batch {rows}",
                                                estimate_s=None, left_s=round(self.budget.left(), 1),
                                                reason="budget spent inside the part"))
                continue
            theirs = sides.prefill_decode_torch(state["model"], state["tokens"][rows], s["iters"],
                                                pick_threads=rows == b)
            phases = [("decode", "decode")] + ([("prefill", "prefill")] if rows == b else [])
            for phase, _ in phases:
                med = sides.interleaved_medians({"ours": ours[phase], "torch": theirs[phase]},
                                                s["iters"])
                self.probe()
                n = rows * (s["seq"] if phase == "prefill" else 1)
                name = (f"prefill {b}x{s['seq']}" if phase == "prefill"
                        else f"decode step, context {s['seq']}")
                ours_fig = self._find("model", name, rows)
                fig = self.add("model", name, n / med["torch"], "tokens/s", side="torch",
                               batch=rows, roof=self.roofs[id(ours_fig)],
                               note=f"{theirs['threads']} thread(s), {theirs['attn']}")
                ours_fig.vs_torch = med["torch"] / med["ours"]
                del fig

    def _find(self, section: str, name: str, batch: int | None, side: str = "se_jax") -> Figure:
        return next(f for f in self.figures if f.section == section and f.name == name
                    and f.batch == batch and f.side == side)

    # -- LoRA train step
    def _train_tokens(self):
        s = self.size
        return s["train_batch"] * s["train_seq"]

    def _round_train_batch(self) -> None:
        """The step is data-parallel over every device: its batch a multiple of them."""
        import jax
        n = jax.device_count()
        self.size = dict(self.size, train_batch=-(-self.size["train_batch"] // n) * n)

    def train_ours(self) -> dict:
        since = self.clock.snapshot()
        self._round_train_batch()
        model = self.model()
        s = self.size
        step = bench_lora.lora_train_step(model, s["train_batch"], s["train_seq"])
        first = yardstick.wall_seconds(step)
        times = yardstick.timings(step, s["steps"], max(s["warmup"] - 1, 0))
        sec = statistics.median(times)
        self.probe()
        tokens = self._train_tokens()
        per_token = yardstick.flops_per_token(yardstick.llama_matmul_params(model.config),
                                              "lora_train")
        self.add("train", f"LoRA step {s['train_batch']}x{s['train_seq']} (r=8 q,v; AdamW)",
                 tokens / sec, "tokens/s", batch=s["train_batch"],
                 roof=Roof(per_token, self.dtype))
        self.add("compile", "train: first step (trace + compile + run) - warm step",
                 first - sec, "s", batch=s["train_batch"])
        self.compiles("train", since)
        self.table_entry["train"] = dict(tokens_per_s=tokens / sec, batch=s["train_batch"],
                                         seq=s["train_seq"], lora="r=8 q_proj,v_proj")
        return dict(step_s=sec)

    def train_torch(self, ours: dict) -> None:
        import torch
        s = self.size
        model = self.model()
        hf = sides.torch_twin(model)
        ids = torch.from_numpy(bench_lora.random_tokens(model.config.vocab_size,
                                                        s["train_batch"], s["train_seq"])).long()
        step = bench_lora.torch_lora_step(hf, ids, torch.ones_like(ids), ids)
        sec = statistics.median(yardstick.timings(step, s["steps"], s["warmup"]))
        self.probe()
        name = f"LoRA step {s['train_batch']}x{s['train_seq']} (r=8 q,v; AdamW)"
        ours_fig = self._find("train", name, s["train_batch"])
        self.add("train", name, self._train_tokens() / sec, "tokens/s", side="torch",
                 batch=s["train_batch"], roof=self.roofs[id(ours_fig)],
                 note="transformers + peft")
        ours_fig.vs_torch = sec / ours["step_s"]

    # -- sampler
    def sampler_ours(self) -> dict:
        from se_jax.models.loading import load_tokenizer
        since = self.clock.snapshot()
        s = self.size
        model, tokenizer = self.model(), load_tokenizer("embedded")
        ids = sides.prompt_ids(tokenizer, s["questions"])
        n, m, new = s["questions"], s["samples"], s["new_tokens"]
        first = yardstick.wall_seconds(lambda: sides.our_sampler_run(model, tokenizer, ids, m, new))
        sec = statistics.median(yardstick.timings(
            lambda: sides.our_sampler_run(model, tokenizer, ids, m, new), s["repeats"]))
        self.probe()
        cfg = model.config
        n_params = yardstick.llama_matmul_params(cfg)
        itemsize = 2 if self.dtype == "bfloat16" else 4
        context = sum(map(len, ids)) / len(ids) + new / 2
        kv = yardstick.kv_bytes_per_row(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                        cfg.head_dim, round(context), itemsize)
        generated = n * m * new
        # FLOPs of the whole call per generated token: every generated token through the
        # layers and the head; the prompts once per question, the head at their last token
        head = cfg.hidden_size * cfg.vocab_size
        flops = (yardstick.flops_per_token(n_params, "forward") * (generated + n)
                 + yardstick.flops_per_token(n_params - head, "forward") * sum(map(len, ids)))
        self.kernel("sampler", f"sampler {n} questions x M={m} x {new} tokens",
                    generated / sec, "tokens/s", batch=n * m,
                    roof=Roof(flops / generated, self.dtype, functools.partial(
                        _decode_bound, weights=n_params * itemsize, kv=kv, rows=n * m)),
                    compile_s=first - sec, since=since)
        self.table_entry["sample"] = dict(tokens_per_s=generated / sec, questions=n, M=m,
                                          new_tokens=new)
        return dict(model=model, tokenizer=tokenizer, ids=ids, seconds=sec)

    def sampler_torch(self, ours: dict) -> None:
        s = self.size
        n, m, new = s["questions"], s["samples"], s["new_tokens"]
        tok = ours["tokenizer"]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        run, _ = sides.torch_sampler(sides.torch_twin(ours["model"]), ours["ids"], m, pad)
        run(2)  # warm-up
        sec = statistics.median(yardstick.timings(lambda: run(new), s["repeats"]))
        self.probe()
        name = f"sampler {n} questions x M={m} x {new} tokens"
        ours_fig = self._find("sampler", name, n * m)
        self.add("sampler", name, n * m * new / sec, "tokens/s", side="torch", batch=n * m,
                 roof=self.roofs[id(ours_fig)], note="transformers generate")
        ours_fig.vs_torch = sec / ours["seconds"]

    # -- the main job
    def job(self, out_dir: Path) -> None:
        from configs import demo
        from se_jax.models.loading import load_tokenizer, save_hf_checkpoint
        from se_jax.config.schema import RunConfig
        from se_jax.pipeline import experiment
        config = demo.get_config()
        config.workdir = str(out_dir / "job")
        config.model.dtype = self.dtype
        config.model.param_dtype = "float32"
        if self.quick or self.backend == "cpu":
            c = config
            c.experiment.settings = ("short",)
            c.experiment.methods = ("se_lexical", "idk")
            c.experiment.taus = (1.0,)
            c.evaluation.bootstrap_samples = 20
            c.training.epochs = 1
            c.teach.training.epochs = 1
            if self.quick:
                model_dir = out_dir / "job_model"
                # 2 layers: 1 answers nothing the labels keep (no SFT records)
                save_hf_checkpoint(self.model(layers=2, dtype="float32"), str(model_dir),
                                   load_tokenizer("embedded"))
                c.model.path, c.model.max_seq_len = str(model_dir), 192
                c.teach.enabled = False
                c.experiment.methods = ("se_lexical",)   # one run trained and evaluated
                c.facts.n_known = c.facts.n_unknown = 8
                c.facts.n_ood_known = c.facts.n_ood_unknown = 4
                c.sampling.num_samples, c.sampling.max_new_tokens = 2, 4
                c.evaluation.max_new_tokens = 4
                what = ("quick: configs/demo.py at toy sizes (embedded SmolLM2 cut to 2 layers, "
                        "no teach, 16+8 facts, M=2, 4 tokens, 1 setting, se_lexical only)")
            else:
                c.facts.n_known = c.facts.n_unknown = 16
                c.facts.n_ood_known = c.facts.n_ood_unknown = 4
                c.sampling.num_samples, c.sampling.max_new_tokens = 4, 16
                c.evaluation.max_new_tokens = 16
                what = ("REDUCED demo on CPU (configs/demo.py takes ~25 min here): 32+8 facts, "
                        "teach 1 epoch, M=4, 16 tokens, Short-QA only, se_lexical + idk, "
                        "tau 1.0")
        else:
            what = "configs/demo.py as shipped"
        since = self.clock.snapshot()
        start = time.perf_counter()
        experiment.run(RunConfig.from_configdict(config))
        wall = time.perf_counter() - start
        snap = self.clock.snapshot(since)
        self.notes.append(f"main job: {what}")
        self.add("job", "main job end to end", wall, "s", note=what)
        phases: dict[str, float] = {}
        for name, sec in snap["phases"]:
            key = name.split(" ")[0] if name.split(" ")[0] in ("train", "evaluate") else name
            phases[key] = phases.get(key, 0.0) + sec
        for name, sec in phases.items():
            self.add("job", f"phase: {name}", sec, "s", note=f"{sec / wall:.0%} of the job")
        self.compiles("job", since)

    # -- NLI
    def nli(self) -> None:
        from se_jax.parallel.mesh import make_mesh
        from se_jax.semantic import entailment
        since = self.clock.snapshot()
        s = self.size
        items = judge_items(4 * s["nli_pairs"])   # enough for full batches per length
        sentences = [f"{it['question']} {x}" for it in items for x in (it["a"], it["b"])]
        spec = "tiny" if self.quick else "base_v3"
        with tempfile.TemporaryDirectory() as tmp:
            _, torch_model, nli = sides.build_random_nli(
                tmp, sentences, spec, vocab_size=400 if self.quick else 8000)
            backend = entailment.DebertaBackend(nli, make_mesh({"data": -1}),
                                                batch_size=s["nli_batch"],
                                                buckets=entailment.DEFAULT_BUCKETS)
            ids, types = backend.encode([it["question"] for it in items],
                                        [it["a"] for it in items], [it["b"] for it in items])
            picked, arrays = sides.raw_batches(backend, ids, types, s["nli_pairs"])
            ours, theirs = sides.raw_kernel_sides(backend, torch_model, arrays)
            first = yardstick.wall_seconds(ours)
            reps = 1 if self.quick else 3
            sec = statistics.median(yardstick.timings(ours, reps))
            self.probe()
            matmul_params = sum(p.numel() for n, p in torch_model.named_parameters()
                                if "embeddings" not in n)
            slots = sum(a[0].size for a in arrays)
            per_pair = yardstick.flops_per_token(matmul_params, "forward") * slots / len(picked)
            name = (f"NLI forward, random DeBERTa {'tiny' if self.quick else 'v3-base'} "
                    f"({matmul_params / 1e6:.1f}M matmul params)")
            fig = self.kernel("nli", name, len(picked) / sec, "pairs/s",
                              batch=backend.batch_size, roof=Roof(per_pair, "float32"),
                              compile_s=first - sec, since=since, dtype="float32",
                              note=f"{len(picked)} pairs, {len(arrays)} batches")
            if self.torch:
                tsec = statistics.median(yardstick.timings(theirs, reps, 1))
                self.probe()
                self.add("nli", name, len(picked) / tsec, "pairs/s", side="torch",
                         dtype="float32", batch=backend.batch_size,
                         roof=self.roofs[id(fig)], note="transformers batched")
                fig.vs_torch = tsec / sec

    # -- LLM judge
    def judge(self) -> None:
        import numpy as np
        from se_jax.data import prompts as prompt_lib
        from se_jax.generation import scoring
        from se_jax.models.loading import load_tokenizer
        since = self.clock.snapshot()
        s = self.size
        model, tokenizer = self.model(dtype="float32"), load_tokenizer("embedded")
        items = judge_items(s["judge_pairs"])
        prompt = prompt_lib.load_judge_prompt("entailment_fewshot", s["shots"])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        bucket = 32 if self.quick else 16
        base = scoring.NextTokenScorer(model, batch_size=s["judge_batch"], bucket=bucket,
                                       pad_id=pad)
        shared = scoring.PromptScorer(base, tokenizer, prompt)
        full = shared.full_ids(items)
        lengths, p, n = [len(f) for f in full], shared.prefix.length, len(items)
        first = yardstick.wall_seconds(lambda: shared(items))
        sec = yardstick.wall_seconds(lambda: shared(items))
        self.probe()
        # the timed calls process each pair's suffix (the prefix was prefilled, untimed, at
        # construction) through the layers; the head only at each pair's last token
        cfg = model.config
        head = cfg.hidden_size * cfg.vocab_size
        layers = yardstick.flops_per_token(yardstick.llama_matmul_params(cfg) - head, "forward")
        per_pair = (layers * (sum(lengths) - n * p)
                    + yardstick.flops_per_token(head, "forward") * n) / n
        name = (f"LLM judge, shared prefix ({np.mean(lengths):.0f} tokens/pair, prefix {p}, "
                f"{s['shots']} shots)")
        fig = self.kernel("judge", name, n / sec, "pairs/s", batch=base.batch_size,
                          roof=Roof(per_pair, "float32"), compile_s=first - sec, since=since,
                          dtype="float32", note=f"{n} pairs")
        if self.torch:
            hf = sides.torch_twin(model, "float32")
            sides.torch_scores(hf, full[:2], shared.label_ids, shared.owner, s["judge_batch"], pad)
            tsec = yardstick.wall_seconds(lambda: sides.torch_scores(
                hf, full, shared.label_ids, shared.owner, s["judge_batch"], pad))
            self.probe()
            self.add("judge", name, n / tsec, "pairs/s", side="torch", dtype="float32",
                     batch=base.batch_size, roof=self.roofs[id(fig)],
                     note="transformers batched, full prompts")
            fig.vs_torch = tsec / sec

    # -- driver
    def run(self, out_dir: Path) -> None:
        b = self.budget
        b.run("roofline", self.roofline, force=True)
        state: dict[str, Any] = {}
        state["model"] = b.run("model ours", self.model_ours)
        state["sampler"] = b.run("sampler ours", self.sampler_ours)
        state["train"] = b.run("train ours", self.train_ours)
        b.run("job", lambda: self.job(out_dir))
        if self.torch:
            if state["model"]:
                b.run("model torch", lambda: self.model_torch(state["model"]))
            if state["sampler"]:
                b.run("sampler torch", lambda: self.sampler_torch(state["sampler"]))
            if state["train"]:
                b.run("train torch", lambda: self.train_torch(state["train"]))
        else:
            self.notes.append("PyTorch sides skipped: torch "
                              + ("disabled (--notorch)" if not _TORCH.value else
                                 "not importable or not on this device"))
        b.run("nli", self.nli)
        b.run("judge", self.judge)
        self.finish()


def peak_for(peaks: dict[str, float], dtype: str) -> float:
    """The matmul peak (GFLOP/s) that bounds a program computing in `dtype`: float32's for
    float32; for bfloat16 the higher of the two (a bfloat16 product is exact in float32,
    so where the float32 path is the faster, e.g. a CPU without AVX512-BF16, it bounds a
    bfloat16 program too)."""
    return peaks["float32"] if dtype == "float32" else max(peaks.values())


def _decode_bound(bandwidth_gbs: float, *, weights: float, kv: float, rows: int) -> float:
    return yardstick.decode_roofline(bandwidth_gbs, weights, kv, rows)


def _jax_bandwidth(mib: int) -> float:
    import jax
    import jax.numpy as jnp
    cols = 4096
    rows = mib * 2 ** 20 // 4 // cols
    w, v = jnp.ones((rows, cols), jnp.float32), jnp.ones((cols,), jnp.float32)
    mv = jax.jit(jnp.matmul)
    sec = yardstick.median_seconds(lambda: mv(w, v).block_until_ready(), 5, min)
    return rows * cols * 4 / sec / 1e9


def judge_items(n: int) -> list[dict[str, str]]:
    """bench_judge's NQ-open items where ../shared/data is there, else the shipped demo
    facts (a fresh accelerator node)."""
    try:
        return sides.judge_workload(n)
    except (FileNotFoundError, OSError):
        from se_jax.data import facts
        pool = facts.load_pool()
        return [dict(question=r["question"], a=r["answers"][0],
                     b=pool[(i * 7 + 3) % len(pool)]["answers"][0])
                for i, r in enumerate(pool[i % len(pool)] for i in range(n))]


# ----------------------------------------------------------------------------- outputs

def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return ""
    return f"{x:,.{digits}f}" if abs(x) < 1e5 else f"{x:,.0f}"


def markdown(report: Report, wall: float) -> str:
    b = report.budget
    lines = [f"# se_jax accelerator report: {report.kind} ({report.backend})", "",
             f"{'quick (toy sizes)' if report.quick else 'full'}; kernels in {report.dtype}; "
             f"budget {b.total:.0f}s, wall {wall:.0f}s; persistent compile cache off", ""]
    lines += [f"- {n}" for n in report.notes]
    lines += ["", "| section | figure | side | value | unit | dtype | batch | roofline | "
              "share | ours/torch |", "|---|---|---|---:|---|---|---:|---|---:|---:|"]
    for f in report.figures:
        roof = (f"{f.roofline} {_fmt(f.roofline_value)}" if f.roofline else "")
        lines.append(f"| {f.section} | {f.name} | {f.side} | {_fmt(f.value, 2)} | {f.unit} | "
                     f"{f.dtype} | {f.batch if f.batch is not None else ''} | {roof} | "
                     f"{'' if f.share is None else f'{f.share:.0%}'} | "
                     f"{'' if f.vs_torch is None else f'{f.vs_torch:.2f}x'} |")
    lines += ["", "Budget: " + ", ".join(f"{r['part']} {r['seconds']}s (est. {r['estimate_s']}s)"
                                         for r in b.ran)]
    if b.skipped:
        lines += ["", "Skipped:"] + [f"- {s['part']}: {s['reason']}" for s in b.skipped]
    else:
        lines += ["", "Skipped: nothing"]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if not _OUT.value:
        raise ValueError("--out=DIR is required")
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    watch = yardstick.LoadWatch.start()
    report = Report(_QUICK.value, _BUDGET.value, _DTYPE.value)
    print(f"se_jax accelerator report on {report.kind} ({report.backend}); kernels in "
          f"{report.dtype}; budget {_BUDGET.value:.0f}s; {'quick' if _QUICK.value else 'full'}",
          flush=True)
    report.run(out)
    wall = time.perf_counter() - start
    load = watch.stop().verdict()
    report.notes.append(load)
    records = [dataclasses.asdict(f) for f in report.figures]
    doc = dict(device_kind=report.kind, backend=report.backend, quick=report.quick,
               dtype=report.dtype, budget_s=report.budget.total, wall_s=round(wall, 1),
               sections=list(SECTIONS), figures=records, ran=report.budget.ran,
               skipped=report.budget.skipped, notes=report.notes,
               xla_flags=os.environ.get("XLA_FLAGS", ""))
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(report, wall)
    (out / "report.md").write_text(text)
    print(text)
    if _UPDATE.value:
        from se_jax.io import throughput
        if report.quick:
            print("throughput table not updated: --quick runs toy sizes")
        elif not all(p in report.table_entry for p in throughput.PHASES):
            print("throughput table not updated: a kernel section was skipped")
        else:
            entry = dict(report.table_entry, backend=report.backend,
                         measured=time.strftime("%Y-%m-%d"), load=load)
            throughput.update(report.kind, entry, _TABLE.value)
            print(f"throughput table updated for {report.kind!r}: "
                  f"{_TABLE.value or throughput.TABLE}")
    print(f"report: {out / 'report.md'}, {out / 'report.json'}; wall {wall:.0f}s")


if __name__ == "__main__":
    from se_jax.io import runtime
    os.environ.setdefault(runtime.CACHE_ENV, "off")   # compile seconds must be real
    from se_jax.pipeline import cli
    cli.run(main)
