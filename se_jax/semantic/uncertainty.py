"""Uncertainty estimators over M sampled answers (natural log), batched over questions.

All functions take per-question arrays with a leading question axis [Q, M] and a validity
mask (padding slots excluded), and return float32[Q]. Definitions follow the reference
(jlko/semantic_uncertainty, uncertainty_measures/semantic_entropy.py):
- discrete semantic entropy: p(c) = |c| / M (`cluster_assignment_entropy`);
- semantic entropy: log p(c) = logsumexp over members of the length-normalised
  log-likelihoods, normalised over all answers (`logsumexp_by_id`, `predictive_entropy_rao`);
- naive predictive entropy: minus the mean length-normalised log-likelihood
  (`predictive_entropy`);
- exact-string entropy (R-Tuning-U): the discrete entropy of identical normalised strings;
- first-token entropy: minus the mean log-probability of the answers' first tokens, a
  Monte-Carlo estimate of the entropy of the first answer token (exact in expectation for
  samples at T=1 without top-k/top-p). Not in the reference: it is the model's uncertainty
  where a fine-tuned model's abstention begins ("I" against the answer's first token).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from se_jax.data.text import normalize_answer

# The uncertainty.jsonl fields of the estimators above and their names in reports.
ESTIMATORS: dict[str, str] = {
    "discrete_semantic_entropy": "discrete SE",
    "semantic_entropy": "likelihood SE",
    "naive_entropy": "naive entropy",
    "exact_entropy": "exact-string entropy",
    "first_token_entropy": "first-token entropy",
}
# The estimators that do not read the equivalence backend's clusters.
BACKEND_FREE: tuple[str, ...] = ("naive_entropy", "exact_entropy", "first_token_entropy")


def _members(ids: jax.Array, valid: jax.Array) -> jax.Array:
    """bool[Q, C=M, M]: member[q, c, j] = answer j is in cluster c (ids are < M)."""
    m = ids.shape[-1]
    return (ids[..., None, :] == jnp.arange(m)[:, None]) & valid[..., None, :]


def _entropy_from_log_probs(log_p: jax.Array, present: jax.Array) -> jax.Array:
    """-sum_c p(c) log p(c) over present clusters; [Q, C] -> [Q]."""
    safe = jnp.where(present, log_p, 0.0)
    return -jnp.sum(jnp.where(present, jnp.exp(safe) * safe, 0.0), axis=-1)


@jax.jit
def cluster_entropy(ids: jax.Array, valid: jax.Array) -> jax.Array:
    """Entropy of cluster frequencies, p(c) = |c| / M. ids int[Q, M], valid bool[Q, M]."""
    counts = _members(ids, valid).sum(-1).astype(jnp.float32)          # [Q, C]
    total = jnp.maximum(valid.sum(-1, keepdims=True), 1).astype(jnp.float32)
    present = counts > 0
    return _entropy_from_log_probs(jnp.log(jnp.where(present, counts, 1.0) / total), present)


@jax.jit
def semantic_entropy(ids: jax.Array, mean_logprob: jax.Array, valid: jax.Array) -> jax.Array:
    """Likelihood-weighted semantic entropy. mean_logprob float[Q, M]: per-answer
    length-normalised log-likelihood (mean token log-probability)."""
    lp = jnp.where(valid, mean_logprob.astype(jnp.float32), -jnp.inf)
    lp = lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)            # normalise over answers
    members = _members(ids, valid)                                    # [Q, C, M]
    log_pc = jax.nn.logsumexp(jnp.where(members, lp[..., None, :], -jnp.inf), axis=-1)
    return _entropy_from_log_probs(log_pc, members.any(-1))


@jax.jit
def naive_entropy(mean_logprob: jax.Array, valid: jax.Array) -> jax.Array:
    """Naive predictive entropy: -mean over answers of the length-normalised log-likelihood.
    Given each answer's first-token log-probability instead, the first-token entropy."""
    total = jnp.maximum(valid.sum(-1), 1)
    return -jnp.sum(jnp.where(valid, mean_logprob, 0.0), axis=-1) / total


def exact_string_ids(answers: Sequence[str]) -> np.ndarray:
    """int32[M]: the same id for answers equal after SQuAD normalisation (first-seen order)."""
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(normalize_answer(a), len(seen)) for a in answers], np.int32)
