"""Projections `x @ w` in the compute dtype with a float32 accumulator, forward and backward.

`nnx.Linear(..., dot_general=dot_accumulate_f32)` uses it. In float32 it is the plain dot.
In bfloat16 it is what a bfloat16 matmul means on every backend (bfloat16 operands and
result, float32 sums), written so that XLA:CPU runs it natively: XLA:CPU only keeps a
bfloat16 dot when asked for a float32 result, and rewrites a bfloat16 -> bfloat16 dot to
convert both operands to float32 first (the weights, on every call). Under autodiff the
same holds for the two backward dots only if their cotangent is bfloat16 too, hence the
custom VJP (measured with `benchmarks/bench_model.py --dtype=bfloat16` and
`benchmarks/bench_training.py --dtype=bfloat16`; docs/log/2026-12-03-bfloat16.md).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _linear_dims(ndim: int) -> tuple:
    """nnx.Linear's contraction: the last axis of x [..., in] with the kernel's first."""
    return ((ndim - 1,), (0,)), ((), ())


def _project(x: jax.Array, w: jax.Array, out_dtype: Any) -> jax.Array:
    y = lax.dot_general(x, w, _linear_dims(x.ndim), preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, w: jax.Array, out_dtype: Any = None) -> jax.Array:
    """x [..., in] @ w [in, out] -> [..., out] in `out_dtype` (default: x's dtype).

    x and w share one dtype; every product sums in float32, and the backward products take
    the cotangent in that dtype too (as torch's autocast does)."""
    return _project(x, w, out_dtype)


def _project_fwd(x, w, out_dtype):
    return _project(x, w, out_dtype), (x, w)


def _project_bwd(out_dtype, residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)
    dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())),
                         preferred_element_type=jnp.float32).astype(x.dtype)
    tokens = tuple(range(x.ndim - 1))
    dw = lax.dot_general(x, g, ((tokens, tokens), ((), ())),
                         preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw


project.defvjp(_project_fwd, _project_bwd)


def dot_accumulate_f32(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                       preferred_element_type=None, out_sharding=None) -> jax.Array:
    """A `dot_general` for `nnx.Linear(dot_general=...)`: `project(lhs, rhs,
    preferred_element_type)`. Only nnx.Linear's own contraction is accepted, at the
    backend's default precision."""
    if dimension_numbers != _linear_dims(lhs.ndim) or out_sharding is not None:
        raise ValueError(f"dot_accumulate_f32 serves nnx.Linear only: got dimension numbers "
                         f"{dimension_numbers}, out_sharding {out_sharding}")
    if precision is not None:
        raise ValueError("dot_accumulate_f32 runs at the backend's default precision")
    return project(lhs, rhs, preferred_element_type)
