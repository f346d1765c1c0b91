"""The Llama-family decoder (Llama 2/3, SmolLM2, Qwen2) as Flax NNX modules, and its KV cache.

Attribute names follow Hugging Face (`embed_tokens`, `layers[i].self_attn.q_proj`, ...), so
checkpoint names and PEFT/LoRA target names map 1:1 (see `hf_names.py`). Projections are
`nnx.Linear` with kernels `[in, out]` (the transpose of torch's `[out, in]`).

One forward serves prefill, decode and training (docs/contracts.md, "Decoder"):

    logits, cache = model(tokens, positions, cache)   # tokens, positions: int32[B, T]

`positions[b, t] = -1` marks padding. Key k is visible to query q iff 0 <= pos_k <= pos_q in
the same row, so left-padded prefill, one-token decode and right-padded training batches all
use the same rule. Masked scores take a large finite negative: an all-padding row stays finite.
A prompt head the rows share runs once, not per row: `model.hidden(..., context=cache)`
reads a prefilled cache, one row per group of rows (scoring: one judge prompt; sampling:
each question's prompt for its M answers), `model.hidden(..., prefix=tokens)` folds the
head into the batch as extra rows whose keys every row reads (training; `HeadRows`). The
shared keys are read once per group, never copied per row (`dot_product_attention`).

Every parameter carries `logical_axes` metadata (e.g. ("embed", "heads")); `se_jax.parallel.mesh` maps
those names to mesh axes with one `ShardingRules` table. A model loaded onto a mesh also holds
`mesh_rules` and pins its residual stream to a batch-split layout.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from se_jax.parallel import mesh as mesh_lib
from se_jax.models import layer_scan, matmul

# Architectures (config.json "architectures") this decoder implements.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_ROPE_TYPES = ("default", "linear", "llama3")
# Large finite negative for masked attention scores (float32 softmax; never -inf, so no NaN).
_MASKED = -1e30


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-frequency scaling (HF `rope_scaling` / `rope_parameters`); `rope_type` "default"
    means none. "linear" divides frequencies by `factor`; "llama3" rescales low frequencies
    smoothly (Llama 3.1+)."""
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder; field names as in HF `config.json`.

    `attention_bias` adds biases to q/k/v (Qwen2 always has them); `o_proj_bias` to the
    output projection (HF Llama's `attention_bias=True` sets both). `dtype` is the compute
    dtype, `param_dtype` the storage dtype of the weights (names such as "bfloat16").
    `scan_layers` (not an HF field) runs the decoder layers as one `lax.scan`, so XLA
    compiles one layer body instead of L (see `layer_scan.py`); False loops in Python.
    """
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    architecture: str = "LlamaForCausalLM"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False  # True: one lax.scan over the layers (docs/benchmarks.md, bench_compile)

    def __post_init__(self):
        for name in ("dtype", "param_dtype"):  # accept jnp.bfloat16 etc., store the name
            object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.rope_scaling.rope_type not in _ROPE_TYPES:
            raise ValueError(f"rope_scaling.rope_type={self.rope_scaling.rope_type!r} is not "
                             f"supported (supported: {', '.join(_ROPE_TYPES)})")

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides) -> "LlamaConfig":
        """Build from a Hugging Face `config.json` dict (transformers 4.x or 5.x spelling).

        `overrides` (e.g. dtype="bfloat16") replace fields. Unsupported architectures or
        features raise ValueError naming the field.
        """
        archs = d.get("architectures") or [_ARCH_BY_MODEL_TYPE.get(d.get("model_type"), None)]
        arch = archs[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"config field 'architectures'={archs!r} (model_type="
                             f"{d.get('model_type')!r}) is not supported; supported: "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config field 'hidden_act'={act!r} is not supported (only 'silu')")
        if d.get("use_sliding_window") or (arch == "MistralForCausalLM" and d.get("sliding_window")):
            raise ValueError("config field 'sliding_window' is set: sliding-window attention "
                             "is not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size",
                               "num_hidden_layers", "num_attention_heads") if k not in d]
        if missing:
            raise ValueError(f"config is missing field(s) {missing}")
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        rope_theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        known = {f.name for f in dataclasses.fields(RopeScaling)}
        scaling = RopeScaling(rope_type=rope_type, **{k: v for k, v in rope.items() if k in known})
        heads = d["num_attention_heads"]
        is_qwen2 = arch == "Qwen2ForCausalLM"
        kwargs = dict(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5), rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if is_qwen2 else bool(d.get("attention_bias", False)),
            o_proj_bias=False if is_qwen2 else bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)), architecture=arch,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(e) if isinstance(e := d.get("eos_token_id"), list) else e,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                       "mistral": "MistralForCausalLM"}


# ----------------------------------------------------------------------------- KV cache

@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["k", "v", "pos", "length"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys/values of every layer for S slots. The caller owns it and donates it to jit.

    k, v: one array per layer, [B, Hkv, S, Dh] (head-major: a decode step reads each head's
    keys as one contiguous [S, Dh] block, with no transpose of the cache). Per layer, not
    one [L, ...] array: attention reads a layer's keys straight from its own buffer, where
    a slice of a stacked array is a copy of it on every call (XLA cannot alias a slice of a
    buffer; 60 copies per SmolLM2 decode step, ~8% of the sampler's time). Inside the layer
    scan they are stacked ([L, ...], `stacked()`), as a traced layer index needs.
    pos: int32[B, S] (position held by each slot, -1 = empty);
    length: int32[] (slots filled). A call with T tokens writes slots [length, length + T);
    the caller keeps length + T <= S (XLA clamps out-of-range writes silently).
    """
    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    pos: jax.Array
    length: jax.Array

    @classmethod
    def init(cls, config: LlamaConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        """An empty cache of `max_len` slots; `dtype` defaults to the compute dtype."""
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        dtype = jnp.dtype(dtype or config.dtype)
        def empty() -> tuple[jax.Array, ...]:
            return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
        return cls(k=empty(), v=empty(), pos=jnp.full((batch, max_len), -1, jnp.int32),
                   length=jnp.zeros((), jnp.int32))

    @classmethod
    def init_sharded(cls, config: LlamaConfig, batch: int, max_len: int, mesh: jax.sharding.Mesh,
                     rules: mesh_lib.ShardingRules, dtype=None) -> "KVCache":
        """An empty cache created directly in its sharded layout (no host copy)."""
        make = lambda: cls.init(config, batch, max_len, dtype)  # noqa: E731
        return jax.jit(make, out_shardings=jax.eval_shape(make).shardings(mesh, rules))()

    def shardings(self, mesh: jax.sharding.Mesh, rules: mesh_lib.ShardingRules) -> "KVCache":
        """NamedShardings for this cache (concrete or abstract): k/v one [B,Hkv,S,Dh] per
        layer over ("batch", "kv_heads", "cache_seq", "head_dim"), pos [B,S]."""
        kv = ("batch", "kv_heads", "cache_seq", "head_dim")
        spec = functools.partial(mesh_lib.logical_sharding, mesh, rules)
        return dataclasses.replace(
            self, k=tuple(spec(kv, x.shape) for x in self.k),
            v=tuple(spec(kv, x.shape) for x in self.v),
            pos=spec(("batch", "cache_seq"), self.pos.shape),
            length=mesh_lib.replicated(mesh))

    def stacked(self) -> "KVCache":
        """k, v as [L, B, Hkv, S, Dh] arrays (the layer scan's carry)."""
        return dataclasses.replace(self, k=jnp.stack(self.k), v=jnp.stack(self.v))

    def unstacked(self) -> "KVCache":
        """The inverse of `stacked`."""
        return dataclasses.replace(self, k=tuple(self.k), v=tuple(self.v))

    def layer(self, i: int | jax.Array) -> tuple[jax.Array, jax.Array]:
        """Layer i's keys and values, [B, Hkv, S, Dh] each (i traced only when stacked)."""
        return self.k[i], self.v[i]

    def write(self, i: int | jax.Array, k: jax.Array, v: jax.Array) -> "KVCache":
        """Layer i's k, v [B, Hkv, T, Dh] written to slots [length, length + T)."""
        start = (0, 0, self.length, 0)
        if isinstance(self.k, tuple):
            def put(layers, new):
                row = jax.lax.dynamic_update_slice(layers[i], new.astype(layers[i].dtype), start)
                return layers[:i] + (row,) + layers[i + 1:]
        else:
            def put(layers, new):
                return jax.lax.dynamic_update_slice(layers, new[None].astype(layers.dtype),
                                                    (i, *start))
        return dataclasses.replace(self, k=put(self.k, k), v=put(self.v, v))


def attention_mask(q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """bool[B, T, S]: key s visible to query t iff 0 <= k_pos[s] <= q_pos[t] (same row)."""
    k = k_pos[:, None, :]
    return (k >= 0) & (k <= q_pos[:, :, None])


# ----------------------------------------------------------------------------- rotary

def rope_frequencies(config: LlamaConfig) -> np.ndarray:
    """float32[Dh/2] inverse frequencies, with the config's scaling (as HF computes them)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    s = config.rope_scaling
    if s.rope_type == "linear":
        inv_freq = inv_freq / s.factor
    elif s.rope_type == "llama3":
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                  / (s.high_freq_factor - s.low_freq_factor))
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_tables(config: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin: float32[B, T, Dh] for `positions` int32[B, T] (padding -1 is clamped to 0)."""
    inv_freq = jnp.asarray(rope_frequencies(config))
    angles = jnp.maximum(positions, 0).astype(jnp.float32)[..., None] * inv_freq
    half = inv_freq.shape[0]
    # Both halves of the head take the same angles. Widening [.., Dh/2] -> [.., Dh] with a
    # matmul (by [I I]) rather than a concatenate keeps the tables materialised: XLA fuses an
    # elementwise cos/sin into every consumer, so it would evaluate them again per head and
    # layer's rotation (measured: 0.25 s of a 3.6 s SmolLM2 LoRA train step on 2 CPU cores).
    widen = jnp.concatenate([jnp.eye(half, dtype=jnp.float32)] * 2, axis=1)
    tables = jnp.stack([jnp.cos(angles), jnp.sin(angles)])
    cos, sin = jnp.einsum("cbtf,fd->cbtd", tables, widen, precision=jax.lax.Precision.HIGHEST)
    return cos, sin


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, H, Dh] rotated in HF's half-split layout (rotate_half), in float32."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


# ----------------------------------------------------------------------------- modules

class Linear(nnx.Linear):
    """`nnx.Linear` applied on [tokens, in]: the kernel's gradient contracts over every
    token, and with [B, T, in] operands XLA:CPU writes the activations transposed for that
    dot (a copy per projection and step in full fine-tuning). Its dot sums in float32
    (`matmul.dot_accumulate_f32`: bfloat16 compute stays bfloat16 on XLA:CPU)."""

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        y = super().__call__(x.reshape(-1, x.shape[-1]), **kwargs)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _linear(config: LlamaConfig, n_in: int, n_out: int, axes: tuple[str, str], bias: bool,
            rngs: nnx.Rngs) -> nnx.Linear:
    return Linear(n_in, n_out, use_bias=bias, dtype=config.dtype,
                  param_dtype=config.param_dtype, rngs=rngs,
                  dot_general=matmul.dot_accumulate_f32,
                  kernel_init=nnx.initializers.normal(0.02),
                  kernel_metadata={"logical_axes": axes},
                  bias_metadata={"logical_axes": axes[1:]})


class RMSNorm(nnx.Module):
    """y = weight * x / rms(x), normalised in float32 (as HF's LlamaRMSNorm)."""

    def __init__(self, config: LlamaConfig):
        self.eps = config.rms_norm_eps
        self.dtype = config.dtype
        self.weight = nnx.Param(jnp.ones((config.hidden_size,), config.param_dtype),
                                logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * xf.astype(self.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings and an optional KV cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        self.q_proj = _linear(c, c.hidden_size, q_dim, ("embed", "heads"), c.attention_bias, rngs)
        self.k_proj = _linear(c, c.hidden_size, kv_dim, ("embed", "kv_heads"), c.attention_bias, rngs)
        self.v_proj = _linear(c, c.hidden_size, kv_dim, ("embed", "kv_heads"), c.attention_bias, rngs)
        self.o_proj = _linear(c, q_dim, c.hidden_size, ("heads", "embed"), c.o_proj_bias, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
                 cache: KVCache | None, layer: int | jax.Array,
                 context: tuple[jax.Array, jax.Array] | HeadRows | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """x: [B, T, E]; mask: bool[B, T, S_ctx + S] -> ([B, T, E], cache). S = T without a
        cache, the cache's slots with one. `context`: keys and values [G, Hkv, S_ctx, Dh] that
        each of G equal groups of consecutive rows reads before its own (never written; S_ctx
        = 0 without), or `HeadRows`, which takes them from the first rows of each group.
        `layer` (the cache's layer index) may be traced, as inside the layer scan."""
        b, t, _ = x.shape
        q = apply_rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)         # [B, Hkv, T, Dh]
        if isinstance(context, HeadRows):
            context = context.keys(k), context.keys(v)
        if cache is not None:
            cache = cache.write(layer, k, v)
            k, v = (x.astype(q.dtype) for x in cache.layer(layer))
        out = dot_product_attention(q, k, v, mask, context)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), cache


@dataclasses.dataclass(frozen=True)
class HeadRows:
    """A shared prompt head folded into the batch (`Llama.hidden(prefix=...)`): the rows are
    `groups` equal groups (one per batch shard), each led by the same `rows` rows that hold
    the head's tokens; every row reads their keys and values before its own."""
    groups: int
    rows: int

    def keys(self, x: jax.Array) -> jax.Array:
        """x: [B, Hkv, T, Dh] -> the head rows' [G, Hkv, rows * T, Dh], in position order."""
        b, h, t, d = x.shape
        head = x.reshape(self.groups, b // self.groups, h, t, d)[:, :self.rows]
        return head.transpose(0, 2, 1, 3, 4).reshape(self.groups, h, self.rows * t, d)

    def fold(self, head: jax.Array, rows: jax.Array) -> jax.Array:
        """head [rows, T, ...] put before each group of rows [B, T, ...]."""
        g = self.groups
        rows = rows.reshape((g, rows.shape[0] // g) + rows.shape[1:])
        head = jnp.broadcast_to(head, (g,) + head.shape).astype(rows.dtype)
        out = jnp.concatenate([head, rows], axis=1)
        return out.reshape((-1,) + out.shape[2:])

    def unfold(self, x: jax.Array) -> jax.Array:
        """[B', T, ...] -> the rows without the head rows [B, T, ...]."""
        x = x.reshape((self.groups, x.shape[0] // self.groups) + x.shape[1:])[:, self.rows:]
        return x.reshape((-1,) + x.shape[2:])


def _by_group(x: jax.Array, groups: int) -> jax.Array:
    """[B, Hkv, Q, X] -> [G, Hkv, (B/G) * Q, X]: the rows of each of G groups side by side."""
    b, h, q, d = x.shape
    x = x.reshape(groups, b // groups, h, q, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(groups, h, (b // groups) * q, d)


def _by_row(x: jax.Array, rows: int) -> jax.Array:
    """The inverse of `_by_group`: [G, Hkv, (B/G) * Q, X] -> [B, Hkv, Q, X]."""
    g, h, _, d = x.shape
    x = x.reshape(g, h, rows // g, -1, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(rows, h, -1, d)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                          context: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """q: [B, T, H, Dh], k/v: [B, Hkv, S, Dh], mask: bool[B, T, S_ctx + S] -> [B, T, H, Dh].

    context: keys and values [G, Hkv, S_ctx, Dh] shared by each of G equal groups of
    consecutive rows, read before the rows' own. They are never copied per row: each group's
    queries are stacked into one product against its context (`_by_group`), so a prompt
    shared by M sampled rows is read once per step, not M times. Scores and softmax in
    float32, over the context's and the rows' keys together. The G = H / Hkv query heads
    that share a kv head are stacked along the query axis, so both products are plain
    batched matmuls over (B, Hkv) with contiguous [G*T, Dh] and [S, Dh] operands (on CPU
    1.3-1.6x faster than contracting the 5-d grouped layout directly, forward and backward).
    """
    b, t, h, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    q = q.reshape(b, t, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, d)
    f32 = jnp.float32
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=f32)
    if context is not None:
        ck, cv = (x.astype(q.dtype) for x in context)
        groups, s_ctx = ck.shape[0], ck.shape[2]
        shared = jnp.einsum("gkqd,gksd->gkqs", _by_group(q, groups), ck,
                            preferred_element_type=f32)
        scores = jnp.concatenate([_by_row(shared, b), scores], axis=-1)
    s = scores.shape[-1]
    scores = scores.reshape(b, hkv, g, t, s)
    scores = jnp.where(mask[:, None, None], scores / math.sqrt(d), _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, hkv, g * t, s)
    if context is not None:
        probs_ctx, probs = probs[..., :s_ctx], probs[..., s_ctx:]
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v, preferred_element_type=f32)
    if context is not None:
        out = out + _by_row(jnp.einsum("gkqs,gksd->gkqd", _by_group(probs_ctx, groups), cv,
                                       preferred_element_type=f32), b)
    out = out.astype(v.dtype).reshape(b, hkv, g, t, d)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        self.gate_proj = _linear(c, c.hidden_size, c.intermediate_size, ("embed", "mlp"), c.mlp_bias, rngs)
        self.up_proj = _linear(c, c.hidden_size, c.intermediate_size, ("embed", "mlp"), c.mlp_bias, rngs)
        self.down_proj = _linear(c, c.intermediate_size, c.hidden_size, ("mlp", "embed"), c.mlp_bias, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache: KVCache | None, layer: int | jax.Array,
                 context: tuple[jax.Array, jax.Array] | HeadRows | None = None):
        """-> (x, cache); see `Attention.__call__`."""
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, context)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Llama(nnx.Module):
    """Llama-family causal LM. `model(tokens, positions, cache) -> (logits f32[B,T,V], cache)`."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.embed_tokens = nnx.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype,
                                      param_dtype=c.param_dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02),
                                      embedding_metadata={"logical_axes": ("vocab", "embed")})
        self.layers = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c)
        if not c.tie_word_embeddings:
            self.lm_head = nnx.Linear(c.hidden_size, c.vocab_size, use_bias=False, dtype=c.dtype,
                                      param_dtype=c.param_dtype, rngs=rngs,
                                      preferred_element_type=jnp.float32,
                                      dot_general=matmul.dot_accumulate_f32,
                                      kernel_init=nnx.initializers.normal(0.02),
                                      kernel_metadata={"logical_axes": ("embed", "vocab")})
        # (Mesh, ShardingRules) once the weights are sharded (load_llama sets it): the residual
        # stream is then pinned to batch-split, embed-replicated, so XLA's sharding propagation
        # cannot pick another layout (FSDP all-gathers weights; tensor parallelism reduces).
        self.mesh_rules = None

    def _constrain(self, x: jax.Array) -> jax.Array:
        if self.mesh_rules is None:
            return x
        mesh, rules = self.mesh_rules
        spec = rules.spec(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh)
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """int32[B, T] -> [B, T, E]. On a mesh the table is first gathered whole along
        `embed` (FSDP gathers every weight so), so the lookup's output follows the batch-split
        tokens; from a table split on `embed`, XLA would split the output on E and then have
        to replicate it to reach the batch-split layout (a full rematerialisation)."""
        if self.mesh_rules is None:
            return self.embed_tokens(tokens)
        mesh, rules = self.mesh_rules
        table = self.embed_tokens.embedding[...].astype(self.config.dtype)
        spec = rules.spec(("vocab", None), table.shape, mesh)
        table = jax.lax.with_sharding_constraint(table, jax.sharding.NamedSharding(mesh, spec))
        return jnp.take(table, tokens, axis=0)

    def hidden(self, tokens: jax.Array, positions: jax.Array, cache: KVCache | None = None,
               context: KVCache | None = None, prefix: jax.Array | None = None
               ) -> tuple[jax.Array, KVCache | None]:
        """tokens, positions: int32[B, T] -> (final-normed hidden states [B, T, E], cache).

        A prompt head the rows share can come before their own tokens, read-only (never
        written to a cache), in one of two forms:
          context: a prefilled cache of G rows, each read by one of G equal groups of
            consecutive rows (G divides B), alone or before `cache`: one judge prompt
            prefilled once per process for every batch (`se_jax.generation.scoring`), or each question's
            prompt prefilled once for its M sampled answers (`se_jax.generation.sampling`);
          prefix: its tokens int32[1, P] (positions 0..P-1), run once per batch (per batch
            shard) instead of once per row, and differentiable (training,
            `se_jax.tuning.training.batch_layout`). The head is folded into the batch as
            ceil(P / T) extra rows before each shard's rows (`HeadRows`), so every layer
            runs one set of projections over all tokens. Only the rows' states return.
        """
        h, cache, _ = self._forward(tokens, positions, cache, context, prefix, keep=())
        return h, cache

    def hidden_states(self, tokens: jax.Array, positions: jax.Array, layers: tuple[int, ...],
                      cache: KVCache | None = None, context: KVCache | None = None
                      ) -> tuple[jax.Array, KVCache | None, jax.Array]:
        """`hidden`, plus the residual stream at the last position at `layers`:
        (h [B, T, E], cache, states [B, len(layers), E]).

        Layer numbers as Hugging Face's `hidden_states`: 0 = the embeddings' output, i = the
        output of decoder layer i (1-based, before the final norm), -1 = the final normed
        stream (h[:, -1]). Only the last position is kept, one [B, E] per layer, never
        [B, T, L, E]: the sampler needs the last prompt token (prefill) and the one token
        of each decode step.
        """
        bad = [l for l in layers if not -1 <= l <= self.config.num_hidden_layers]
        if bad or not layers:
            raise ValueError(f"hidden_states: layers {layers!r} must be a non-empty tuple of "
                             f"-1..{self.config.num_hidden_layers}")
        return self._forward(tokens, positions, cache, context, None, keep=tuple(layers))

    def _forward(self, tokens: jax.Array, positions: jax.Array, cache: KVCache | None,
                 context: KVCache | None, prefix: jax.Array | None, keep: tuple[int, ...]
                 ) -> tuple[jax.Array, KVCache | None, jax.Array | None]:
        """`hidden` and, when `keep` names layers, `hidden_states`' states (else None).
        With keep=() it traces exactly the ops `hidden` always traced."""
        if prefix is not None and (context is not None or cache is not None):
            raise ValueError("hidden() takes a prefix alone, without a cache or context")
        fold = None
        if prefix is not None:
            fold, tokens, positions, k_pos = self._fold_head(prefix, tokens, positions)
        elif cache is None:
            k_pos = positions
        else:
            k_pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32),
                                                 (0, cache.length))
            cache = dataclasses.replace(cache, pos=k_pos)
        if context is not None:
            b, groups = tokens.shape[0], context.pos.shape[0]
            if b % groups:
                raise ValueError(f"{b} rows do not split into {groups} context groups")
            k_pos = jnp.concatenate([jnp.repeat(context.pos, b // groups, axis=0), k_pos],
                                    axis=1)
        mask = attention_mask(positions, k_pos)
        cos, sin = rope_tables(self.config, positions)
        x = self._constrain(self._embed(tokens))
        embedded = x[:, -1] if keep else None   # layer 0; nothing traced when not kept

        layers = list(self.layers)
        graphdef = layer_scan.stack_graphdef(layers) if self.config.scan_layers else None
        if graphdef is not None:   # a traced layer index: the caches stacked
            cache = cache.stacked() if cache is not None else None
            context = context.stacked() if context is not None else None

        # Decoder layers whose output is kept (1-based); [K, B, E] slots filled as they pass.
        inner = tuple(l for l in keep if l > 0)

        def body(layer: DecoderLayer, i, carry):
            x, cache = carry[:2]
            ctx = fold if context is None else context.layer(i)
            x, cache = layer(x, cos, sin, mask, cache, i, ctx)
            x = self._constrain(x)
            if not inner:
                return x, cache
            # i may be traced (layer scan): a select, not a Python branch.
            hit = jnp.asarray(inner, jnp.int32) == i + 1
            return x, cache, jnp.where(hit[:, None, None], x[None, :, -1], carry[2])

        carry = (x, cache)
        if inner:
            carry += (jnp.zeros((len(inner), x.shape[0], x.shape[2]), x.dtype),)
        if graphdef is not None:
            carry = layer_scan.scan_layers(layers, graphdef, body, carry)
        else:  # layers differ (e.g. LoRA on some only) or scanning is off
            for i, layer in enumerate(layers):
                carry = body(layer, i, carry)
        x, cache = carry[:2]
        if graphdef is not None and cache is not None:
            cache = cache.unstacked()
        if cache is not None:
            cache = dataclasses.replace(cache, length=cache.length + tokens.shape[1])
        if fold is not None:
            x = self._constrain(fold.unfold(x))
        h = self.norm(x)
        if not keep:
            return h, cache, None
        by_layer = {0: embedded, -1: h[:, -1], **{l: carry[2][k] for k, l in enumerate(inner)}}
        states = jnp.stack([by_layer[l].astype(x.dtype) for l in keep], axis=1)
        return h, cache, self._constrain(states)

    def _fold_head(self, prefix: jax.Array, tokens: jax.Array, positions: jax.Array
                   ) -> tuple[HeadRows, jax.Array, jax.Array, jax.Array]:
        """The head int32[1, P] as ceil(P / T) rows before each batch shard's rows.

        Returns the fold, tokens and positions [B', T] with the head rows, and the key
        positions [B', R*T + T]: every row reads the R head rows' keys (positions 0..P-1,
        then -1) before its own; a head row's own slots are hidden (-1), as its keys are
        already among the head's, so it sees the head causally up to itself.
        """
        groups = mesh_lib.batch_shards(*self.mesh_rules) if self.mesh_rules else 1
        b, t = tokens.shape
        if b % groups:
            raise ValueError(f"a batch of {b} rows does not split into {groups} batch shards")
        p = prefix.shape[1]
        fold = HeadRows(groups, rows=-(-p // t))
        pad = fold.rows * t - p
        head = jnp.pad(prefix[0], (0, pad)).reshape(fold.rows, t)
        head_pos = jnp.pad(jnp.arange(p, dtype=jnp.int32), (0, pad), constant_values=-1)
        tokens = fold.fold(head, tokens)
        positions = fold.fold(head_pos.reshape(fold.rows, t), positions)
        is_head = fold.fold(jnp.ones((fold.rows, t), bool), jnp.zeros((b, t), bool))
        own = jnp.where(is_head, -1, positions)
        k_pos = jnp.concatenate(
            [jnp.broadcast_to(head_pos, (tokens.shape[0], fold.rows * t)), own], axis=1)
        return fold, tokens, positions, k_pos

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [B, T, E] from `hidden` -> float32 logits [B, T, V].

        The products accumulate into float32 even in bfloat16 compute: log-probabilities
        over a large vocabulary need more than bfloat16's 8 bits of mantissa.
        """
        if self.config.tie_word_embeddings:
            table = self.embed_tokens.embedding[...].astype(h.dtype)
            return matmul.project(h, table.T, jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, positions: jax.Array, cache: KVCache | None = None,
                 context: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.hidden(tokens, positions, cache, context)
        return self.logits(h), cache
