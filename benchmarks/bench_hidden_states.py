"""The sampler with semantic-entropy-probe hidden states off and on (issue 35).

    python -m benchmarks.bench_hidden_states                  # off and on, interleaved
    python -m benchmarks.bench_hidden_states --mode=off       # only off (an A/B of trees)

The sample stage's call (`sampling.generate`, one low-temperature + M rows per question)
on the embedded SmolLM2-135M-Instruct GGUF (30 layers, E = 576), every answer forced to
--new_tokens tokens (no EOS, no stop strings) so that both modes do the same decode work.
"on" keeps --layers at TBG and SLT (`sampling.KeepHidden`): the prefill's last position,
row 0 of each prompt at every decode step into a [B, N, L, E] buffer, and one gather after
the host cut. Each mode is compiled once (untimed), then --repeats timed runs alternate
off / on; the medians of wall and process CPU seconds (all threads: the work done, less
sensitive than wall time to other jobs on shared cores), the paired on/off ratios and the
load average are printed.

Off, the programs are the ones traced before the option existed, so this script with
--mode=off also runs against an older tree (PYTHONPATH=<old checkout>): it uses only
`sampling.generate` then.
"""
from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

_MODE = flags.DEFINE_enum("mode", "both", ["off", "on", "both"], "which modes to time")
_QUESTIONS = flags.DEFINE_integer("questions", 8, "questions (one batch)")
_SAMPLES = flags.DEFINE_integer("samples", 5, "sampled answers per question (M)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "new tokens per answer")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs per mode (median)")
_LAYERS = flags.DEFINE_list("layers", ["8", "16", "24", "-1"], "layers kept when on")

QUESTIONS = ("What is the capital of France?", "Who wrote Hamlet?",
             "Which planet is the largest?", "Name a prime number.",
             "What colour is the sky?", "Who painted the Mona Lisa?",
             "What is the boiling point of water?", "How many legs has a spider?")


def _load():
    from se_jax.models.embedded import embedded_gguf_path
    from se_jax.models.loading import load_llama, load_tokenizer
    path = embedded_gguf_path()
    return load_llama(path), load_tokenizer(path)


def _runner(model, tokenizer, mode: str):
    """A function that runs the workload once in `mode` and waits for it."""
    from se_jax.data import prompts as prompt_lib
    from se_jax.generation import sampling
    n = _QUESTIONS.value
    prompts = [prompt_lib.format_prompt(tokenizer, QUESTIONS[i % len(QUESTIONS)])
               for i in range(n)]
    ids = [f"q{i}" for i in range(n)]
    kwargs = dict(temperatures=(0.1,) + (1.0,) * _SAMPLES.value,
                  max_new_tokens=_NEW_TOKENS.value, eos_ids=(), stop_strings=(), batch_size=n)
    if mode == "off":
        return lambda: sampling.generate(model, tokenizer, prompts, ids, **kwargs)
    keep = sampling.KeepHidden(tuple(int(l) for l in _LAYERS.value))
    return lambda: sampling.generate_with_states(model, tokenizer, prompts, ids, keep=keep,
                                                 **kwargs)


def main(_):
    modes = ("off", "on") if _MODE.value == "both" else (_MODE.value,)
    model, tokenizer = _load()
    runs = {m: _runner(model, tokenizer, m) for m in modes}
    for m in modes:
        runs[m]()                                   # compile, untimed
    load_before = os.getloadavg()[0]
    times = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    for _ in range(_REPEATS.value):
        for m in modes:
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[m]()
            times[m].append(time.perf_counter() - start)
            cpu[m].append(time.process_time() - start_cpu)
    tokens = _QUESTIONS.value * (1 + _SAMPLES.value) * _NEW_TOKENS.value
    print(f"{_QUESTIONS.value} questions x (1 + M={_SAMPLES.value}) rows x "
          f"{_NEW_TOKENS.value} tokens, layers kept when on: {_LAYERS.value}; load average "
          f"{load_before:.2f} -> {os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus)")
    for m in modes:
        med = statistics.median(times[m])
        print(f"{m}: median {med:.3f} s wall ({tokens / med:.1f} tok/s), "
              f"{statistics.median(cpu[m]):.3f} s cpu; wall runs "
              + ", ".join(f"{t:.3f}" for t in times[m]))
    if len(modes) == 2:
        for name, values in (("wall", times), ("cpu", cpu)):
            ratios = [b / a for a, b in zip(values["off"], values["on"])]
            print(f"on/off {name}: median of paired ratios {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    app.run(main)
