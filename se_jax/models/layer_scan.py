"""Run a list of structurally identical NNX layers as one `jax.lax.scan` (compile one body).

The layers stay stored one by one (Hugging Face / PEFT names, per-layer sharding, checkpoints
untouched); only inside the traced forward are their states stacked on a leading layer axis,
so XLA compiles the layer body once instead of once per layer (MaxText's `scan_layers`,
without changing storage). The stacking copies the layer weights once per call.

    graphdef = stack_graphdef(layers)         # None: the layers differ, loop in Python
    carry = scan_layers(layers, graphdef, body, carry)   # body(layer, index, carry) -> carry

RNG state (LoRA dropout) rides along: each layer's slice carries its own key and count, and
the advanced counts are written back to the layers, so masks equal the Python loop's.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def stack_graphdef(layers: Sequence[nnx.Module]) -> Any | None:
    """The shared graphdef of `layers` split as (params, rest), or None when they differ
    (e.g. LoRA on some layers only) or there are fewer than two."""
    if len(layers) < 2:
        return None
    graphdefs = [nnx.split(layer, nnx.Param, ...)[0] for layer in layers]
    first = graphdefs[0]
    return first if all(g == first for g in graphdefs[1:]) else None


def _draws_randomness(layer: nnx.Module) -> bool:
    """True when a call advances RNG state (an active dropout), which must be written back."""
    return any(isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic
               for _, m in nnx.iter_graph(layer))


def _stack(states: Sequence[nnx.State]) -> nnx.State:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def stack_states(layers: Sequence[nnx.Module]) -> tuple[nnx.State, nnx.State]:
    """(params, rest) of `layers`, each leaf stacked to [L, ...]: the scan's operand (a copy
    of the layer weights)."""
    return (_stack([nnx.state(layer, nnx.Param) for layer in layers]),
            _stack([nnx.split(layer, nnx.Param, ...)[2] for layer in layers]))


def scan_layers(layers: Sequence[nnx.Module], graphdef: Any,
                body: Callable[[nnx.Module, jax.Array, Any], Any], carry: Any) -> Any:
    """carry <- body(layers[i], i, carry) for i = 0..L-1, as one scan; i is a traced int32.

    `graphdef` comes from `stack_graphdef(layers)`. `body` must treat the layer as
    read-only apart from RNG draws (those are written back to `layers`).
    """
    params, rest = stack_states(layers)
    write_back = _draws_randomness(layers[0])

    def step(carry, xs):
        p, r, index = xs
        layer = nnx.merge(graphdef, p, r)
        carry = body(layer, index, carry)
        return carry, (nnx.split(layer, nnx.Param, ...)[2] if write_back else None)

    index = jnp.arange(len(layers), dtype=jnp.int32)
    carry, new_rest = jax.lax.scan(step, carry, (params, rest, index))
    if write_back:
        for i, layer in enumerate(layers):
            nnx.update(layer, jax.tree.map(lambda a, i=i: a[i], new_rest))
    return carry
