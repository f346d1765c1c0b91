"""DeBERTa sequence classifiers (v1 and v2/v3) as Flax NNX modules, for NLI.

Mirrors Hugging Face `DebertaForSequenceClassification` (v1: microsoft/deberta-large-mnli)
and `DebertaV2ForSequenceClassification` (v2/v3: microsoft/deberta-v2-xlarge-mnli,
cross-encoder/nli-deberta-v3-*), inference only (no dropout). Attribute names follow the
PyTorch modules, so checkpoint keys map 1:1 by name (`deberta_loading.py`).

Disentangled attention, for query a and key b with relative position r = a - b:
    score[a, b] = (q_a.k_b + q_a.posk[row_c2p(r)] + k_b.posq[row_p2c(r)]) / sqrt(d * f)
where posk/posq are projections of the relative-position embedding table and f counts
the terms. Only 2T-1 relative positions occur in a length-T sequence, so we project just
those 2T-1 table rows (static, computed with numpy at trace time), score each token against
them with one matmul, and cut the [T, T] band out with a slice and two reshapes (`skew`):
no [T, 2*buckets] product per sequence and no gather. The v1 "attention span" slicing of
the table reduces to the same clamped row index (see `relative_rows`), so one attention
module serves both versions.

A classifier reads only the first token of the last layer, so that layer computes queries,
attention output and feed-forward for that token alone (keys and values for all tokens):
the same logits for about 1/num_layers less work.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from se_jax.models import matmul

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _activation(name: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    """Fields named as in Hugging Face config.json; `version` 1 = "deberta", 2 = "deberta-v2"."""
    version: int
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    attention_head_size: int
    intermediate_size: int
    num_labels: int
    id2label: tuple[str, ...]
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-7
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    embedding_size: int | None = None
    position_biased_input: bool = True
    relative_attention: bool = False
    max_relative_positions: int = -1   # resolved: < 1 means max_position_embeddings
    position_buckets: int = -1         # v2: log buckets when > 0
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False        # v2: position projections reuse query/key projections
    norm_rel_ebd: tuple[str, ...] = ()  # v2: ("layer_norm",) normalises the relative table
    conv_kernel_size: int = 0          # v2: convolution after the first layer when > 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pooler_hidden_size: int | None = None
    pooler_hidden_act: str = "gelu"
    pad_token_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "DebertaConfig":
        """From a Hugging Face config.json dict (model_type "deberta" or "deberta-v2")."""
        model_type = d.get("model_type")
        if model_type not in ("deberta", "deberta-v2"):
            raise ValueError(f"model_type {model_type!r} is not a DeBERTa (deberta, deberta-v2)")
        version = 1 if model_type == "deberta" else 2
        pos_att_type = d.get("pos_att_type") or []
        if isinstance(pos_att_type, str):
            pos_att_type = pos_att_type.lower().split("|")
        id2label = d.get("id2label")
        if not id2label:
            raise ValueError("config.json has no id2label: the NLI label order is unknown")
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        if d.get("talking_head"):
            raise NotImplementedError("DeBERTa talking_head attention is not supported")
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        max_rel = d.get("max_relative_positions", -1)
        fields = dict(
            version=version,
            vocab_size=d["vocab_size"], hidden_size=hidden,
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
            attention_head_size=(d.get("attention_head_size") or hidden // heads)
            if version == 2 else hidden // heads,
            intermediate_size=d["intermediate_size"],
            num_labels=len(labels), id2label=labels,
            hidden_act=d.get("hidden_act", "gelu"),
            layer_norm_eps=d.get("layer_norm_eps", 1e-7),
            max_position_embeddings=d.get("max_position_embeddings", 512),
            type_vocab_size=d.get("type_vocab_size", 0),
            embedding_size=d.get("embedding_size") or hidden,
            position_biased_input=d.get("position_biased_input", True),
            relative_attention=d.get("relative_attention", False),
            max_relative_positions=max_rel if max_rel >= 1 else d.get("max_position_embeddings", 512),
            position_buckets=d.get("position_buckets", -1) if version == 2 else -1,
            pos_att_type=tuple(x.strip() for x in pos_att_type if x.strip()),
            share_att_key=bool(d.get("share_att_key", False)) and version == 2,
            norm_rel_ebd=tuple(x.strip() for x in str(d.get("norm_rel_ebd", "none")).lower().split("|"))
            if version == 2 else (),
            conv_kernel_size=d.get("conv_kernel_size", 0) if version == 2 else 0,
            conv_groups=d.get("conv_groups", 1),
            conv_act=d.get("conv_act", "tanh"),
            pooler_hidden_size=d.get("pooler_hidden_size") or hidden,
            pooler_hidden_act=d.get("pooler_hidden_act", "gelu"),
            pad_token_id=d.get("pad_token_id") or 0,
        )
        fields.update(overrides)
        return cls(**fields)

    @property
    def rel_table_half(self) -> int:
        """S: the relative table has 2S rows (v2: buckets if set; else max_relative_positions)."""
        if self.version == 2 and self.position_buckets > 0:
            return self.position_buckets
        return self.max_relative_positions

    @property
    def score_scale(self) -> float:
        """sqrt(head_dim * f), f = 1 + the number of relative terms (as each HF version counts)."""
        if self.version == 1:
            factor = 1 + len(self.pos_att_type)
        else:
            factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
        return float(np.sqrt(np.float32(self.attention_head_size * factor)))


def log_bucket_position(rel: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """HF `make_log_bucket_position`, in float32 like PyTorch: exact within +-bucket_size/2,
    logarithmic beyond. int64 array of rel's shape."""
    rel = np.asarray(rel, np.int64)
    sign = np.sign(rel).astype(np.float32)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    with np.errstate(divide="ignore"):
        log_pos = np.ceil(
            np.log(abs_pos.astype(np.float32) / np.float32(mid))
            / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)
        ) + np.float32(mid)
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_rows(config: DebertaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the relative table used for offsets r = a - b in -(T-1)..T-1.

    Returns (c2p_rows, p2c_rows), int32[2T-1]; entry r + T - 1 is the row for offset r.
    c2p: clamp(bucket(r) + S); p2c: clamp(-bucket(-r) + S) (HF gathers p2c at the transposed
    position). v1 slices its table to a span min(T, max_rel) around the centre and clamps
    inside it; for |r| < T that equals clamping r + max_rel into the whole table.
    """
    half = config.rel_table_half
    r = np.arange(-(length - 1), length, dtype=np.int64)

    def bucket(x):
        if config.version == 2 and config.position_buckets > 0 and config.max_relative_positions > 0:
            return log_bucket_position(x, config.position_buckets, config.max_relative_positions)
        return x

    c2p = np.clip(bucket(r) + half, 0, 2 * half - 1)
    p2c = np.clip(-bucket(-r) + half, 0, 2 * half - 1)
    return c2p.astype(np.int32), p2c.astype(np.int32)


def skew(band: jax.Array, queries: int) -> jax.Array:
    """out[..., i, j] = band[..., i, T-1-i+j] for i < queries, j < T; band [..., >=queries, 2T-1].

    The diagonal band of relative scores as slices and reshapes (Transformer-XL's shift):
    row i's T entries start at flat index i*(2T-1) + T-1-i = T-1 + i*(2T-2).
    """
    T = (band.shape[-1] + 1) // 2
    if T == 1:
        return band[..., :queries, :]
    lead = band.shape[:-2]
    flat = band[..., :queries, :].reshape(*lead, queries * (2 * T - 1))
    short = T - 1 - queries  # the last row's slice ends at T-1 + queries*(2T-2)
    if short > 0:
        flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, short)])
    rows = flat[..., T - 1:T - 1 + queries * (2 * T - 2)]
    return rows.reshape(*lead, queries, 2 * T - 2)[..., :T]


def _layer_norm(config: DebertaConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2] as PyTorch computes it, not E[x^2]-mean^2.
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=config.dtype,
                         param_dtype=config.param_dtype, use_fast_variance=False, rngs=rngs)


def _linear(config: DebertaConfig, rngs: nnx.Rngs, n_in: int, n_out: int,
            use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=config.dtype,
                      param_dtype=config.param_dtype, rngs=rngs,
                      dot_general=matmul.dot_accumulate_f32)  # bfloat16 native on XLA:CPU


class DisentangledSelfAttention(nnx.Module):
    """v2: query_proj/key_proj/value_proj (+ pos_key_proj/pos_query_proj unless shared).
    v1: in_proj (interleaved per head: q, k, v), q_bias, v_bias, pos_proj, pos_q_proj."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, hd = config, config.num_attention_heads * config.attention_head_size
        self.c2p, self.p2c = "c2p" in c.pos_att_type, "p2c" in c.pos_att_type
        relative = c.relative_attention
        if c.version == 1:
            self.in_proj = _linear(c, rngs, c.hidden_size, 3 * hd, use_bias=False)
            self.q_bias = nnx.Param(jnp.zeros((hd,), c.param_dtype))
            self.v_bias = nnx.Param(jnp.zeros((hd,), c.param_dtype))
            if relative and self.c2p:
                self.pos_proj = _linear(c, rngs, c.hidden_size, hd, use_bias=False)
            if relative and self.p2c:
                self.pos_q_proj = _linear(c, rngs, c.hidden_size, hd)
        else:
            self.query_proj = _linear(c, rngs, c.hidden_size, hd)
            self.key_proj = _linear(c, rngs, c.hidden_size, hd)
            self.value_proj = _linear(c, rngs, c.hidden_size, hd)
            if relative and not c.share_att_key:
                if self.c2p:
                    self.pos_key_proj = _linear(c, rngs, c.hidden_size, hd)
                if self.p2c:
                    self.pos_query_proj = _linear(c, rngs, c.hidden_size, hd)

    def _heads(self, x: jax.Array) -> jax.Array:
        """[..., H*D] -> [..., H, D]."""
        return x.reshape(*x.shape[:-1], self.config.num_attention_heads, -1)

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, T, hidden] -> q, k, v each [B, T, H, D]."""
        if self.config.version == 1:
            qkv = self._heads(self.in_proj(x))          # [B, T, H, 3D], per head q|k|v
            q, k, v = jnp.split(qkv, 3, axis=-1)
            return q + self._heads(self.q_bias[...]), k, v + self._heads(self.v_bias[...])
        return (self._heads(self.query_proj(x)), self._heads(self.key_proj(x)),
                self._heads(self.value_proj(x)))

    def _pos_projections(self, rel_c2p: jax.Array, rel_p2c: jax.Array):
        """Relative rows [2T-1, hidden] -> (pos keys, pos queries), each [2T-1, H, D] or None."""
        c = self.config
        if c.version == 1:
            pos_k = self.pos_proj(rel_c2p) if self.c2p else None
            pos_q = self.pos_q_proj(rel_p2c) if self.p2c else None
        elif c.share_att_key:
            pos_k = self.key_proj(rel_c2p) if self.c2p else None
            pos_q = self.query_proj(rel_p2c) if self.p2c else None
        else:
            pos_k = self.pos_key_proj(rel_c2p) if self.c2p else None
            pos_q = self.pos_query_proj(rel_p2c) if self.p2c else None
        return (None if pos_k is None else self._heads(pos_k),
                None if pos_q is None else self._heads(pos_q))

    def __call__(self, x: jax.Array, mask: jax.Array, rel_c2p: jax.Array | None,
                 rel_p2c: jax.Array | None, queries: int | None = None) -> jax.Array:
        """x [B, T, hidden], mask bool[B, T] -> context [B, Q, H*D] for the first Q =
        `queries` (default T) positions as queries; keys and values are all T positions."""
        c = self.config
        T = x.shape[1]
        Q = T if queries is None else queries
        # Heads-major [H, B, T, D]: every product below is then a plain batched matmul
        # whose output is already in the [H, B, Q, T] score layout (no transposes between).
        q, k, v = (jnp.moveaxis(t, 2, 0) for t in self._qkv(x))
        q = q[:, :, :Q]
        scores = jnp.einsum("hbqd,hbkd->hbqk", q, k)
        if c.relative_attention:
            pos_k, pos_q = self._pos_projections(rel_c2p, rel_p2c)
            # Row r of the position tables is offset r - (T-1), so score[a, b] needs column
            # a - b + T - 1: decreasing in b, hence c2p scores against the rows reversed.
            if pos_k is not None:                            # content -> position
                band = jnp.einsum("hbqd,rhd->hbqr", q, pos_k[::-1])
                scores = scores + skew(band, Q)
            if pos_q is not None:                            # position -> content
                # [key b, query a] needs column a - b + T - 1: the skew, then [a, b].
                band = jnp.einsum("hbkd,rhd->hbkr", k, pos_q)
                scores = scores + jnp.swapaxes(skew(band, T)[..., :Q], -1, -2)
        scores = scores.astype(jnp.float32) / np.float32(c.score_scale)
        pair_mask = mask[None, :, :Q, None] & mask[None, :, None, :]
        # HF fills with finfo.min: a fully masked (padding) query row stays finite, uniform.
        scores = jnp.where(pair_mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        context = jnp.einsum("hbqk,hbkd->bqhd", probs, v)
        return context.reshape(*context.shape[:2], -1)


class SelfOutput(nnx.Module):
    """dense, then LayerNorm(. + residual); also the FFN output block (`DebertaOutput`)."""

    def __init__(self, config: DebertaConfig, n_in: int, *, rngs: nnx.Rngs):
        self.dense = _linear(config, rngs, n_in, config.hidden_size)
        self.LayerNorm = _layer_norm(config, rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.self = DisentangledSelfAttention(config, rngs=rngs)
        self.output = SelfOutput(config, config.num_attention_heads * config.attention_head_size,
                                 rngs=rngs)

    def __call__(self, x, mask, rel_c2p, rel_p2c, queries=None):
        context = self.self(x, mask, rel_c2p, rel_p2c, queries)
        return self.output(context, x[:, :context.shape[1]])


class Intermediate(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, rngs, config.hidden_size, config.intermediate_size)
        self.act = _activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x))


class Layer(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(config, rngs=rngs)
        self.intermediate = Intermediate(config, rngs=rngs)
        self.output = SelfOutput(config, config.intermediate_size, rngs=rngs)

    def __call__(self, x, mask, rel_c2p, rel_p2c, queries=None):
        """x [B, T, hidden] -> [B, Q, hidden], Q = queries or T (the first Q positions)."""
        h = self.attention(x, mask, rel_c2p, rel_p2c, queries)
        return self.output(self.intermediate(h), h)


class ConvLayer(nnx.Module):
    """v2's 1-D convolution over the embeddings, added to the first layer's output."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        k = config.conv_kernel_size
        self.conv = nnx.Conv(config.hidden_size, config.hidden_size, k,
                             padding=[((k - 1) // 2, (k - 1) // 2)],
                             feature_group_count=config.conv_groups, dtype=config.dtype,
                             param_dtype=config.param_dtype, rngs=rngs)
        self.LayerNorm = _layer_norm(config, rngs)
        self.act = _activation(config.conv_act)

    def __call__(self, embeddings: jax.Array, residual: jax.Array, mask: jax.Array) -> jax.Array:
        """residual [B, Q, hidden] may cover only the first Q of the T positions."""
        Q = residual.shape[1]
        m = mask[:, :Q, None].astype(residual.dtype)
        out = self.act(self.conv(embeddings)[:, :Q] * m)
        return self.LayerNorm(residual + out) * m


class Embeddings(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        c, e = config, config.embedding_size or config.hidden_size
        embed = functools.partial(nnx.Embed, dtype=c.dtype, param_dtype=c.param_dtype, rngs=rngs)
        self.word_embeddings = embed(c.vocab_size, e)
        if c.position_biased_input:
            self.position_embeddings = embed(c.max_position_embeddings, e)
        if c.type_vocab_size > 0:
            self.token_type_embeddings = embed(c.type_vocab_size, e)
        if e != c.hidden_size:
            self.embed_proj = _linear(c, rngs, e, c.hidden_size, use_bias=False)
        self.LayerNorm = _layer_norm(c, rngs)
        self.config = c

    def __call__(self, input_ids, mask, token_type_ids=None):
        c = self.config
        h = self.word_embeddings(input_ids)
        if c.position_biased_input:
            h = h + self.position_embeddings(jnp.arange(input_ids.shape[1])[None])
        if c.type_vocab_size > 0:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            h = h + self.token_type_embeddings(types)
        if hasattr(self, "embed_proj"):
            h = self.embed_proj(h)
        return self.LayerNorm(h) * mask[..., None].astype(h.dtype)


class Encoder(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.layer = nnx.List([Layer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])
        if c.relative_attention:
            self.rel_embeddings = nnx.Embed(2 * c.rel_table_half, c.hidden_size, dtype=c.dtype,
                                            param_dtype=c.param_dtype, rngs=rngs)
        if "layer_norm" in c.norm_rel_ebd:
            self.LayerNorm = _layer_norm(c, rngs)
        if c.conv_kernel_size > 0:
            self.conv = ConvLayer(c, rngs=rngs)

    def _relative_embeddings(self, length: int):
        """The table rows for the 2T-1 offsets: (c2p rows, p2c rows), each [2T-1, hidden]."""
        if not self.config.relative_attention:
            return None, None
        table = self.rel_embeddings.embedding[...]
        c2p, p2c = relative_rows(self.config, length)
        rows = [table[c2p], table[p2c]]
        if hasattr(self, "LayerNorm"):  # row-wise, so normalising rows == normalising the table
            rows = [self.LayerNorm(r) for r in rows]
        return tuple(r.astype(self.config.dtype) for r in rows)

    def __call__(self, embeddings: jax.Array, mask: jax.Array,
                 last_layer_queries: int | None = None) -> jax.Array:
        """-> hidden [B, T, hidden], or [B, Q, hidden] for the first Q = last_layer_queries
        positions when only those are read (the last layer then computes just them)."""
        rel_c2p, rel_p2c = self._relative_embeddings(embeddings.shape[1])
        h = embeddings
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            h = layer(h, mask, rel_c2p, rel_p2c, last_layer_queries if i == last else None)
            if i == 0 and hasattr(self, "conv"):
                h = self.conv(embeddings, h, mask)
        return h


class DebertaModel(nnx.Module):
    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, rngs=rngs)
        self.encoder = Encoder(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None,
                 last_layer_queries: int | None = None) -> jax.Array:
        mask = attention_mask.astype(bool)
        return self.encoder(self.embeddings(input_ids, mask, token_type_ids), mask,
                            last_layer_queries)


class ContextPooler(nnx.Module):
    """The first token's hidden state, dense, activation."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        size = config.pooler_hidden_size or config.hidden_size
        self.dense = _linear(config, rngs, size, size)
        self.act = _activation(config.pooler_hidden_act)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return self.act(self.dense(hidden[:, 0]))


class DebertaForSequenceClassification(nnx.Module):
    """`model(input_ids int32[B,T], attention_mask int32|bool[B,T], token_type_ids=None)
    -> logits float32[B, num_labels]` in the order of `config.id2label`. Padding may be
    anywhere except position 0 (the pooled token)."""

    def __init__(self, config: DebertaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.deberta = DebertaModel(config, rngs=rngs)
        self.pooler = ContextPooler(config, rngs=rngs)
        self.classifier = _linear(config, rngs, config.pooler_hidden_size or config.hidden_size,
                                  config.num_labels)

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> jax.Array:
        hidden = self.deberta(input_ids, attention_mask, token_type_ids, last_layer_queries=1)
        return self.classifier(self.pooler(hidden)).astype(jnp.float32)
