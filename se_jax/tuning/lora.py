"""LoRA adapters on a decoder's projections, and which parameters a run trains.

`add_lora(model, spec, rngs)` replaces each targeted `nnx.Linear` (matched by its path, e.g.
"layers.3.self_attn.q_proj") in place with a `LoRALinear`:

    y = base_layer(x) + (alpha / r) * (dropout(x) @ lora_a @ lora_b)

as PEFT computes it (lora_a [in, r], lora_b [r, out] are `nnx.LoRAParam`, i.e. PEFT's
lora_A.weight.T and lora_B.weight.T; lora_b starts at zero, so the wrapped model starts equal
to the base). `trainable_filter(mode)` says which variables the optimizer updates and the
checkpoints store: only the `nnx.LoRAParam`s in LoRA mode; in full fine-tuning every
`nnx.Param`, or only the attention or only the MLP ones (Kaplan et al. 2026).
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from se_jax.parallel.mesh import shard_model

TRAIN_MODES = ("lora", "full", "attention", "mlp")


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """Which linears get adapters and how. `target_modules`: module names matched against
    the last path component (PEFT's list form, e.g. ("q_proj", "v_proj")), or one regular
    expression fully matched against the dotted path (PEFT's string form). `top_layers`
    > 0 keeps only the linears of the top that many decoder layers (PEFT's
    `layers_to_transform`, counted from the top): the backward pass then stops at the
    lowest adapted layer, so a step costs a forward pass plus that fraction of a backward."""
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    top_layers: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, path: str, num_layers: int) -> bool:
        """Whether the linear at dotted `path` gets an adapter, in a decoder of
        `num_layers` layers (`top_layers` counts from its top)."""
        if self.top_layers:
            layer = _LAYER_INDEX.match(path)
            if layer is None or int(layer.group(1)) < num_layers - self.top_layers:
                return False
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, path) is not None
        return path.rsplit(".", 1)[-1] in self.target_modules


_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def _peft_a_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """PEFT's default A init: kaiming_uniform(a=sqrt(5)) on [r, in] = U(+-1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRALinear(nnx.Module):
    """A frozen `nnx.Linear` plus a scaled, dropout-fed `nnx.LoRA` branch (see module doc).

    x: [..., in] -> [..., out]. The attribute is `base_layer`, as in PEFT, so the export maps
    names 1:1.
    """

    def __init__(self, base_layer: nnx.Linear, spec: LoRASpec, *, rngs: nnx.Rngs):
        self.base_layer = base_layer
        self.scale = spec.scale
        axes = getattr(base_layer.kernel, "logical_axes", None) or (None, None)
        self.lora = nnx.LoRA(
            base_layer.in_features, spec.rank, base_layer.out_features,
            # Adapters and their optimizer state stay float32 under bfloat16 weights (PEFT's
            # autocast_adapter_dtype): bfloat16 would round most small AdamW updates away.
            dtype=base_layer.dtype, param_dtype=jnp.float32,
            a_initializer=_peft_a_init, b_initializer=nnx.initializers.zeros,
            a_metadata={"logical_axes": (axes[0], "lora_rank")},
            b_metadata={"logical_axes": ("lora_rank", axes[1])}, rngs=rngs)
        self.dropout = nnx.Dropout(spec.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        # On [tokens, in], as models.llama.Linear: lora_a / lora_b's gradients contract over
        # every token, and with [B, T, in] operands XLA:CPU writes the activations
        # transposed for those dots (a copy per adapter and step; ~30% of a SmolLM2 step
        # with adapters on every projection).
        flat = x.reshape(-1, x.shape[-1])
        y = self.base_layer(flat, **kwargs) + self.lora(self._dropped(flat)) * self.scale
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _dropped(self, x: jax.Array) -> jax.Array:
        """`self.dropout`'s semantics (rate, train/eval mode, RNG stream) with the mask from
        `hashed_keep_mask`: threefry bits for every element cost more than the rest of a
        CPU training step's elementwise work (measured: benchmarks/bench_training.py)."""
        drop = self.dropout
        if drop.deterministic or drop.rate == 0.0:
            return x
        if drop.rate >= 1.0:
            return jnp.zeros_like(x)
        # drop.rngs() in effect. Its in-place count update (`count[...] += 1`) makes flax
        # compare shardings, and a tracer's `.sharding` walks the whole trace so far to
        # word an error: quadratic, 9.6 s of a SmolLM2 train step's 16.7 s trace.
        stream = drop.rngs
        key = jax.random.fold_in(stream.key[...], stream.count[...])
        stream.count.set_value(stream.count[...] + 1)
        keep = hashed_keep_mask(key, x.shape, drop.rate)
        return jnp.where(keep, x / (1.0 - drop.rate), jnp.zeros_like(x))

    def merged(self) -> jax.Array:
        """The base kernel with the adapter folded in: W + scale * A @ B, [in, out]."""
        a, b = self.lora.lora_a[...], self.lora.lora_b[...]
        kernel = self.base_layer.kernel[...]
        return (kernel.astype(jnp.float32) + self.scale * (a.astype(jnp.float32)
                                                           @ b.astype(jnp.float32))
                ).astype(kernel.dtype)


def _mix32(h: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def hashed_keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """bool[shape], each element kept with probability 1 - rate (to 2^-32), independently
    across elements and keys for dropout's purposes.

    The key's own 64 bits (a fresh `fold_in` per call: already a threefry output) seed a
    counter-based hash of each element's index (two rounds of `_mix32`), which XLA fuses
    into the consumer: ~10 integer operations per element against threefry's ~100, so a
    mask costs about one pass over its input. A pure function of (key, shape, rate): a
    resumed run draws the same masks.
    """
    seeds = jax.random.key_data(key).reshape(-1)[:2].astype(jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    h = _mix32(_mix32(index ^ seeds[0]) ^ seeds[1])
    threshold = jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
    return h >= threshold


def _path_str(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _parent(model: nnx.Module, path: Sequence):
    node = model
    for p in path[:-1]:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def add_lora(model: nnx.Module, spec: LoRASpec, *, rngs: nnx.Rngs) -> list[str]:
    """Wrap every `nnx.Linear` whose path `spec` matches, in place; returns the paths.

    Raises ValueError when nothing matches (a typo in target_modules would otherwise train
    nothing).
    """
    num_layers = len(getattr(model, "layers", ()))
    targets = [(path, m) for path, m in nnx.iter_graph(model)
               if isinstance(m, nnx.Linear) and spec.matches(_path_str(path), num_layers)]
    if not targets:
        raise ValueError(f"LoRA target_modules={spec.target_modules!r} (top_layers="
                         f"{spec.top_layers}) match no nnx.Linear")
    for path, linear in targets:
        setattr(_parent(model, path), path[-1], LoRALinear(linear, spec, rngs=rngs))
    placement = getattr(model, "mesh_rules", None)
    if placement is not None:  # the new variables join the model's mesh
        shard_model(model, *placement)
    return [_path_str(p) for p, _ in targets]


def lora_layers(model: nnx.Module) -> list[tuple[str, LoRALinear]]:
    """(dotted path, layer) of every adapter, in graph order."""
    return [(_path_str(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Fold every adapter into its base kernel and put the plain `nnx.Linear` back, in place
    (for the merged export and for inference without the adapter's extra matmuls)."""
    for path, layer in [(p, m) for p, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)]:
        base = layer.base_layer
        base.kernel[...] = layer.merged()
        setattr(_parent(model, path), path[-1], base)
    return model


def trainable_filter(mode: str) -> nnx.filterlib.Filter:
    """The variables a run updates and checkpoints.

    "lora": the adapters only; "full": every parameter; "attention": only parameters under
    `self_attn`; "mlp": only parameters under `mlp` (embeddings and norms stay frozen in the
    last two).
    """
    if mode == "lora":
        return nnx.LoRAParam
    if mode == "full":
        return nnx.Param
    if mode == "attention":
        return nnx.All(nnx.Param, nnx.PathContains("self_attn"))
    if mode == "mlp":
        return nnx.All(nnx.Param, nnx.PathContains("mlp"))
    raise ValueError(f"training mode {mode!r} is not one of {TRAIN_MODES}")


def _dropout_key(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """An independent key per dropout layer: the step key folded with the layer's path."""
    del shape
    return jax.random.fold_in(key, zlib.crc32(_path_str(path).encode()) & 0x7FFFFFFF)


def reseed_dropout(model: nnx.Module, key: jax.Array) -> None:
    """Make every dropout mask a function of (`key`, layer path) only, so a resumed run
    draws exactly the masks an uninterrupted one would."""
    nnx.reseed(model, dropout=key, policy=_dropout_key)
