"""Headline benchmark: tokens/s of our sampler against transformers `generate` (PyTorch).

    python -m benchmarks.bench_sampling            # 3 timed repeats per side, 1 vs 8 devices
    python -m benchmarks.bench_sampling --quick    # 1 repeat, no scaling run (< 2 min)

Both sides run the same workload on the same machine in one invocation: the embedded
SmolLM2-135M-Instruct GGUF (transformers loads it with gguf_file= and dequantises to
float32; we load the same file), the same chat prompts (se_jax.data.prompts), the same
M samples per question (ours: one prefill shared by the M rows; transformers:
num_return_sequences=M), T=1 sampling with top-k and top-p off on both sides (transformers'
default top_k=50 is switched off), and the same number of new tokens.

Token counting: every answer is forced to exactly --new_tokens tokens on both sides
(transformers: min_new_tokens = max_new_tokens; ours: no EOS ids, no stop strings), so both
count questions x M x new_tokens tokens, and the time is prompt ids in -> token ids out
(ours also returns each token's log-probability). Each side runs in its own subprocess, so
its peak memory (peak RSS: runtime, weights, caches) is its own; each side is warmed up
once (ours: compilation) before the timed repeats, and the median is reported.

Also: our throughput with natural stopping (EOS and stop strings; real tokens counted) and
on 1 vs 8 simulated CPU devices (one process with
XLA_FLAGS=--xla_force_host_platform_device_count=8; on a CPU this shows the overhead of
sharding, not a speed-up; a batch is padded to a multiple of the device count, so use
--questions divisible by 8). Last line: sampling_speedup_vs_torch=<ours/torch>.

--dtype sets both sides' compute and weights (transformers runs the same dtype). bfloat16
pays only where the CPU multiplies it natively (avx512_bf16 / AMX: 569 vs 300 tokens/s for
float32 on a 2-core AMD EPYC, 2026-12-03); elsewhere XLA emulates it and float32 is
faster. The default stays float32 (docs/log/2026-12-03-bfloat16.md). Per decode step the
sampling math costs ~16 ms for 80 rows x 49k vocab (was ~95 ms with a 49k cumsum and
XLA's variadic-reduce argmax; see se_jax/generation/sampling_math.py).
Under heavy CPU contention (other jobs on the same cores) transformers' OpenMP threads
degrade far more than XLA's, which inflates the ratio: compare on an otherwise idle machine.

Yardstick (benchmarks/yardstick.py, measured in this run): each side's useful FLOP rate (2 x the
matmul parameters per generated token and per real prompt token, one prefill per question)
as a fraction of this machine's float32 matmul peak, and its tokens/s as a fraction of the
decode memory-bandwidth roofline (weights + every row's keys and values at the mean
context, read once per step). Where our time goes, measured on one extra run of ours with
the jitted prefill and decode programs synchronised and timed (`time_breakdown`): prefill,
decode steps (the model forwards), sampling maths (the jitted per-step sampling over the
49k vocabulary for all rows, timed alone on the same shapes, times the steps), and host work
(the rest: padding, keys, transfers, dispatch). The decode forwards' FLOP rate is also
given as a fraction of the same products alone at the decode's rows
(`yardstick.matmul_chain`, measured in our side's process after its runs): how far the
step is from what XLA's kernels reach at those shapes. The line
sampling_speedup_vs_torch=<ours/torch> is followed by the load verdict (last line: "load ok" or "FIGURES UNRELIABLE").
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

from benchmarks import yardstick
from benchmarks.sides import (our_sampler_run as _our_run, prompt_ids as _prompt_ids,
                              time_breakdown, torch_sampler)

_QUICK = flags.DEFINE_bool("quick", False, "one timed repeat per side; no scaling run")
_QUESTIONS = flags.DEFINE_integer("questions", 8, "questions per batch")
_SAMPLES = flags.DEFINE_integer("samples", 10, "answers per question (M)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "new tokens per answer")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats per side (median)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "our compute dtype")
_SCALING = flags.DEFINE_bool("scaling", True, "also measure 1 vs 8 simulated devices")
_CHILD = flags.DEFINE_enum("child", None, ["torch", "ours", "scaling"], "internal: one side")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------- sides

def child_torch(n: int, m: int, new: int, repeats: int, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from se_jax.models.embedded import embedded_gguf_path
    path = embedded_gguf_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=getattr(torch, dtype)).eval()
    ids = _prompt_ids(tokenizer, n)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    run, width = torch_sampler(model, ids, m, pad)
    run(2)  # warm-up
    out = {}
    seqs = []
    times = yardstick.timings(lambda: seqs.append(run(new)), repeats)
    assert seqs[-1].shape == (n * m, width + new), seqs[-1].shape
    out["fixed"] = dict(tokens=n * m * new, seconds=times)
    if repeats > 1:  # natural stopping: count real tokens up to and including EOS
        seq = []
        t = yardstick.timings(lambda: seq.append(run(new, forced=False)), 1)
        gen = seq[-1][:, width:]
        eos = model.generation_config.eos_token_id
        is_eos = torch.isin(gen, torch.tensor([eos] if isinstance(eos, int) else eos))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1,
                            torch.full((gen.shape[0],), gen.shape[1]))
        out["natural"] = dict(tokens=int(first.sum()), seconds=t)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["threads"] = torch.get_num_threads()
    return out


def _load_ours(dtype: str, mesh=None):
    from se_jax.models.embedded import embedded_gguf_path
    from se_jax.models.loading import load_llama, load_tokenizer
    path = embedded_gguf_path()
    return load_llama(path, mesh=mesh, dtype=dtype, param_dtype=dtype), load_tokenizer(path)


def child_ours(n: int, m: int, new: int, repeats: int, dtype: str) -> dict:
    import jax
    model, tokenizer = _load_ours(dtype)
    ids = _prompt_ids(tokenizer, n)
    start = time.perf_counter()
    _our_run(model, tokenizer, ids, m, new)      # warm-up: compiles prefill + decode
    compile_s = time.perf_counter() - start
    raws = []
    times = yardstick.timings(lambda: raws.append(_our_run(model, tokenizer, ids, m, new)), repeats)
    assert (raws[-1].lengths == new).all()
    out = dict(fixed=dict(tokens=n * m * new, seconds=times), compile_seconds=compile_s,
               devices=len(jax.devices()), dtype=dtype)
    if repeats > 1:
        nat = []
        t = yardstick.timings(lambda: nat.append(_our_run(model, tokenizer, ids, m, new, natural=True)), 1)
        out["natural"] = dict(tokens=int(nat[-1].lengths.sum()), seconds=t)
    out["breakdown"] = time_breakdown(model, tokenizer, ids, m, new)
    out["decode_ceiling_gflops"] = yardstick.matmul_chain(model.config, n * m, "forward",
                                                            dtype).gflops()
    cfg = model.config
    itemsize = 2 if dtype == "bfloat16" else 4
    context = sum(map(len, ids)) / len(ids) + new / 2
    out.update(prompt_tokens=sum(map(len, ids)),
               matmul_params=yardstick.llama_matmul_params(cfg),
               weight_bytes=yardstick.llama_matmul_params(cfg) * itemsize,
               kv_bytes_row=yardstick.kv_bytes_per_row(cfg.num_hidden_layers,
                                                       cfg.num_key_value_heads, cfg.head_dim,
                                                       round(context), itemsize))
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def child_scaling(n: int, m: int, new: int, repeats: int, dtype: str) -> dict:
    import jax

    from se_jax.parallel.mesh import make_mesh
    out = {}
    for count in (1, len(jax.devices())):
        mesh = make_mesh({"data": count}, devices=jax.devices()[:count])
        model, tokenizer = _load_ours(dtype, mesh)
        ids = _prompt_ids(tokenizer, n)
        _our_run(model, tokenizer, ids, m, new, mesh)
        times = yardstick.timings(lambda: _our_run(model, tokenizer, ids, m, new, mesh), repeats)
        out[str(count)] = dict(tokens=n * m * new, seconds=times)
    return out


# ----------------------------------------------------------------------------- driver

def _spawn(side: str, args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={side}"] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rate(d: dict) -> float:
    return d["tokens"] / statistics.median(d["seconds"])


def main(argv):
    del argv
    n, m, new = _QUESTIONS.value, _SAMPLES.value, _NEW_TOKENS.value
    repeats = 1 if _QUICK.value else _REPEATS.value
    if _CHILD.value:
        if _CHILD.value == "torch":
            result = child_torch(n, m, new, repeats, _DTYPE.value)
        elif _CHILD.value == "ours":
            result = child_ours(n, m, new, repeats, _DTYPE.value)
        else:
            result = child_scaling(n, m, new, repeats, _DTYPE.value)
        print(json.dumps(result))
        return

    common = [f"--questions={n}", f"--samples={m}", f"--new_tokens={new}",
              f"--repeats={repeats}", f"--dtype={_DTYPE.value}"]
    if _QUICK.value:
        common.append("--quick")
    watch = yardstick.LoadWatch.start()
    stick = yardstick.Yardstick.measure(_DTYPE.value)
    print(stick.describe(), flush=True)
    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base_env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    TOKENIZERS_PARALLELISM="false")
    print(f"workload: {n} questions x {m} samples x {new} new tokens (forced), T=1, "
          f"top-k/top-p off, embedded SmolLM2-135M-Instruct GGUF; {repeats} timed "
          f"repeat(s) per side, median", flush=True)
    torch_r = _spawn("torch", common, base_env)
    ours_r = _spawn("ours", common, base_env)
    t_rate, o_rate = _rate(torch_r["fixed"]), _rate(ours_r["fixed"])
    print(f"transformers generate (torch {torch_r['threads']} threads, {_DTYPE.value}): "
          f"{t_rate:.1f} tokens/s  peak RSS {torch_r['peak_rss_mb']:.0f} MiB")
    print(f"se_jax sampler ({ours_r['dtype']}, {ours_r['devices']} device, compile "
          f"{ours_r['compile_seconds']:.1f}s untimed): {o_rate:.1f} tokens/s  "
          f"peak RSS {ours_r['peak_rss_mb']:.0f} MiB")
    if "natural" in ours_r and "natural" in torch_r:
        print(f"natural stopping (real tokens up to EOS/stop): ours "
              f"{_rate(ours_r['natural']):.1f} tokens/s ({ours_r['natural']['tokens']} tokens), "
              f"transformers {_rate(torch_r['natural']):.1f} tokens/s "
              f"({torch_r['natural']['tokens']} tokens, EOS only)")
    generated = n * m * new
    flops = yardstick.flops_per_token(ours_r["matmul_params"], "forward") * (
        generated + ours_r["prompt_tokens"])
    roofline = yardstick.decode_roofline(stick.bandwidth_gbs, ours_r["weight_bytes"],
                                         ours_r["kv_bytes_row"], n * m)
    print(f"yardstick: {ours_r['matmul_params'] / 1e6:.1f}M matmul parameters, 2 FLOPs each "
          f"per token ({generated} generated + {ours_r['prompt_tokens']} prompt tokens); "
          f"decode roofline at {n * m} rows {roofline:.0f} tokens/s")
    for label, r in (("transformers", torch_r), ("se_jax", ours_r)):
        secs = statistics.median(r["fixed"]["seconds"])
        print(f"  {label:12s} {yardstick.share_of_peak(flops, secs, stick.peak)}, "
              f"{yardstick.share(generated / secs, roofline):.0%} of the bandwidth roofline")
    parts = ours_r["breakdown"]
    print("se_jax time breakdown (one extra run, programs synchronised: "
          f"{parts['total']:.2f}s, {parts['steps']} steps): " + ", ".join(
              f"{k.replace('_', ' ')} {parts[k] / parts['total']:.0%} ({parts[k]:.2f}s)"
              for k in ("prefill", "decode_forward", "sampling_maths", "host")))
    forwards = n * m * (parts["steps"] - 1)   # the first token comes from prefill's logits
    decode_rate = (yardstick.flops_per_token(ours_r["matmul_params"], "forward") * forwards
                   / parts["decode_forward"] / 1e9)
    print("  " + yardstick.ceiling_line("a decode step's", n * m,
                                        ours_r["decode_ceiling_gflops"], stick.peak,
                                        {"se_jax's decode forwards": decode_rate}))
    if _SCALING.value and not _QUICK.value:
        env = dict(base_env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
        s = _spawn("scaling", common, env)
        r1, r8 = _rate(s["1"]), _rate(s["8"])
        print(f"simulated devices (one process, 8 CPU devices, batch over 'data'): "
              f"1 device {r1:.1f} tokens/s, 8 devices {r8:.1f} tokens/s "
              f"(x{r8 / r1:.2f}; CPU devices share the same cores: overhead, not speed-up)")
    print(f"sampling_speedup_vs_torch={o_rate / t_rate:.2f}")
    print(watch.stop().verdict())


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
