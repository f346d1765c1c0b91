"""Benchmark: compile seconds per program and runtime, decoder layers looped vs scanned.

    python -m benchmarks.bench_compile            # both sides, 3 timed repeats each
    python -m benchmarks.bench_compile --quick    # 1 timed repeat each

SmolLM2-135M-Instruct (the embedded GGUF, float32, 30 layers) with `scan_layers=False` (the
Python loop over layers: XLA compiles 30 copies of the layer) and `scan_layers=True` (one
`lax.scan`, one compiled layer body; se_jax/models/layer_scan.py). Each side runs in its own
subprocess, one after the other, with JAX's persistent compilation cache off, and measures:

- the sampler (`sampling.decode_batch`, the sample stage's call): --questions prompts x
  --samples answers, every answer forced to --new_tokens tokens (no EOS, no stop strings);
  programs `jit(_prefill)` and `jit(_decode)`;
- the LoRA train step (benchmarks/bench_lora.py, the step bench_training.py times: r=8,
  alpha=16 on q/v, batch 8 x 64 tokens); program `jit(step)`.

Per program: XLA backend compile seconds (JAX's own compile-duration event, as
se_jax/io/telemetry.py counts them) and the first call's extra wall time over a warm call
(tracing + lowering + compiling). Runtime: the median warm call (sampler: the whole batch,
also as generated tokens/s; train step: seconds per step), and `stack_weights_s`, the
warm seconds of the weight copy the scan adds per call. Last lines: one JSON per side
and the ratios scan/loop.
"""
from __future__ import annotations

import json
import statistics

from absl import app, flags

from benchmarks import bench_lora
from benchmarks import yardstick

_QUICK = flags.DEFINE_bool("quick", False, "1 timed repeat per side")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed warm calls per program (median)")
_QUESTIONS = flags.DEFINE_integer("questions", 8, "sampler: prompts per batch")
_SAMPLES = flags.DEFINE_integer("samples", 10, "sampler: answers per prompt")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "sampler: tokens per answer")
_SIDE = flags.DEFINE_enum("side", None, ["loop", "scan"], "internal: run one side only")

BATCH, SEQ = 8, 64


def _first_and_warm(fn, repeats: int) -> tuple[float, float]:
    """(first call's wall seconds, median of `repeats` warm calls)."""
    first = yardstick.wall_seconds(fn)
    return first, statistics.median(yardstick.timings(fn, repeats))


def _bench_sampler(model, tokenizer, repeats: int) -> dict:
    import numpy as np
    from se_jax.generation import sampling
    from se_jax.generation import stopping
    from se_jax.data import prompts

    questions = [f"What is the capital of country number {i}?" for i in range(_QUESTIONS.value)]
    ids = [str(i) for i in range(len(questions))]
    prompt_ids = [prompts.encode_prompt(tokenizer, prompts.format_prompt(tokenizer, q))
                  for q in questions]
    vocab = model.config.vocab_size
    never = np.zeros((vocab,), bool)
    stop = stopping.StopTables(eos=never, has_text=np.ones((vocab,), bool),
                               stop_if_started=never, stop_always=never)

    def call():
        raw = sampling.decode_batch(model, prompt_ids, ids, temperatures=(1.0,) * _SAMPLES.value,
                                    batch_size=len(prompt_ids), max_new_tokens=_NEW_TOKENS.value,
                                    stop=stop)
        assert raw.steps == _NEW_TOKENS.value, raw.steps

    first, warm = _first_and_warm(call, repeats)
    tokens = len(questions) * _SAMPLES.value * _NEW_TOKENS.value
    return dict(sampler_first_s=first, sampler_warm_s=warm, sampler_tokens_per_s=tokens / warm)


def _bench_step(model, repeats: int) -> dict:
    first, warm = _first_and_warm(bench_lora.lora_train_step(model, BATCH, SEQ), repeats)
    return dict(step_first_s=first, step_warm_s=warm)


def _bench_stack(model, repeats: int) -> dict:
    """Warm seconds of the copy the scan adds per call: stacking the 30 layers' weights."""
    import jax
    from flax import nnx
    from se_jax.models import layer_scan

    graphdef, state = nnx.split(model)
    stack = jax.jit(lambda s: layer_scan.stack_states(list(nnx.merge(graphdef, s).layers)))
    first, warm = _first_and_warm(lambda: jax.block_until_ready(stack(state)), repeats)
    return dict(stack_weights_s=warm)


def run_side(scan: bool, repeats: int) -> dict:
    import dataclasses
    from se_jax.models.loading import load_llama, load_tokenizer
    from se_jax.io.telemetry import Telemetry

    clock = Telemetry.install()
    model = load_llama("embedded")
    model.config = dataclasses.replace(model.config, scan_layers=scan)
    out = dict(side="scan" if scan else "loop", layers=model.config.num_hidden_layers)
    out.update(_bench_stack(model, repeats))
    out.update(_bench_sampler(model, load_tokenizer("embedded"), repeats))
    out.update(_bench_step(model, repeats))
    compiles = clock.compiles  # name -> [count, seconds]
    for name in ("jit(_prefill)", "jit(_decode)", "jit(step)"):
        count, seconds = compiles.get(name, (0, 0.0))
        out[f"compile_s {name}"] = round(seconds, 2)
        out[f"compiles {name}"] = count
    # first call = trace + lower + compile + one run; the warm call is the run alone
    out["sampler_first_extra_s"] = out["sampler_first_s"] - out["sampler_warm_s"]
    out["step_first_extra_s"] = out["step_first_s"] - out["step_warm_s"]
    return out


def _child(side: str, repeats: int) -> dict:
    return yardstick.run_side(__file__, [
        f"--side={side}", f"--repeats={repeats}", f"--questions={_QUESTIONS.value}",
        f"--samples={_SAMPLES.value}", f"--new_tokens={_NEW_TOKENS.value}"])


def main(argv):
    del argv
    repeats = 1 if _QUICK.value else _REPEATS.value
    if _SIDE.value:
        yardstick.print_result(run_side(_SIDE.value == "scan", repeats))
        return
    sides = {side: _child(side, repeats) for side in ("loop", "scan")}
    for res in sides.values():
        print(json.dumps(res))
    loop, scan = sides["loop"], sides["scan"]
    for key in loop:
        if isinstance(loop[key], float) and loop[key]:
            print(f"{key}: loop {loop[key]:.3f}  scan {scan[key]:.3f}  "
                  f"scan/loop {scan[key] / loop[key]:.3f}")


if __name__ == "__main__":
    app.run(main)
