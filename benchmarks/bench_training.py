"""Benchmark: LoRA training tokens/s of our jitted step against transformers + peft.

Both sides train SmolLM2-135M-Instruct (the embedded GGUF, dequantised to float32) with LoRA
r=8, alpha=16 on q_proj and v_proj (no LoRA dropout: PEFT's default, as in the issue's
reference measurement; `--lora_dropout` sets both sides), AdamW (lr 3e-5) with global-norm clipping
at 1.0, on the same batch of 8 x 64 random tokens with the loss on every next token. Each
side runs in its own subprocess on this machine, one after the other (so neither sees the
other's memory or threads), and reports the median step time over the timed steps and its
peak resident memory (ru_maxrss; also after model loading). Ours runs
`se_jax.tuning.training.init_train_state(...).apply_step`, the step the train stage uses.

    python -m benchmarks.bench_training            # 3 warm-up + 10 timed steps per side
    python -m benchmarks.bench_training --quick    # 1 warm-up + 3 timed steps (< 2 minutes)
    python -m benchmarks.bench_training --dtype=bfloat16   # both sides in bfloat16 (adapters f32)
    python -m benchmarks.bench_training --rows=sft  # the train stage's batches (below)

`--rows=sft` trains both sides on what the train stage feeds its step instead (chat prompts
of the shipped demo questions, answers or "I don't know the answer." as targets, loss on
the targets only; `bench_lora.sft_rows`): transformers + peft on the whole right-padded
rows, as an SFT loop over them does, ours cut by the stage's `training.batch_layout` (the
prompts' shared head once per batch; its defaults, so no loss columns). Both
count the same real tokens per step; the FLOP shares then read "as if every token were
trained", so ours may pass 100%: the work it skips.

Yardstick (benchmarks/yardstick.py, measured in this run before the sides): each side's useful
FLOP rate, 4 x the matmul parameters per token (forward, and backward through the frozen
weights; SmolLM2-135M: 134.5M with the tied head), as a fraction of this machine's float32
matmul peak; and as a fraction of the same products alone (`yardstick.matmul_chain`: the
model's projections and head at the step's rows, forward and backward to the input, chained
with no attention, norms, loss or optimizer, measured in the jax side's process right after
its steps): what XLA's kernels reach at these shapes, so 100% of it is the most a step
could do with them.

The line training_speedup_vs_torch=<our tokens/s / torch tokens/s> is followed by the load
verdict (last line: "load ok" or "FIGURES UNRELIABLE").
"""
from __future__ import annotations

import os
import resource
import statistics

from absl import flags

from benchmarks import bench_lora
from benchmarks import yardstick

_QUICK = flags.DEFINE_bool("quick", False, "fewer steps (finishes in under two minutes)")
_SIDE = flags.DEFINE_enum("side", None, ["jax", "torch"], "internal: run one side only")
_BATCH = flags.DEFINE_integer("batch", 8, "sequences per step")
_SEQ = flags.DEFINE_integer("seq", 64, "tokens per sequence")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (3 with --quick)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps first (1 with --quick)")
_ROWS = flags.DEFINE_enum("rows", "random", ["random", "sft"],
                          "random tokens, all targets (--batch x --seq), or the train stage's "
                          "SFT rows (--batch of them; --seq unused)")
_DROPOUT = flags.DEFINE_float("lora_dropout", 0.0, "LoRA dropout on both sides")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "both sides' compute and frozen-weight dtype (adapters and their "
                           "optimizer state stay float32 on both: PEFT's autocast_adapter_dtype)")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_jax(warmup: int, steps: int) -> dict:
    import jax
    from se_jax.models.loading import load_llama

    model = load_llama("embedded", dtype=_DTYPE.value, param_dtype=_DTYPE.value)
    loaded = _rss_mib()
    rows = bench_lora.sft_rows(_BATCH.value) if _ROWS.value == "sft" else None
    step = bench_lora.lora_train_step(model, _BATCH.value, _SEQ.value, _DROPOUT.value, rows)
    times = yardstick.timings(step, steps, warmup)
    # Measured here, right after the steps: the host's speed drifts within minutes.
    ceiling = yardstick.matmul_chain(model.config, _tokens(rows), "lora_train",
                                     _DTYPE.value).gflops()
    return dict(side="jax", step_s=statistics.median(times), times=times, tokens=_tokens(rows),
                matmul_params=yardstick.llama_matmul_params(model.config),
                ceiling_gflops=ceiling,
                loaded_rss_mib=loaded, peak_rss_mib=_rss_mib(), devices=len(jax.devices()))


