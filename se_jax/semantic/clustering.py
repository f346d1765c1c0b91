"""Semantic ids from an equivalence matrix, by the reference's greedy rule, jitted.

The rule (jlko/semantic_uncertainty, `get_semantic_ids`): visit answers in order; an answer
with no id yet opens cluster `next_id`, and every LATER answer equivalent to it gets
`next_id`, overwriting an id it may already have; then next_id += 1. Equivalence is not
transitive, so the order-dependent rule *defines* the result; we reproduce it exactly
(including the overwrite), so semantic ids equal the reference's on any matrix.

`rule="unassigned"` is the variant where a cluster claims only answers with no id yet
(the rule as often described in words); it differs from the reference only on
non-transitive matrices. The default is the reference's code.

One lax.fori_loop over the M answers per question, vmapped over questions: no Python per
question, one compile per (questions, M) shape.
"""
from __future__ import annotations


import functools

import jax
import jax.numpy as jnp
from jax import lax

RULES = ("reference", "unassigned")


def _greedy_ids(equivalent: jax.Array, valid: jax.Array, overwrite: bool) -> jax.Array:
    """bool[M, M] (row i: which answers i is equivalent to), bool[M] -> int32[M], -1 if invalid.

    overwrite: a new cluster also claims later answers that already have an id (reference).
    """
    m = equivalent.shape[0]
    later = jnp.triu(equivalent & valid[None, :] & valid[:, None], k=1)  # only j > i matters

    def visit(i, carry):
        ids, next_id = carry
        opens = (ids[i] < 0) & valid[i]
        claim = opens & later[i] if overwrite else opens & later[i] & (ids < 0)
        ids = jnp.where(claim, next_id, ids)                 # claim later equivalents
        ids = ids.at[i].set(jnp.where(opens, next_id, ids[i]))
        return ids, next_id + opens.astype(jnp.int32)

    ids, _ = lax.fori_loop(0, m, visit, (jnp.full((m,), -1, jnp.int32), jnp.int32(0)))
    return ids


@functools.partial(jax.jit, static_argnames="rule")
def semantic_ids(equivalent: jax.Array, valid: jax.Array | None = None,
                 rule: str = "reference") -> jax.Array:
    """Greedy semantic ids for a batch of questions.

    Args:
      equivalent: bool[Q, M, M]; equivalent[q, i, j] says answers i and j of question q mean
        the same (both entailment directions already combined).
      valid: bool[Q, M] (default all True); invalid slots (padding for questions with fewer
        answers) join no cluster and get id -1.
      rule: "reference" (jlko/semantic_uncertainty's loop, later ids overwritten) or
        "unassigned" (a cluster claims only answers with no id yet).
    Returns:
      int32[Q, M]: cluster ids 0, 1, ... in order of first appearance.
    """
    if rule not in RULES:
        raise ValueError(f"clustering rule {rule!r} is not one of {RULES}")
    if valid is None:
        valid = jnp.ones(equivalent.shape[:2], bool)
    greedy = functools.partial(_greedy_ids, overwrite=rule == "reference")
    return jax.vmap(greedy)(equivalent.astype(bool), valid.astype(bool))
