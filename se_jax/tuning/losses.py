"""SFT losses over a large vocabulary: cross-entropy plus the self-distillation KL.

    loss = CE + kd_weight * T^2 * KL(p_teacher(T) || p_student(T)), T the distillation temperature

CE is the `loss_mask`-weighted mean over the supervised tokens (weights 1: the token mean;
`sft_data.make_batch(per_example=True)`: each row's mean, averaged over rows), the KL the mean
over every non-padding position (`valid`), token level (Kaplan et al. 2026). The logits are never built for the
whole batch at once: the hidden states are flattened and cut into chunks of `chunk` tokens,
and each chunk's logits are computed, reduced and (in the backward pass) recomputed by a
rematerialised scan body, so peak memory holds one chunk of [chunk, V] logits instead of
[B, T, V] (V = 49k for SmolLM2). A batch of at most `chunk` tokens takes a single direct pass.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

# The model's output head, `model.logits`: hidden [B, T, E] -> float32 logits [B, T, V].
LogitsFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """kd_weight = 0 turns self-distillation off; temperature softens both distributions
    (not the entropy threshold tau of the labels)."""
    kd_weight: float = 0.0
    temperature: float = 0.5
    chunk: int = 1024


def _chunk_sums(logits_fn: LogitsFn, teacher_fn: LogitsFn | None, temperature: float,
                h: jax.Array, h_teacher: jax.Array | None, targets: jax.Array,
                loss_mask: jax.Array, valid: jax.Array) -> jax.Array:
    """Sums over one chunk: [sum CE * mask, sum KL * valid]. h: [C, E]; targets: int32[C]."""
    logits = logits_fn(h[None])[0]                                   # [C, V] f32
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    ce = jnp.sum((lse - target_logit) * loss_mask)
    if teacher_fn is None:
        return jnp.stack([ce, jnp.zeros_like(ce)])
    teacher_logp = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_fn(h_teacher[None])[0]) / temperature, axis=-1)
    student_logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1)
    return jnp.stack([ce, jnp.sum(kl * valid)])


def sft_loss(logits_fn: LogitsFn, hidden: jax.Array, targets: jax.Array,
             loss_mask: jax.Array, valid: jax.Array, config: LossConfig,
             teacher_fn: LogitsFn | None = None,
             teacher_hidden: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """The SFT loss of one batch and its parts.

    Args:
      logits_fn: the student's output head (`model.logits`).
      hidden: the student's final hidden states [B, T, E].
      targets: int32[B, T], the next token at each position.
      loss_mask: float32[B, T], the CE weight of each position: 0 where the next token is
        not supervised, else 1 (or 1 / the row's supervised tokens, per example).
      valid: float32[B, T], 1 at non-padding positions that have a next token (KL).
      teacher_fn, teacher_hidden: the frozen teacher's head and hidden states; needed when
        config.kd_weight > 0.
    Returns:
      (loss, {"ce", "kl", "tokens"}); "tokens" is the sum of `loss_mask` (the supervised
      tokens, or the rows with per-example weights).
    """
    use_kd = config.kd_weight > 0
    if use_kd and (teacher_fn is None or teacher_hidden is None):
        raise ValueError("kd_weight > 0 needs the teacher's logits_fn and hidden states")
    e = hidden.shape[-1]
    n = targets.size
    flat = [hidden.reshape(n, e), targets.reshape(n), loss_mask.reshape(n).astype(jnp.float32),
            valid.reshape(n).astype(jnp.float32)]
    flat_teacher = teacher_hidden.reshape(n, e) if use_kd else None
    teacher = teacher_fn if use_kd else None

    if n <= config.chunk:
        sums = _chunk_sums(logits_fn, teacher, config.temperature, flat[0], flat_teacher, *flat[1:])
    else:
        chunks = -(-n // config.chunk)
        pad = chunks * config.chunk - n

        def split(x):  # [N, ...] -> [chunks, chunk, ...]; padded tokens have zero masks
            x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
            return x.reshape(chunks, config.chunk, *x.shape[1:])

        xs = [split(x) for x in flat] + ([split(flat_teacher)] if use_kd else [])

        @jax.checkpoint
        def body(carry, x):
            h, tgt, lm, vd = x[:4]
            ht = x[4] if use_kd else None
            return carry + _chunk_sums(logits_fn, teacher, config.temperature, h, ht, tgt, lm, vd), None

        sums, _ = jax.lax.scan(body, jnp.zeros(2, jnp.float32), xs)
    tokens = jnp.sum(flat[2])
    ce = sums[0] / jnp.maximum(tokens, 1.0)
    kl = sums[1] / jnp.maximum(jnp.sum(flat[3]), 1.0)
    loss = ce + config.kd_weight * config.temperature ** 2 * kl if use_kd else ce
    return loss, {"ce": ce, "kl": kl, "tokens": tokens}
