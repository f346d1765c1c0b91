"""Benchmark: the LLM entailment judge (SE (Llama)) with shared-prefix scoring.

Judge: the embedded SmolLM2-135M-Instruct (the same weights on every side). Prompt: the
5-shot `entailment_fewshot` template of configs/judge_prompts.py in SmolLM2's chat
template (~400 tokens; the instruction and examples are ~85% of them). Pairs: NQ-open dev
questions (../shared/data), each with two answers drawn from its gold aliases, a sentence
around one, and another question's gold answer (entailment / neutral / contradiction-like
mixes). Every side scores the identical token ids of the identical full prompts and reads
log p(label word) at the last prompt token:

  shared    se_jax.generation.scoring.PromptScorer: prefix prefilled once, suffixes (~50 tokens)
            batched against its cache (what entropy.backend=llm_judge runs)
  unshared  the same scorer with no prefix: each full prompt from scratch
  torch     transformers' PyTorch batched forward over the full prompts (left-padded,
            attention mask, same batch size), pre-tokenised (tokenisation not timed; ours
            is timed including it)

All three are measured in one run, warm (compilation excluded and reported). Labels are
compared between the sides (argmax over the three labels).

    python -m benchmarks.bench_judge --quick     # 32 pairs (~10 min on 2 loaded CPU cores)
    python -m benchmarks.bench_judge             # 256 pairs

Yardstick (benchmarks/yardstick.py, measured in this run): each side's useful FLOP rate, 2 x the
matmul parameters (134.5M) per prompt token it must process (shared: the suffixes, the
prefix once; unshared and torch: every full prompt; padding not counted), as a fraction of
this machine's float32 matmul peak.

Line: judge_speedup_vs_torch=<shared pairs/s / torch pairs/s>
      prefix_speedup=<shared pairs/s / unshared pairs/s>
then the load verdict (last line: "load ok" or "FIGURES UNRELIABLE").
"""
from __future__ import annotations

import json
import time
import numpy as np
from absl import app, flags

from benchmarks import yardstick
from benchmarks.sides import judge_workload as workload, torch_scores, torch_twin

_QUICK = flags.DEFINE_bool("quick", False, "32 pairs instead of --num_pairs")
_PAIRS = flags.DEFINE_integer("num_pairs", 256, "pairs scored by every side")
_BATCH = flags.DEFINE_integer("batch_size", 16, "pairs per forward (every side)")
_SHOTS = flags.DEFINE_integer("shots", 5, "few-shot examples in the prompt")
_BUCKET = flags.DEFINE_integer("bucket", None, "our padded lengths are multiples of this "
                               "(default 16; --quick: 32, fewer shapes to compile)")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv):
    del argv
    import jax
    import torch

    from se_jax.generation import scoring
    from se_jax.data import prompts as prompt_lib
    from se_jax.models.loading import load_llama, load_tokenizer

    watch = yardstick.LoadWatch.start()
    stick = yardstick.Yardstick.measure()
    print(stick.describe())
    n = 32 if _QUICK.value else _PAIRS.value
    items = workload(n)
    model, tokenizer = load_llama("embedded"), load_tokenizer("embedded")
    prompt = prompt_lib.load_judge_prompt("entailment_fewshot", _SHOTS.value)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bucket = _BUCKET.value or (32 if _QUICK.value else 16)
    base = scoring.NextTokenScorer(model, batch_size=_BATCH.value, bucket=bucket, pad_id=pad)
    (shared, prefill_s) = timed(lambda: scoring.PromptScorer(base, tokenizer, prompt))
    unshared = scoring.PromptScorer(base, tokenizer, prompt, shared=False)
    full = shared.full_ids(items)
    lengths = [len(f) for f in full]
    p = shared.prefix.length
    print(f"judge: SmolLM2-135M-Instruct (embedded), float32; devices {jax.devices()}; "
          f"prompt {prompt.name} with {len(prompt.shots)} shots: {np.mean(lengths):.0f} tokens "
          f"per pair on average (shared prefix {p}, suffix {np.mean(lengths) - p:.0f}); "
          f"{n} pairs, batch {base.batch_size}, our lengths padded to multiples of {bucket}")

    _, shared_cold = timed(lambda: shared(items))          # compiles
    got_shared, shared_s = timed(lambda: shared(items))
    _, unshared_cold = timed(lambda: unshared(items))
    got_unshared, unshared_s = timed(lambda: unshared(items))
    hf = torch_twin(model, "float32")
    torch_scores(hf, full[:2], shared.label_ids, shared.owner, _BATCH.value, pad)  # warm-up
    got_torch, torch_s = timed(lambda: torch_scores(hf, full, shared.label_ids, shared.owner,
                                                    _BATCH.value, pad))
    rates = dict(shared=n / shared_s, unshared=n / unshared_s, torch=n / torch_s)
    print(f"shared-prefix: {rates['shared']:.2f} pairs/s ({shared_s:.1f}s warm; first call "
          f"incl. compilation {shared_cold:.1f}s; prefix prefill incl. compilation "
          f"{prefill_s:.1f}s, once per process)")
    print(f"unshared (ours, full prompts): {rates['unshared']:.2f} pairs/s ({unshared_s:.1f}s "
          f"warm; first call {unshared_cold:.1f}s)")
    print(f"transformers PyTorch batched: {rates['torch']:.2f} pairs/s ({torch_s:.1f}s; "
          f"{torch.get_num_threads()} threads)")
    labels = {k: v.argmax(1) for k, v in dict(shared=got_shared, unshared=got_unshared,
                                               torch=got_torch).items()}
    diff = np.abs(got_shared - got_unshared).max()
    print(f"labels: shared == unshared on {np.mean(labels['shared'] == labels['unshared']):.0%}"
          f" (max |log-prob diff| {diff:.2e}); shared == torch on "
          f"{np.mean(labels['shared'] == labels['torch']):.0%} (max |diff| "
          f"{np.abs(got_shared - got_torch).max():.2e}); label counts "
          f"{dict(zip(prompt.label_names, np.bincount(labels['shared'], minlength=3).tolist()))}")
    per_token = yardstick.flops_per_token(yardstick.llama_matmul_params(model.config),
                                          "forward")
    full_flops = per_token * sum(lengths)
    shared_flops = per_token * (sum(lengths) - (n - 1) * p)
    print("yardstick: " + ", ".join(
        f"{side} {yardstick.share_of_peak(flops, n / rates[side], stick.peak)}"
        for side, flops in (("shared", shared_flops), ("unshared", full_flops),
                            ("torch", full_flops))))
    speedup, prefix_speedup = rates["shared"] / rates["torch"], rates["shared"] / rates["unshared"]
    print(json.dumps(dict(pairs=n, quick=_QUICK.value, pairs_per_s={k: round(v, 3)
                                                                      for k, v in rates.items()},
                          prompt_tokens=round(float(np.mean(lengths)), 1), prefix_tokens=p)))
    print(f"judge_speedup_vs_torch={speedup:.2f} prefix_speedup={prefix_speedup:.2f}")
    print(watch.stop().verdict())


if __name__ == "__main__":
    app.run(main)
