"""The programs the benchmarks time, on both sides (ours and PyTorch's), flag-free: each
`bench_*.py` and `accelerator_report.py` call these same functions, so their figures are
of the same programs and agree. (The benchmarks define absl flags at import; this module
defines none, so one process can import every program.)

    model (bench_model):       truncate_layers, prefill_decode_ours, prefill_decode_torch,
                               torch_twin, interleaved_medians
    sampler (bench_sampling):  prompt_ids, our_sampler_run, time_breakdown, torch_sampler
    judge (bench_judge):       judge_workload, torch_scores
    NLI (bench_entailment):    build_random_nli, raw_batches, raw_kernel_sides
The LoRA train step of both sides is benchmarks/bench_lora.py.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks import yardstick

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- model

def interleaved_medians(fns: dict, iters: int) -> dict[str, float]:
    """Median seconds of each timed callable, run alternately so that both sides see the same
    machine load (the callables return their own measured seconds)."""
    times = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def truncate_layers(model, n: int):
    """Keep the first n layers (a matched smaller config with the same weights)."""
    from flax import nnx
    if 0 < n < len(model.layers):
        model.layers = nnx.List(list(model.layers)[:n])
        model.config = dataclasses.replace(model.config, num_hidden_layers=n)
    return model


def prefill_decode_ours(model, tokens, iters: int, *, prefill: bool = True) -> dict:
    """Our compiled forward as prefill over int32[B, T] into an empty cache and as one
    decode step against a cache holding T tokens (cache donated). Returns the compile
    seconds of both, `prefill`/`decode` callables that return their own wall seconds (one
    warm-up call already made), and XLA's cost analysis of each. prefill=False: the decode
    step alone, against a cache of the same length left unfilled (the same work: every
    step reads the cache's T positions whatever they hold), so that a large batch's decode
    is measured without compiling and running its prefill."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from se_jax.models.llama import KVCache

    b, t = tokens.shape
    graphdef, state = nnx.split(model)

    def forward(state, tokens, positions, cache):
        return nnx.merge(graphdef, state)(tokens, positions, cache)

    step = jax.jit(forward, donate_argnums=3)
    new_cache = lambda: KVCache.init(model.config, b, t + iters + 2)  # noqa: E731
    tok, pos = jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    one_tok, one_pos = tok[:, :1], jnp.full((b, 1), t, jnp.int32)
    start = time.perf_counter()
    prefill_cost = None
    if prefill:
        compiled_prefill = step.lower(state, tok, pos, new_cache()).compile()
        prefill_cost = compiled_prefill.cost_analysis()
    prefill_compile = time.perf_counter() - start
    decode = step.lower(state, one_tok, one_pos, new_cache()).compile()
    compile_s = time.perf_counter() - start

    if prefill:
        def run_prefill() -> float:
            cache = new_cache()
            jax.block_until_ready(cache)
            return yardstick.wall_seconds(
                lambda: jax.block_until_ready(compiled_prefill(state, tok, pos, cache)))

        _, cache = compiled_prefill(state, tok, pos, new_cache())
    else:
        run_prefill, cache = None, new_cache()
    box = [cache]

    def run_decode() -> float:
        def step():
            logits, box[0] = decode(state, one_tok, one_pos, box[0])
            jax.block_until_ready(logits)
        return yardstick.wall_seconds(step)

    if prefill:
        run_prefill()   # warm-up
    run_decode()
    return dict(compile_s=compile_s, prefill_compile_s=prefill_compile,
                decode_compile_s=compile_s - prefill_compile, prefill=run_prefill,
                decode=run_decode, prefill_cost=prefill_cost,
                decode_cost=decode.cost_analysis())


def torch_twin(model, dtype: str | None = None):
    """transformers' LlamaForCausalLM holding our model's weights (in `dtype`, default the
    model's param_dtype; eval mode, tied head)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig as HFLlamaConfig
    from se_jax.models.hf_checkpoint import hf_config_dict
    from se_jax.models.loading import to_hf_state_dict

    dtype = getattr(torch, dtype or model.config.param_dtype)
    hf = AutoModelForCausalLM.from_config(HFLlamaConfig(**hf_config_dict(model.config)),
                                          dtype=dtype)
    state = {k: torch.from_numpy(np.asarray(v, np.float32)).to(dtype)
             for k, v in to_hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    hf.tie_weights()
    return hf.eval()


def fastest_torch_threads(trial: Callable[[], float]) -> int:
    """Torch's OpenMP threads spin-wait: on a loaded machine 1 thread can beat all cores many
    times over. Set (and return) whichever of 1 and the default is faster on `trial` (which
    returns seconds; ours uses XLA's default)."""
    import torch
    trials = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        trials[threads] = trial()
    torch.set_num_threads(min(trials, key=trials.get))
    return torch.get_num_threads()


def prefill_decode_torch(model, tokens, iters: int, *, pick_threads: bool = True) -> dict:
    """transformers' forward on the same weights as prefill (int32[B, T]) and as one decode
    step against its DynamicCache; callables return their own wall seconds."""
    import torch

    hf = torch_twin(model)
    ids = torch.from_numpy(tokens.astype("int64"))
    with torch.inference_mode():
        cache = hf(ids, use_cache=True).past_key_values
    nxt = ids[:, :1]

    @torch.inference_mode()
    def run_prefill() -> float:
        return yardstick.wall_seconds(lambda: hf(ids, use_cache=True))

    @torch.inference_mode()
    def run_decode() -> float:
        # DynamicCache grows in place: the context ends up T + iters long, as ours does.
        return yardstick.wall_seconds(lambda: hf(nxt, past_key_values=cache, use_cache=True))

    def trial() -> float:
        run_prefill(), run_decode()  # warm-up
        return (statistics.median(run_prefill() for _ in range(2))
                + 8 * statistics.median(run_decode() for _ in range(3)))

    if pick_threads:
        fastest_torch_threads(trial)
    else:
        run_prefill(), run_decode()
    return dict(prefill=run_prefill, decode=run_decode, attn=hf.config._attn_implementation,
                threads=torch.get_num_threads())


# ----------------------------------------------------------------------------- sampler

QUESTIONS = ("What is the capital of France?", "Who wrote the novel Pride and Prejudice?",
             "What is the boiling point of water in Celsius?",
             "Which planet is known as the Red Planet?", "Who painted the Mona Lisa?",
             "What is the largest ocean on Earth?", "In which year did World War II end?",
             "What is the chemical symbol for gold?", "Who developed the theory of relativity?",
             "What is the tallest mountain in the world?", "How many continents are there?",
             "What language is spoken in Brazil?", "Who was the first president of the USA?",
             "What is the square root of 144?", "Which gas do plants absorb?",
             "What is the currency of Japan?")
# Prompts padded to a multiple of 16 tokens (transformers pads to the longest prompt).
BUCKETS = tuple(range(16, 513, 16))


def questions(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")
            for i in range(n)]


def prompt_ids(tokenizer, n: int) -> list[list[int]]:
    """The chat prompts of the first `n` benchmark questions, as token ids."""
    from se_jax.data import prompts
    return [prompts.encode_prompt(tokenizer, prompts.format_prompt(tokenizer, q))
            for q in questions(n)]


def our_sampler_run(model, tokenizer, ids, m: int, new: int, mesh=None,
                    natural: bool = False):
    """One call of the sample stage's sampler: M answers per prompt at T=1, forced to `new`
    tokens (no EOS, no stop strings) unless `natural`."""
    from se_jax.generation import sampling
    from se_jax.generation import stopping
    stop_strings = stopping.DEFAULT_STOP_STRINGS if natural else ()
    eos = stopping.eos_ids(tokenizer) if natural else ()
    tables = stopping.stop_tables(tokenizer, stop_strings, eos, model.config.vocab_size)
    return sampling.decode_batch(model, ids, [str(i) for i in range(len(ids))],
                                 temperatures=(1.0,) * m, batch_size=len(ids),
                                 max_new_tokens=new, stop=tables, seed=0, buckets=BUCKETS,
                                 mesh=mesh)


def time_breakdown(model, tokenizer, ids, m: int, new: int) -> dict[str, float]:
    """Seconds of one run of ours split into prefill, decode forwards, sampling maths and
    host work, measured: the module's jitted `_prefill` and `_decode` are wrapped to wait for
    their results and time themselves for this run; the sampling maths is the jitted
    per-step sampling (keys, 49k-vocabulary softmax, inverse CDF, T=1 log-prob) on the same
    [rows, vocab] shapes, timed alone, times the decode's steps."""
    import jax
    import jax.numpy as jnp
    from se_jax.generation import sampling
    from se_jax.generation import sampling_math

    seconds = {"prefill": 0.0, "decode": 0.0}
    originals = {"prefill": sampling._prefill, "decode": sampling._decode}

    def timed_program(name):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(originals[name](*args, **kwargs))
            seconds[name] += time.perf_counter() - start
            return out
        return run

    sampling._prefill, sampling._decode = timed_program("prefill"), timed_program("decode")
    try:
        start = time.perf_counter()
        raw = our_sampler_run(model, tokenizer, ids, m, new)
        total = time.perf_counter() - start
    finally:
        sampling._prefill, sampling._decode = originals["prefill"], originals["decode"]

    rows, vocab = len(ids) * m, model.config.vocab_size
    logits = jax.random.normal(jax.random.key(0), (rows, vocab), jnp.float32) * 4
    keys = sampling_math.row_keys(0, jnp.arange(rows, dtype=jnp.uint32),
                                  jnp.zeros((rows,), jnp.int32))
    temperature = jnp.ones((rows,), jnp.float32)
    maths = jax.jit(lambda lg, k, step: sampling_math.sample_step(
        lg, sampling_math.step_keys(k, step), temperature))
    per_step = yardstick.median_seconds(
        lambda: jax.block_until_ready(maths(logits, keys, np.int32(1))), 5)
    sampling_s = per_step * raw.steps
    return dict(total=total, prefill=seconds["prefill"],
                decode_forward=seconds["decode"] - sampling_s, sampling_maths=sampling_s,
                host=total - seconds["prefill"] - seconds["decode"], steps=raw.steps)


def torch_sampler(hf, ids: Sequence[Sequence[int]], m: int, pad: int):
    """transformers `generate` over the left-padded prompts `ids`, M sequences each, T=1 with
    top-k and top-p off; returns (run(num_new, forced=True) -> sequences, prompt width)."""
    import torch
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])

    def run(num_new: int, forced: bool = True):
        with torch.inference_mode():
            return hf.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, num_return_sequences=m, max_new_tokens=num_new,
                min_new_tokens=num_new if forced else 0, pad_token_id=pad)

    return run, width


