"""Benchmark: semantic ids with our batched JAX kernel vs the reference's PyTorch loop.

Model: a base-size DeBERTa-v3 shape (12 layers, hidden 768, 12 heads, 256 position buckets,
shared keys, p2c|c2p), random weights (its classifier centred on this workload so its
verdicts vary), saved with save_pretrained and loaded by both sides from that directory.
Tokenizer: byte-level BPE trained on the workload's text, with DeBERTa's pair template.

Workload: NQ-open dev questions (../shared/data) answered M times by the embedded
SmolLM2-135M-Instruct with se_jax.generation.sampling (the sample stage's sampler), prompted 4-shot for
short answers. At T=1 this 135M model's answers are all distinct (10.0 of 10 on average:
near-random text), unlike the paper's 7B+ models; at the default T=0.5 they repeat as real
short answers do. --temperature=1.0 gives the no-repetition case. Generated once and cached
in runs/bench_entailment/.

(a) whole job, per question: ours = dedup + one batched jitted forward per padded bucket
    + jitted clustering and estimators (se_jax.pipeline.stages.entropy.uncertainty_records), warm;
    reference = transformers PyTorch, one pair per call, `get_semantic_ids`' greedy loop
    (compares each answer only against cluster representatives), as jlko/semantic_uncertainty.
(b) raw kernel on the identical pairs, identical batches (same batch size, same padding):
    our jitted forward vs the transformers PyTorch forward, pairs/s.

    python -m benchmarks.bench_entailment --quick      # < 2 minutes once the answers are cached
    python -m benchmarks.bench_entailment              # the full comparison

(a) is also run with entropy.pairs=rounds (only the pairs the greedy clustering reads, one
    batched call per round), printed beside the full-matrix figure.

Yardstick (benchmarks/yardstick.py, measured in this run): in (b) each side's useful FLOP rate,
2 x the model's matmul parameters (all but the embedding tables: ~86M for this shape) per
computed token slot (both sides compute the same padded batches), as a fraction of this
machine's float32 matmul peak.

Line: speedup_vs_reference_loop=<a> raw_pairs_ratio_vs_torch_batched=<b>
      rounds_speedup_vs_reference_loop=<a with rounds>
then the load verdict (last line: "load ok" or "FIGURES UNRELIABLE").
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags, logging

from benchmarks import sides
from benchmarks import yardstick

_QUICK = flags.DEFINE_bool("quick", False, "small reference sample (finishes in < 2 min)")
_QUESTIONS = flags.DEFINE_integer("num_questions", 50, "questions in the workload")
_SAMPLES = flags.DEFINE_integer("num_samples", 10, "answers per question (M)")
_BATCH = flags.DEFINE_integer("batch_size", 64, "pairs per forward (both sides in (b))")
_RAW_PAIRS = flags.DEFINE_integer("raw_pairs", None, "pairs in (b) (default: 512; quick: 64)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.5, "sampling temperature of the workload")
_CACHE = flags.DEFINE_string("answers_cache", "runs/bench_entailment/answers_T{temperature}.jsonl",
                             "cached workload (generated when absent)")
_JOB_QUESTIONS = flags.DEFINE_integer("job_questions", None, "questions of the workload that "
                                      "both sides label in (a) (default: all; --quick: 4)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats of ours and of (b); median")

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- workload

# Short-answer few-shot examples (not NQ-open dev questions), so the small model answers
# briefly, as the paper's models do.
FEW_SHOT = (("who wrote the play romeo and juliet", "William Shakespeare"),
            ("what is the capital city of australia", "Canberra"),
            ("when did the second world war end", "1945"),
            ("how many players are on a basketball team on the court", "five"))


def generate_workload(path: Path, num_questions: int, num_samples: int,
                      temperature: float) -> None:
    """Sample answers to NQ-open dev questions with the embedded SmolLM2 (se_jax.generation.sampling)."""
    from se_jax.generation import sampling
    from se_jax.data import prompts as prompt_lib
    from se_jax.models.loading import load_llama, load_tokenizer
    from se_jax.io.stage_io import read_jsonl, write_jsonl
    source = REPO.parent / "shared" / "data" / "nq_open" / "NQ-open.dev.jsonl"
    questions = [r["question"] for r in read_jsonl(source)[:num_questions]]
    model, tokenizer = load_llama("embedded"), load_tokenizer("embedded")
    prompts = [prompt_lib.format_prompt(tokenizer, q, few_shot=FEW_SHOT) for q in questions]
    ids = [f"nq_dev_{i}" for i in range(len(questions))]
    start = time.perf_counter()
    _, samples = sampling.sample_answers(model, tokenizer, prompts, ids,
                                         num_samples=num_samples, temperature=temperature,
                                         max_new_tokens=24, batch_size=8)
    logging.info("sampled %d x %d answers in %.0fs", len(questions), num_samples,
                 time.perf_counter() - start)
    write_jsonl(path, [dict(id=i, question=q, temperature=temperature,
                            source=f"{source.name} + SmolLM2-135M-Instruct, 4-shot",
                            texts=[a.text for a in s], mean_logprobs=[a.mean_logprob for a in s])
                       for i, q, s in zip(ids, questions, samples)])


def load_workload(num_questions: int, num_samples: int, temperature: float):
    from se_jax.io.stage_io import read_jsonl
    from se_jax.pipeline.stages.entropy import Item
    path = Path(_CACHE.value.format(temperature=temperature))
    path = path if path.is_absolute() else REPO / path
    if path.exists():
        rows = read_jsonl(path)
    if not path.exists() or len(rows) < num_questions or len(rows[0]["texts"]) != num_samples:
        logging.info("generating the workload into %s", path)
        generate_workload(path, num_questions, num_samples, temperature)
        rows = read_jsonl(path)
    return [Item(r["id"], r["question"], tuple(r["texts"]), tuple(r["mean_logprobs"]))
            for r in rows[:num_questions]]


# ----------------------------------------------------------------------------- timing

def timed(fn, repeats: int = 1):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main(argv):
    del argv
    import jax
    import torch

    import crosscheck_entropy as ref
    from tools import random_nli
    from se_jax.semantic import entailment
    from se_jax.parallel.mesh import make_mesh
    from se_jax.pipeline.stages.entropy import uncertainty_records

    watch = yardstick.LoadWatch.start()
    stick = yardstick.Yardstick.measure()
    print(stick.describe())
    quick = _QUICK.value
    repeats = 1 if quick else _REPEATS.value
    workload = load_workload(_QUESTIONS.value, _SAMPLES.value, _TEMPERATURE.value)
    distinct = [len(set(it.texts)) for it in workload]
    print(f"workload: {len(workload)} questions x {_SAMPLES.value} answers (NQ-open dev, "
          f"SmolLM2-135M-Instruct 4-shot, T={_TEMPERATURE.value}); distinct answers per "
          f"question: mean {np.mean(distinct):.1f}, median {np.median(distinct):.0f}")
    # Both sides label the same questions: per-question cost varies a lot between questions.
    items = workload[:_JOB_QUESTIONS.value or (4 if quick else len(workload))]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sentences = [f"{it.question} {t}" for it in workload for t in dict.fromkeys(it.texts)]
        tokenizer, torch_model, nli = sides.build_random_nli(tmp, sentences,
                                                             random_nli.BASE_V3)
        n_params = sum(p.numel() for p in torch_model.parameters()) / 1e6
        print(f"model: DeBERTa-v3-base shape, {n_params:.0f}M parameters, random; "
              f"built+saved+loaded in "
              f"{time.perf_counter() - start:.0f}s; devices {jax.devices()}; torch threads "
              f"{torch.get_num_threads()}")

        mesh = make_mesh({"data": -1})
        backend = entailment.DebertaBackend(nli, mesh, batch_size=_BATCH.value,
                                            buckets=entailment.DEFAULT_BUCKETS)

        # ---- (a) the whole job
        _, cold = timed(lambda: uncertainty_records(backend, items, strict=False))
        (ours, pairs), warm = timed(lambda: uncertainty_records(backend, items, strict=False),
                                    repeats)
        # the same job labelling only the pairs the clustering reads (entropy.pairs=rounds)
        rounds_job = lambda: uncertainty_records(backend, items, strict=False,  # noqa: E731
                                                 pairs="rounds")
        _, rounds_cold = timed(rounds_job)
        (ours_rounds, rounds_pairs), rounds_warm = timed(rounds_job, repeats)
        reference = ref.ReferenceDeberta(tmp)
        reference.model = torch_model.eval()            # the same weights, already in memory
        ref_ids, ref_time = timed(lambda: [ref.reference_semantic_ids(
            [f"{it.question} {t}" for t in it.texts], reference) for it in items])
        same = sum(a == r["semantic_ids"] for a, r in zip(ref_ids, ours))
        ours_per_q, ref_per_q = warm / len(items), ref_time / len(items)
        speedup = ref_per_q / ours_per_q
        clusters = np.mean([r["num_clusters"] for r in ours])
        equivalent = np.mean([np.mean(np.asarray(r["equivalence"])[~np.eye(len(r["equivalence"]),
                                                                           dtype=bool)])
                              for r in ours])
        print(f"(a) reference loop: {ref_time:.1f}s for {len(items)} questions "
              f"({reference.calls} single-pair calls, {reference.calls / ref_time:.1f} pairs/s)"
              f" = {ref_per_q:.2f} s/question")
        print(f"(a) ours: {warm:.2f}s for {len(items)} questions ({pairs} pairs after dedup, "
              f"{sum(len(it.texts) ** 2 for it in items)} before) = {ours_per_q:.3f} "
              f"s/question warm; first call incl. compilation {cold:.1f}s")
        print(f"(a) semantic ids identical to the reference on {same}/{len(items)} "
              f"questions; speedup {speedup:.1f}x per question (warm), "
              f"{ref_per_q / (cold / len(items)):.1f}x including compilation")
        same_rounds = sum(a == r["semantic_ids"] for a, r in zip(ref_ids, ours_rounds))
        rounds_speedup = ref_per_q / (rounds_warm / len(items))
        print(f"(a) ours, rounds (only the pairs the clustering reads): {rounds_warm:.2f}s "
              f"({rounds_pairs} pairs against the reference's {reference.calls} calls and the "
              f"full matrix's {pairs}; first call {rounds_cold:.1f}s); semantic ids identical "
              f"to the reference on {same_rounds}/{len(items)}; speedup "
              f"{rounds_speedup:.1f}x per question (warm) beside {speedup:.1f}x full-matrix")
        print(f"    = per pair {pairs / warm / (reference.calls / ref_time):.1f}x faster, times "
              f"{reference.calls / pairs:.2f} (the reference's {reference.calls / len(items):.1f} "
              f"calls per question against our {pairs / len(items):.1f} pairs: its loop skips "
              f"answers already clustered, {equivalent:.0%} of answer pairs are equivalent here, "
              f"{clusters:.1f} clusters per question; ours labels every ordered pair of distinct "
              f"answers for the M x M matrix)")

        # ---- (b) raw kernel: identical pairs, identical padded batches
        uniques = [entailment.unique_strings(it.texts) for it in items]
        where = entailment.labelled_pairs(uniques)     # the pairs our kernel labelled in (a)
        qs = [items[k].question for k, _, _ in where]
        ps = [uniques[k][0][i] for k, i, _ in where]
        hs = [uniques[k][0][j] for k, _, j in where]
        (ids, types), tokenize = timed(lambda: backend.encode(qs, ps, hs), repeats)
        n_raw = _RAW_PAIRS.value or (64 if quick else 512)
        picked, arrays = sides.raw_batches(backend, ids, types, n_raw)
        sub_ids = [ids[i] for i in picked]
        ours_raw, torch_raw = sides.raw_kernel_sides(backend, torch_model, arrays)

        ours_raw()  # compile
        _, ours_t = timed(ours_raw, repeats)
        _, torch_t = timed(torch_raw, repeats)
        rows = sum(a[0].shape[0] for a in arrays)
        ratio = torch_t / ours_t
        print(f"(b) {len(sub_ids)} pairs in {len(arrays)} batches of {backend.batch_size} "
              f"(lengths {sorted({a[0].shape[1] for a in arrays})}, {rows} rows incl. "
              f"padding rows): ours {len(sub_ids) / ours_t:.1f} pairs/s, transformers "
              f"PyTorch batched {len(sub_ids) / torch_t:.1f} pairs/s -> {ratio:.2f}x")
        # the embedding tables are lookups (no FLOPs); every other weight is a matmul's
        matmul_params = sum(p.numel() for name, p in torch_model.named_parameters()
                            if "embeddings" not in name)
        flops = yardstick.flops_per_token(matmul_params, "forward") * sum(
            a[0].size for a in arrays)
        print(f"    yardstick: {matmul_params / 1e6:.1f}M matmul parameters, 2 FLOPs each "
              f"per token slot: ours {yardstick.share_of_peak(flops, ours_t, stick.peak)}, "
              f"torch {yardstick.share_of_peak(flops, torch_t, stick.peak)}")
        # where our time goes in (a): the forward passes, on padded token slots
        batches = backend.batches(ids)
        padded = sum(length * backend.rows(len(chunk)) for chunk, length in batches)
        real = sum(len(x) for x in ids)
        print(f"    ours (a): {len(batches)} forward batches; token slots: {real} real of "
              f"{padded} computed ({real / padded:.0%} used); tokenize {tokenize:.2f}s; "
              f"clustering and estimators are one small jitted call")
        print(json.dumps(dict(speedup_warm=round(speedup, 2), raw_ratio=round(ratio, 2),
                              rounds_speedup_warm=round(rounds_speedup, 2), quick=quick,
                              questions=len(items), pairs_after_dedup=pairs,
                              pairs_rounds=rounds_pairs, reference_calls=reference.calls)))
    print(f"speedup_vs_reference_loop={speedup:.2f} raw_pairs_ratio_vs_torch_batched={ratio:.2f}"
          f" rounds_speedup_vs_reference_loop={rounds_speedup:.2f}")
    print(watch.stop().verdict())


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
