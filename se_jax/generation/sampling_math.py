"""The per-step sampling math of the decode loop: pure, jittable functions over arrays.

    tokens, logprobs = sample_step(logits, keys, temperature, top_k=0, top_p=1.0)

- `temperature` is per row, so a T=0.1 "most likely" answer and T=1 samples share a step;
  rows with temperature 0 take the argmax (greedy).
- top-k / top-p (nucleus) restrict the support after temperature scaling, as Hugging Face
  `generate` does (temperature, then top-k, then top-p). Both are static. With top_k=0 and
  top_p=1 nothing is sorted or searched; top-k uses `lax.top_k`; top-p alone finds its
  probability cut by bisection on the float bits (32 masked sums: no vocabulary-wide sort,
  which would dominate a CPU decode step); top-p after top-k works inside the k best.
- The returned log-probability of each drawn token is under the model at T=1, unfiltered
  (log_softmax of the raw logits): the probability the entropy estimators need.

Drawing: inverse CDF with one uniform per row (Gumbel-max would need a random number per
vocabulary entry, 49k per row per step). The CDF is taken in two levels, over blocks of
`_BLOCK` tokens and then inside the chosen block, which avoids a 49k-long cumulative sum.
A token outside the allowed set has weight exactly 0 and can never be drawn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_BLOCK = 128  # tokens per block of the two-level inverse CDF


def first_max_index(x: jax.Array) -> jax.Array:
    """int32[R]: argmax over the last axis (first on ties), as two vectorisable reductions
    (XLA's CPU argmax is a slow variadic reduce)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    is_max = x == jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max, iota, x.shape[-1]), axis=-1)


def _nucleus_threshold_bisect(probs: jax.Array, top_p: float) -> jax.Array:
    """float32[R]: the largest t with sum(probs[probs >= t]) >= top_p (exactly: a bisection
    on the bit patterns of non-negative floats, which order like their integers)."""
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)

    def body(_, lo_hi):
        lo, hi = lo_hi                      # invariant: mass(>= lo) >= top_p > mass(>= hi)
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    rows = probs.shape[0]
    lo = jnp.zeros((rows,), jnp.int32)
    hi = jnp.max(bits, axis=-1) + 1
    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def allowed_mask(scaled: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array | None:
    """bool[R, V]: tokens kept by top-k then top-p on temperature-scaled logits [R, V].

    None when neither filter is on. Top-p keeps the smallest set of most likely tokens
    whose probability reaches `top_p` (at least one token; ties at the cut are kept).
    """
    vocab = scaled.shape[-1]
    use_k = 0 < top_k < vocab
    if not use_k and top_p >= 1.0:
        return None
    if not use_k:                                   # top-p alone: bisection, no sort
        probs = jax.nn.softmax(scaled, axis=-1)
        return probs >= _nucleus_threshold_bisect(probs, top_p)[:, None]
    # The barrier stops XLA from turning top_k + "take the k-th" into a full sort.
    best = jax.lax.optimization_barrier(jax.lax.top_k(scaled, top_k)[0])  # [R, k], descending
    threshold = best[:, -1]
    if top_p < 1.0:  # renormalised over the top-k set (HF: TopK then TopP warper)
        probs = jax.nn.softmax(best, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(mass_before < top_p, best, jnp.inf), axis=-1)
    return scaled >= threshold[:, None]


def inverse_cdf_sample(u: jax.Array, weights: jax.Array) -> jax.Array:
    """int32[R]: per row, the token whose cumulative weight first exceeds u * total.

    u: float32[R] in [0, 1); weights: float32[R, V] >= 0 with a positive total. Two levels
    (blocks, then inside the chosen block); rounding can never pick a zero-weight token
    because both choices are clamped to the last block / token with positive weight.
    """
    rows, vocab = weights.shape
    pad = -vocab % _BLOCK
    w = jnp.pad(weights, ((0, 0), (0, pad))).reshape(rows, -1, _BLOCK)  # [R, G, BLOCK]
    block_mass = jnp.sum(w, axis=-1)                                   # [R, G]
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    target = u * block_cdf[:, -1]
    last_block = _last_positive(block_mass)
    block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), last_block)
    before = jnp.where(block > 0, jnp.take_along_axis(
        block_cdf, jnp.maximum(block - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.take_along_axis(w, block[:, None, None], axis=1)[:, 0]  # [R, BLOCK]
    inner_cdf = before[:, None] + jnp.cumsum(inner, axis=-1)
    offset = jnp.minimum(jnp.sum(inner_cdf <= target[:, None], axis=-1), _last_positive(inner))
    return (block * _BLOCK + offset).astype(jnp.int32)


def _last_positive(x: jax.Array) -> jax.Array:
    """int32[R]: index of the last positive entry along the last axis (0 if none)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.max(jnp.where(x > 0, iota, 0), axis=-1)


def sample_step(logits: jax.Array, keys: jax.Array, temperature: jax.Array,
                top_k: int = 0, top_p: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Draw one token per row.

    Args:
      logits: float32[R, V] next-token logits.
      keys: uint32[R, 2] one PRNG key per row (already folded with the step).
      temperature: float32[R]; 0 means greedy (argmax).
      top_k: keep the k most likely tokens (0 = off); static.
      top_p: nucleus mass (1.0 = off); static.
    Returns:
      tokens int32[R], logprobs float32[R] (log-prob of each token at T=1, unfiltered).
    """
    logits = logits.astype(jnp.float32)
    greedy = temperature <= 0.0
    peak = jnp.max(logits, axis=-1, keepdims=True)
    scaled = (logits - peak) / jnp.where(greedy, 1.0, temperature)[:, None]  # max = 0
    allowed = allowed_mask(scaled, top_k, top_p)
    weights = jnp.exp(scaled)
    if allowed is not None:
        weights = jnp.where(allowed, weights, 0.0)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    drawn = inverse_cdf_sample(u, weights)
    tokens = jnp.where(greedy, first_max_index(logits), drawn)
    # log softmax at T=1, reusing the row maximum: picked - peak - log sum exp(logits - peak)
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    log_norm = jnp.log(jnp.sum(jnp.exp(logits - peak), axis=-1))
    return tokens, picked - peak[:, 0] - log_norm


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """float32[...]: log softmax(logits)[token] at T=1. logits [..., V], tokens int[...]."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def row_keys(seed: int | jax.Array, id_hashes: jax.Array, sample_index: jax.Array) -> jax.Array:
    """uint32[R, 2]: key of each answer = fold_in(fold_in(PRNGKey(seed), id_hash), index).

    id_hashes: uint32[R] stable hash of each row's question id; sample_index: int32[R].
    Depends only on (seed, question, sample index), never on the batch the row sits in.
    """
    base = jax.random.PRNGKey(seed)
    per_question = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, id_hashes)
    return jax.vmap(jax.random.fold_in)(per_question, sample_index)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
    """uint32[R, 2]: each row's key for decode step `step` (fold_in(key, step))."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
