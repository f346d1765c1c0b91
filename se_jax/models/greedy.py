"""Reference greedy decoding: the simplest correct use of the decoder and its KV cache.

Used by the smoke run, the parity tests and the multi-process check; the production sampler
(M samples per prompt, temperatures, log-probs) is `se_jax/generation/sampling.py`.

Prompts are left-padded (positions -1), prefilled once, then decoded one token per step by
one compiled function with the cache donated. With a mesh, inputs are global arrays split on
the batch axes and the cache is created sharded, so the same code runs on one device, 8
devices, or many processes (every process passes the same prompts).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from se_jax.parallel.mesh import ShardingRules, batch_sharding, batch_shards
from se_jax.models.llama import KVCache, Llama
from se_jax.models.padding import left_pad


def _greedy_step(graphdef, state, tokens, positions, cache):
    """One forward; the argmax of the last position: (int32[B, 1], cache)."""
    logits, cache = nnx.merge(graphdef, state)(tokens, positions, cache)
    return jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32), cache


@dataclasses.dataclass
class GreedyResult:
    tokens: np.ndarray      # int32[B, N] generated ids (after EOS: whatever followed, see `lengths`)
    lengths: np.ndarray     # int32[B] tokens up to and including the first EOS
    compile_s: float        # compiling the prefill and decode functions
    prefill_s: float        # prompt forward (compiled, synchronised)
    decode_s: float         # all decode steps
    decode_steps: int

    def texts(self, tokenizer) -> list[str]:
        return [tokenizer.decode(t[:n], skip_special_tokens=True)
                for t, n in zip(self.tokens, self.lengths)]


def greedy_generate(model: Llama, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                    eos_ids: Sequence[int] = (), mesh: Mesh | None = None,
                    rules: ShardingRules | None = None, stop_at_eos: bool = True) -> GreedyResult:
    """Greedy continuations of `prompts` (token ids). Stops early once every row hit EOS."""
    rules = rules or ShardingRules()
    n = len(prompts)
    # Rows past n (all padding) fill the last batch shard.
    tokens, positions = left_pad(prompts, max(map(len, prompts)),
                                 n + -n % batch_shards(mesh, rules))
    b, t = tokens.shape
    graphdef, state = nnx.split(model)
    if mesh is None:
        cache = KVCache.init(model.config, b, t + max_new_tokens)
        put = jnp.asarray
        out_sharding = None
    else:
        cache = KVCache.init_sharded(model.config, b, t + max_new_tokens, mesh, rules)
        in_sharding = batch_sharding(mesh, rules)
        put = lambda x: jax.make_array_from_callback(x.shape, in_sharding, lambda i: x[i])  # noqa: E731
        out_sharding = NamedSharding(mesh, PartitionSpec())  # every process reads the tokens
    step = jax.jit(_greedy_step, static_argnums=0, donate_argnums=4,
                   out_shardings=None if mesh is None else (out_sharding, None))

    start = time.perf_counter()
    prefill = step.lower(graphdef, state, put(tokens), put(positions), cache).compile()
    one = np.zeros((b, 1), np.int32)
    decode = step.lower(graphdef, state, put(one), put(one), cache).compile()
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    next_token, cache = prefill(state, put(tokens), put(positions), cache)
    out = [np.asarray(next_token)]
    prefill_s = time.perf_counter() - start
    eos = np.isin(out[-1][:, 0], list(eos_ids))
    eos[n:] = True
    last = positions[:, -1:].copy()
    start = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        if stop_at_eos and eos.all():
            break
        last += 1
        next_token, cache = decode(state, put(out[-1]), put(last), cache)
        out.append(np.asarray(next_token))
        eos |= np.isin(out[-1][:, 0], list(eos_ids))
    decode_s = time.perf_counter() - start
    generated = np.concatenate(out, axis=1)[:n]
    is_eos = np.isin(generated, list(eos_ids))
    lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, generated.shape[1]).astype(np.int32)
    return GreedyResult(generated, lengths, compile_s, prefill_s, decode_s, len(out) - 1)