def run_torch(warmup: int, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from se_jax.models.embedded import embedded_gguf_path

    gguf = embedded_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf),
                                                 gguf_file=os.path.basename(gguf),
                                                 dtype=getattr(torch, _DTYPE.value))
    loaded = _rss_mib()
    if _ROWS.value == "sft":      # right-padded rows, -100 where no target is read
        from se_jax.tuning import sft_data
        rows = bench_lora.sft_rows(_BATCH.value)
        arrays = sft_data.make_batch(rows, _BATCH.value, pad_multiple=8)
        ids = torch.from_numpy(arrays["tokens"]).long()
        attention = torch.from_numpy(arrays["positions"] >= 0).long()
        labels = torch.full_like(ids, -100)
        labels[:, 1:] = torch.where(torch.from_numpy(arrays["loss_mask"][:, :-1]) > 0,
                                    ids[:, 1:], -100)
    else:
        rows = None
        ids = torch.from_numpy(
            bench_lora.random_tokens(model.config.vocab_size, _BATCH.value, _SEQ.value)).long()
        attention, labels = torch.ones_like(ids), ids

    step = bench_lora.torch_lora_step(model, ids, attention, labels, _DROPOUT.value)

    times = yardstick.timings(step, steps, warmup)
    return dict(side="torch", step_s=statistics.median(times), times=times, tokens=_tokens(rows),
                loaded_rss_mib=loaded, peak_rss_mib=_rss_mib(), threads=torch.get_num_threads())


def _tokens(rows: list | None) -> int:
    """Real tokens per step: the SFT rows' lengths, or batch x seq (random rows)."""
    if rows is not None:
        return sum(len(r.ids) for r in rows)
    return _BATCH.value * _SEQ.value


def _child(side: str, warmup: int, steps: int) -> dict:
    return yardstick.run_side(__file__, [
        f"--side={side}", f"--warmup={warmup}", f"--steps={steps}", f"--batch={_BATCH.value}",
        f"--seq={_SEQ.value}", f"--lora_dropout={_DROPOUT.value}", f"--dtype={_DTYPE.value}",
        f"--rows={_ROWS.value}"])


def main(argv):
    del argv
    warmup = 1 if _QUICK.value else _WARMUP.value
    steps = 3 if _QUICK.value else _STEPS.value
    if _SIDE.value:
        result = (run_jax if _SIDE.value == "jax" else run_torch)(warmup, steps)
        yardstick.print_result(result)
        return
    watch = yardstick.LoadWatch.start()
    stick = yardstick.Yardstick.measure(_DTYPE.value)
    print(stick.describe())
    results = {side: _child(side, warmup, steps) for side in ("torch", "jax")}
    tokens = results["jax"]["tokens"]
    rows = (f"{_BATCH.value} SFT rows ({tokens} real tokens, target-only loss)"
            if _ROWS.value == "sft" else f"batch {_BATCH.value} x {_SEQ.value} random tokens")
    print(f"LoRA r={bench_lora.RANK} on q_proj,v_proj (dropout {_DROPOUT.value}), SmolLM2-135M, "
          f"{_DTYPE.value} weights and compute on both sides, float32 adapters, {rows}, AdamW; "
          f"{warmup} warm-up + {steps} timed steps (median)")
    for side, label in (("torch", "transformers+peft"), ("jax", "se_jax (jit)")):
        r = results[side]
        print(f"  {label:18s} step {r['step_s']:.3f}s  {tokens / r['step_s']:7.1f} tokens/s  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (after load {r['loaded_rss_mib']:.0f} MiB)"
              f"  steps: {', '.join(f'{t:.2f}' for t in r['times'])}")
    n_params = results["jax"]["matmul_params"]
    flops = yardstick.flops_per_token(n_params, "lora_train") * tokens
    print(f"yardstick: {n_params / 1e6:.1f}M matmul parameters x 4 FLOPs per token = "
          f"{flops / 1e9:.1f} GFLOP per step; at the peak {stick.peak:.1f} GFLOP/s the "
          f"ceiling is {stick.peak * 1e9 * tokens / flops:.0f} tokens/s")
    print("  " + "   ".join(
        f"{side} {yardstick.share_of_peak(flops, results[side]['step_s'], stick.peak)}"
        for side in ("torch", "jax")))
    print("  " + yardstick.ceiling_line(
        "the step's", tokens, results["jax"]["ceiling_gflops"], stick.peak,
        {side: flops / results[side]["step_s"] / 1e9 for side in ("torch", "jax")}))
    speedup = results["torch"]["step_s"] / results["jax"]["step_s"]
    print(f"training_speedup_vs_torch={speedup:.3f}")
    print(watch.stop().verdict())


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