# ----------------------------------------------------------------------------- judge

def judge_workload(n: int) -> list[dict[str, str]]:
    """n (question, a, b) items from NQ-open dev (../shared/data), deterministic."""
    from se_jax.io.stage_io import read_jsonl
    rows = read_jsonl(REPO.parent / "shared" / "data" / "nq_open" / "NQ-open.dev.jsonl")
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        row, other = rows[i % len(rows)], rows[(i * 7 + 3) % len(rows)]
        gold = row["answer"][0]
        pool = list(dict.fromkeys(row["answer"] + [f"I think it is {gold}.",
                                                   other["answer"][0]]))
        a, b = rng.choice(len(pool), 2, replace=len(pool) < 2)
        items.append(dict(question=row["question"], a=pool[a], b=pool[b]))
    return items


def torch_scores(hf, full_ids, label_ids, owner, batch_size, pad_id):
    """[N, 3] label log-probs from batched, left-padded PyTorch forwards."""
    import torch
    out = np.empty((len(full_ids), int(max(owner)) + 1), np.float32)
    order = np.argsort([len(x) for x in full_ids], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            t = max(len(full_ids[i]) for i in chunk)
            ids = torch.full((len(chunk), t), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), t), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, t - len(full_ids[i]):] = torch.tensor(full_ids[i])
                mask[r, t - len(full_ids[i]):] = 1
            logits = hf(input_ids=ids, attention_mask=mask).logits[:, -1].float()
            lp = torch.log_softmax(logits, -1)[:, label_ids].numpy()
            for k in range(out.shape[1]):
                out[chunk, k] = np.logaddexp.reduce(lp[:, np.asarray(owner) == k], axis=1)
    return out


