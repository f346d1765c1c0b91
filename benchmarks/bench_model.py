"""Prefill and single-step decode throughput: our JAX decoder vs transformers' PyTorch model.

    python -m benchmarks.bench_model            # embedded SmolLM2, all 30 layers, batch 8, 256 tokens
    python -m benchmarks.bench_model --quick    # first 8 layers, batch 4, 64 tokens (< 1 minute)

Same weights (the embedded GGUF dequantised by our loader; torch gets them through
`to_hf_state_dict`, the same path parity tests check), same batch, prompt length and dtype,
measured in one run, alternating ours/torch per repetition so both see the same load. Prefill: one forward over [B, T] into an empty
cache (tokens/s = B*T/s). Decode: one token per row against a cache holding T tokens
(tokens/s = B/s), ours a compiled step with the cache donated, torch with its DynamicCache.
Medians over --iters. XLA's cost analysis of our compiled steps gives FLOPs and bytes per call,
hence achieved GFLOP/s and GB/s: where the time goes. The yardstick (benchmarks/yardstick.py),
measured in the same run, puts each side against this machine's limits: prefill's useful
FLOPs (2 x the matmul parameters per token: SmolLM2-135M has 134.5M with the tied head, the
--quick 8-layer cut 56.6M) as a fraction of the float32 matmul peak; decode also against the
memory-bandwidth roofline (every weight plus each row's keys and values read once per step);
both also against the same products alone at the phase's rows (`yardstick.matmul_chain`,
measured after the sides: what XLA's kernels reach at those shapes).
The line `prefill_ratio=<ours/torch> decode_ratio=<ours/torch>` (> 1: ours faster) is
followed by the load verdict (last line: "load ok" or "FIGURES UNRELIABLE").
"""
from __future__ import annotations

import time

from absl import flags

from benchmarks import yardstick
from benchmarks.sides import (interleaved_medians, prefill_decode_ours as bench_ours,
                              prefill_decode_torch as bench_torch, truncate_layers)

_QUICK = flags.DEFINE_bool("quick", False, "small run: 8 layers, batch 4, 64 tokens, 3 iters")
_MODEL = flags.DEFINE_string("model", "embedded", "checkpoint (embedded, HF dir, .gguf)")
_LAYERS = flags.DEFINE_integer("layers", 0, "use only the first N layers (0 = all)")
_BATCH = flags.DEFINE_integer("batch", 8, "rows")
_SEQ = flags.DEFINE_integer("seq_len", 256, "prompt tokens per row")
_ITERS = flags.DEFINE_integer("iters", 5, "timed repetitions (median reported)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params and compute")


def main(argv):
    del argv
    import jax
    import numpy as np
    from se_jax.models.loading import load_llama

    watch = yardstick.LoadWatch.start()
    stick = yardstick.Yardstick.measure(_DTYPE.value)
    print(stick.describe())
    quick = _QUICK.value
    layers = _LAYERS.value or (8 if quick else 0)
    b, t = (4, 64) if quick else (_BATCH.value, _SEQ.value)
    iters = 3 if quick else _ITERS.value
    start = time.perf_counter()
    model = truncate_layers(load_llama(_MODEL.value, dtype=_DTYPE.value,
                                       param_dtype=_DTYPE.value), layers)
    print(f"loaded {_MODEL.value} in {time.perf_counter() - start:.1f}s; "
          f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"vocab {model.config.vocab_size}, {_DTYPE.value}; batch {b}, prompt {t} tokens; "
          f"JAX on {jax.devices()[0].platform} x{jax.device_count()}")
    tokens = np.random.RandomState(0).randint(0, model.config.vocab_size, (b, t)).astype(np.int32)

    ours = bench_ours(model, tokens, iters)
    theirs = bench_torch(model, tokens, iters)
    for phase in ("prefill", "decode"):
        medians = interleaved_medians({"ours": ours[phase], "torch": theirs[phase]}, iters)
        ours[f"{phase}_s"], theirs[f"{phase}_s"] = medians["ours"], medians["torch"]

    rows = [("prefill", b * t, "prefill_s", ours["prefill_cost"]),
            ("decode", b, "decode_s", ours["decode_cost"])]
    print(f"ours: compile {ours['compile_s']:.1f}s (prefill + decode, once); "
          f"torch: {theirs['attn']} attention, "
          f"{theirs['threads']} thread(s) (the faster of 1 and its default)")
    ratios = {}
    for name, n_tokens, key, cost in rows:
        ours_tps, torch_tps = n_tokens / ours[key], n_tokens / theirs[key]
        ratios[name] = ours_tps / torch_tps
        cost = cost or {}
        flops, nbytes = cost.get("flops", 0.0), cost.get("bytes accessed", 0.0)
        print(f"{name:8s} ours {ours_tps:10.1f} tok/s ({ours[key] * 1e3:8.2f} ms)   "
              f"torch {torch_tps:10.1f} tok/s ({theirs[key] * 1e3:8.2f} ms)   "
              f"ratio {ratios[name]:.2f}   ours: {flops / 1e9:.2f} GFLOP, {nbytes / 1e6:.0f} MB "
              f"per call = {flops / ours[key] / 1e9:.1f} GFLOP/s, "
              f"{nbytes / ours[key] / 1e9:.1f} GB/s")
    cfg = model.config
    n_params = yardstick.llama_matmul_params(cfg)
    itemsize = 2 if _DTYPE.value == "bfloat16" else 4
    kv_row = yardstick.kv_bytes_per_row(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                        cfg.head_dim, t + iters, itemsize)
    roofline = yardstick.decode_roofline(stick.bandwidth_gbs, n_params * itemsize, kv_row, b)
    print(f"yardstick: {n_params / 1e6:.1f}M matmul parameters, 2 FLOPs each per token; "
          f"peak {stick.peak:.1f} GFLOP/s; decode roofline {roofline:.0f} tok/s at batch {b} "
          f"({n_params * itemsize / 1e6:.0f} MB weights + {kv_row / 1e6:.1f} MB KV per row "
          f"per step at {stick.bandwidth_gbs:.1f} GB/s)")
    for name, n_tokens, key, _ in rows:
        flops = yardstick.flops_per_token(n_params, "forward") * n_tokens
        sides = {"ours": ours[key], "torch": theirs[key]}
        line = "   ".join(f"{side} {yardstick.share_of_peak(flops, sec, stick.peak)}"
                           for side, sec in sides.items())
        if name == "decode":
            line += "   bandwidth roofline: " + ", ".join(
                f"{side} {yardstick.share(n_tokens / sec, roofline):.0%}"
                for side, sec in sides.items())
        print(f"{name:8s} {line}")
        ceiling = yardstick.matmul_chain(cfg, n_tokens, "forward", _DTYPE.value).gflops()
        print("         " + yardstick.ceiling_line(
            f"{name}'s", n_tokens, ceiling, stick.peak,
            {side: flops / sec / 1e9 for side, sec in sides.items()}))
    print(f"prefill_ratio={ratios['prefill']:.3f} decode_ratio={ratios['decode']:.3f}")
    print(watch.stop().verdict())


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
