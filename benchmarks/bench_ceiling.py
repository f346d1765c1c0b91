"""How close XLA's kernels get to this machine's matmul peak at the shapes our programs run.

    python -m benchmarks.bench_ceiling            # 5 pairs per program shape (~3 minutes)
    python -m benchmarks.bench_ceiling --pairs=3 --dtype=bfloat16

The other benchmarks report each side as a share of the 2048^3 matmul peak, and our
programs also as a share of the same products alone (`yardstick.matmul_chain`: the model's
projections and head at the program's rows, chained, with no attention, norms, loss or
optimizer). This one asks how far that ceiling itself sits below the peak, for the embedded
SmolLM2-135M's shapes:
  lora_train  the LoRA step of bench_training (8 x 64 = 512 rows, forward and backward to
              the input);
  prefill     bench_model's full prefill (8 x 256 = 2048 rows, forward);
  decode80    a decode step of bench_sampling (8 questions x 10 samples = 80 rows);
  decode8     a decode step of bench_model (batch 8).
The host's speed drifts by a third within minutes on a shared VM, so the chain and the
2048^3 matmul (the faster of jax's and torch's, as the other benchmarks' peak) are measured
in turn, pair after pair, and the median of the per-pair ratios is what counts. Last line: `ceiling_share_of_peak <name>=<median ratio> ...`,
followed by the load verdict.
"""
from __future__ import annotations

import statistics

from absl import flags

from benchmarks import yardstick

_PAIRS = flags.DEFINE_integer("pairs", 5, "chain / 2048^3 pairs per program shape")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")

# name -> (rows, kind): the shapes of the programs the other benchmarks time.
PROGRAMS = {"lora_train": (512, "lora_train"), "prefill": (2048, "forward"),
            "decode80": (80, "forward"), "decode8": (8, "forward")}


def main(argv):
    del argv
    from se_jax.models.loading import load_config, open_checkpoint

    watch = yardstick.LoadWatch.start()
    config = load_config(open_checkpoint("embedded"))
    print(f"machine: {yardstick.cpu_model()}; SmolLM2-135M shapes "
          f"({yardstick.llama_matmul_params(config) / 1e6:.1f}M matmul parameters), "
          f"{_DTYPE.value}; {_PAIRS.value} pairs per shape, chain then 2048^3 matmul")
    medians = {}
    for name, (rows, kind) in PROGRAMS.items():
        chain = yardstick.matmul_chain(config, rows, kind, _DTYPE.value)
        pairs = [(chain.gflops(), max(yardstick.matmul_peaks(_DTYPE.value)))
                 for _ in range(_PAIRS.value)]   # the first call compiles, untimed
        medians[name] = statistics.median(c / p for c, p in pairs)
        print(f"{name:10s} {rows:5d} rows {kind:10s} products alone / 2048^3: "
              + ", ".join(f"{c:.0f}/{p:.0f}" for c, p in pairs)
              + f" GFLOP/s -> median {medians[name]:.0%}", flush=True)
    print("ceiling_share_of_peak " + " ".join(f"{k}={v:.3f}" for k, v in medians.items()))
    print(watch.stop().verdict())


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