# ----------------------------------------------------------------------------- NLI

def build_random_nli(out_dir: str, sentences: Sequence[str], spec: dict | str,
                     vocab_size: int = 8000):
    """(tokenizer, torch model, our NliModel): a random DeBERTa of `spec`
    (tools/random_nli.py; "base_v3" its BASE_V3, "tiny" its TINY["v3"]) with a BPE tokenizer trained on `sentences`, its classifier
    calibrated on a few of their pairs, saved to `out_dir` and loaded back by se_jax."""
    from tools import random_nli
    from se_jax.models.deberta_loading import load_nli
    if isinstance(spec, str):
        spec = {"base_v3": random_nli.BASE_V3, "tiny": random_nli.TINY["v3"]}[spec]
    tokenizer = random_nli.train_tokenizer(sentences, vocab_size=vocab_size)
    torch_model = random_nli.build_torch_model(spec, len(tokenizer), seed=0)
    random_nli.calibrate_classifier(torch_model, tokenizer,
                                    list(sentences)[::max(1, len(sentences) // 8)][:8])
    torch_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer, torch_model, load_nli(out_dir)


def raw_batches(backend, ids, types, n_raw: int) -> tuple[list[int], list[tuple]]:
    """Whole, full batches of `backend.batches(ids)` (all its batches where none is full),
    spread evenly over their padded lengths, about `n_raw` pairs: (the chosen pairs' indices, padded (tokens, mask, types)
    arrays, one per batch)."""
    from se_jax.semantic import entailment
    batches = backend.batches(ids)
    full = [b for b in batches if len(b[0]) == backend.batch_size] or batches
    want = max(1, min(len(full), -(-n_raw // backend.batch_size)))
    chosen = [full[i] for i in ((np.arange(want) + 0.5) * len(full) / want).astype(int)]
    picked = [i for chunk, _ in chosen for i in chunk]
    arrays = [entailment.pad_pairs([ids[i] for i in chunk],
                                   None if types is None else [types[i] for i in chunk],
                                   backend.batch_size, length, backend.pad_id)
              for chunk, length in chosen]
    return picked, arrays


def raw_kernel_sides(backend, torch_model, arrays) -> tuple[Callable, Callable]:
    """(ours, torch): each classifies every padded batch of `arrays` and returns the
    labels; ours our jitted forward, torch transformers' PyTorch forward."""
    import torch

    def ours():
        outs = [backend._classify(backend.state, t, m, ty) for t, m, ty in arrays]
        return [np.asarray(o) for o in outs]

    def theirs():
        with torch.no_grad():
            return [torch_model(input_ids=torch.from_numpy(t).long(),
                                attention_mask=torch.from_numpy(m).long(),
                                token_type_ids=torch.from_numpy(ty).long()
                                ).logits.argmax(-1).numpy() for t, m, ty in arrays]

    return ours, theirs
