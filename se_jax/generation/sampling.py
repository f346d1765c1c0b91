"""Batched, sharded, jitted generation of several answers per prompt from one prefill.

API (other stages import these):

    answers = generate(model, tokenizer, prompts, ids, temperatures=(0.1,) + (1.0,) * 10,
                       max_new_tokens=64, seed=0, mesh=mesh)
    # answers[i][j]: Answer for prompt i, row j (row j at temperatures[j], key index j)

    most_likely, samples = sample_answers(model, tokenizer, prompts, ids, num_samples=10,
                                          temperature=1.0, low_temperature=0.1)  # SE set
    # most_likely[i] is key index 0; samples[i][m] is key index m + 1
    greedy = greedy_answers(model, tokenizer, prompts, ids)                    # evaluation

    keep = KeepHidden(layers=(8, 16, -1), positions=("tbg", "slt"))
    most_likely, samples, states = sample_answers_and_states(..., keep=keep)
    greedy, states = greedy_answers_and_states(..., keep=keep)
    # states float32[N, P, L, E]: prompt i's residual stream at keep.positions x keep.layers
    # (tbg: last prompt token; slt: row 0's answer, see `slt_step`): semantic entropy probes

    kwargs = config.sampling.generate_kwargs()   # max_new_tokens, top_k, top_p,
                                                # stop_strings, batch_size, buckets
    raw = decode_batch(model, prompt_ids, ids, temperatures=..., batch_size=...,
                       max_new_tokens=..., stop=stopping.stop_tables(...))  # raw token
    # arrays of one batch, before stop strings are cut (benchmarks)

`prompts` are texts from `se_jax.data.prompts.format_prompt` (or token-id lists); `ids` are
the question ids that seed each answer's random key. `Answer` holds the text (stop string
cut, stripped), token ids, each token's log-probability under the model at T=1 (whatever
the sampling temperature or filters), their sum and mean. EOS and the tokens that only hold
stop text are dropped; an empty answer keeps its first token (see `stopping.cut_answer`).
`eos_ids=()` and `stop_strings=()` give fixed-length answers of max_new_tokens tokens.
Pass `mesh` (and `rules`, default `se_jax.parallel.mesh.ShardingRules()`) when the model was loaded
onto a mesh.

How (one batch of B prompts, rows R = B * len(temperatures)):
1. Prompts are left-padded to a length bucket P (config `buckets`), the batch to B rows
   (dummy rows are all padding), so a run compiles one program per bucket.
2. `_prefill` (jit): one forward over [B, P] into the prompts' KV cache of P slots; the
   last logits are repeated for each prompt's answer rows, which get their own empty cache
   of max_new_tokens - 1 slots (at least 1). The prompt cache is never copied per row: in every decode
   step each prompt's M rows read its keys together (`Llama.hidden(context=...)`), so
   attention reads a prompt's keys once per step, not M times.
3. `_decode` (jit, answer cache donated): one `lax.while_loop` over all R rows; each step draws a
   token per row (`sampling_math.sample_step`, per-row temperature), records its T=1
   log-prob, marks rows finished on EOS or a stop string inside one token
   (`stopping.StopTables`), and feeds the tokens back. It exits when every row is done.
   No host sync inside; the host reads tokens once, then cuts stop strings exactly
   (`stopping.cut_answer`).
Batch dims are sharded over the mesh's batch axes (NamedSharding); the model keeps the
sharding it was loaded with (tensor/fsdp).

Hidden states (`KeepHidden`, off by default): the prefill keeps the residual stream of the
last prompt token (TBG) at the chosen layers; for SLT the decode loop also writes row 0 of
each prompt at every step into a [B, max_new_tokens, L, E] buffer on the devices, and after
the host has cut the answers one gather fetches the [B, P, L, E] that are kept. No second
forward pass. Off, the two programs are the ones traced without the option (a test).

Reproducibility: the key of answer row j of question q is
    fold_in(fold_in(PRNGKey(seed), stable_hash(q)), j), folded with the step each step,
so a question's answers do not depend on the batch size, the order of questions, which
other questions share its batch, or the number of devices.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from se_jax.parallel import mesh as mesh_lib
from se_jax.generation import sampling_math
from se_jax.generation import stopping
from se_jax.data import prompts as prompt_lib
from se_jax.io.hidden_states import POSITIONS
from se_jax.parallel.distributed import to_host
from se_jax.parallel.mesh import ShardingRules
from se_jax.models.llama import KVCache, LlamaConfig
from se_jax.models.padding import left_pad

DEFAULT_BUCKETS: tuple[int, ...] = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One generated answer.

    token_ids: the answer's tokens (stop text and EOS dropped; an empty answer keeps its
    first token). token_logprobs: log p(token | prefix) under the model at T=1.
    """
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    sum_logprob: float
    mean_logprob: float

    @classmethod
    def from_tokens(cls, text: str, token_ids: list[int], logprobs: list[float]) -> "Answer":
        total = float(np.sum(logprobs, dtype=np.float64)) if logprobs else 0.0
        mean = total / len(logprobs) if logprobs else 0.0
        return cls(text, token_ids, logprobs, total, mean)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RawRows:
    """Host copy of what the decode loop produced for one batch (R rows).

    tokens int32[R, N], logprobs float32[R, N], lengths int32[R] (tokens generated per row,
    including the one that stopped it), steps: loop iterations run.
    """
    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    steps: int
    hidden: "DeviceStates | None" = None   # kept residual streams (KeepHidden), on device


@dataclasses.dataclass(frozen=True)
class KeepHidden:
    """Which residual streams the sampler keeps: `layers` numbered as
    `Llama.hidden_states` (0 = embeddings' output, i = decoder layer i's output, -1 = the
    final normed stream), at `positions` among "tbg" (last prompt token) and "slt" (row 0's
    answer, `slt_step`)."""
    layers: tuple[int, ...]
    positions: tuple[str, ...] = POSITIONS

    def __post_init__(self):
        if not self.layers or not self.positions \
                or any(p not in POSITIONS for p in self.positions):
            raise ValueError(f"KeepHidden: need layers and positions among {POSITIONS}, got "
                             f"{self.layers!r}, {self.positions!r}")

    @property
    def slt(self) -> bool:
        return "slt" in self.positions


def slt_step(answer_tokens: int) -> int:
    """The forward step whose residual stream is an answer's SLT, for an answer of
    `answer_tokens` tokens (stop text and EOS cut): step 0 is the prefill (its last prompt
    token), step k >= 1 the decode step that fed answer token k - 1.

    As Kossen et al. 2024 pick it (OATML/semantic-entropy-probes, huggingface_models.py:
    `hidden[n_generated - 2]`, where Hugging Face's hidden[0] is the prefill and hidden[k]
    the step feeding generated token k - 1, n_generated the answer's tokens before the stop
    word): the forward pass that emitted the answer's second-to-last token. Answers of one
    or two tokens take the prefill's (= TBG; their code wraps to hidden[-1] for one token).
    """
    return max(answer_tokens - 2, 0)


@dataclasses.dataclass(frozen=True)
class DeviceStates:
    """One batch's kept residual streams, still on the devices (batch-sharded, B prompts).

    tbg: [B, L, E], the prefill's last prompt token; steps: [B, N, L, E] or None (SLT not
    kept): row 0 of each prompt at decode step k in slot k (slot 0 unused: step 0 is tbg).
    """
    tbg: jax.Array
    steps: jax.Array | None
    mesh: Mesh | None
    rules: ShardingRules

    def fetch(self, positions: Sequence[str], slt_steps: np.ndarray) -> np.ndarray:
        """float32[n, P, L, E] for the first n = len(slt_steps) prompts, at `positions`;
        slt_steps: int[n] (`slt_step` of each prompt's row-0 answer). One gather on the
        devices, so only [B, P, L, E] crosses to the host."""
        n, b = len(slt_steps), self.tbg.shape[0]
        at = np.zeros((b,), np.int32)
        at[:n] = slt_steps
        kept = _gather_states(self.tbg, self.steps, put_batch(at, self.mesh, self.rules),
                              positions=tuple(positions))
        return to_host(kept)[:n]


# ----------------------------------------------------------------------------- keys

def stable_hash(question_id: str) -> int:
    """uint32 hash of a question id, the same in every process (not Python's hash())."""
    return int.from_bytes(hashlib.sha256(str(question_id).encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------- shapes

def bucket_length(length: int, buckets: Sequence[int], cap: int) -> int:
    """Padded prompt length: the smallest bucket >= length; past the largest bucket, the
    next multiple of it; never more than `cap` (the longest prompt allowed)."""
    if length > cap:
        raise ValueError(f"prompt of {length} tokens exceeds the longest allowed ({cap})")
    fitting = [b for b in buckets if b >= length]
    if fitting:
        return min(min(fitting), cap)
    largest = max(buckets)
    return min(-(-length // largest) * largest, cap)


def max_prompt_length(model_config: LlamaConfig, max_new_tokens: int,
                      max_seq_len: int | None = None) -> int:
    """Longest prompt that leaves room for `max_new_tokens` in the context and the cache."""
    context = model_config.max_position_embeddings
    if max_seq_len:
        context = min(context, max_seq_len)
    return context - max_new_tokens + 1


def _batch_spec(x: jax.Array | np.ndarray, mesh: Mesh, rules: ShardingRules) -> NamedSharding:
    return mesh_lib.logical_sharding(mesh, rules, ("batch",) + (None,) * (x.ndim - 1), x.shape)


def _constrain_batch(x: jax.Array, mesh: Mesh | None, rules: ShardingRules) -> jax.Array:
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, _batch_spec(x, mesh, rules))


def put_batch(x: np.ndarray, mesh: Mesh | None, rules: ShardingRules) -> jax.Array:
    """A host batch [B, ...] on the devices, split along B over the mesh's batch axes."""
    return jnp.asarray(x) if mesh is None else jax.device_put(x, _batch_spec(x, mesh, rules))


# ----------------------------------------------------------------------------- jitted core

@functools.partial(jax.jit, static_argnames=("graphdef", "rows_per_prompt", "extra_slots",
                                             "mesh", "rules", "keep"))
def _prefill(graphdef, state, tokens, positions, *, rows_per_prompt: int, extra_slots: int,
             mesh: Mesh | None, rules: ShardingRules, keep: tuple[int, ...] = ()):
    """Prefill [B, P] once; return the prompts' cache, the answer rows' empty cache and the
    last logits repeated per answer row.

    Returns (prompt cache: B rows, P slots, read by each prompt's `rows_per_prompt` rows as
    their `context`; answer cache: R = B * rows_per_prompt rows, `extra_slots` slots;
    logits float32[R, V]), and when `keep` names layers, the last prompt token's residual
    stream at them [B, L, E] (TBG; prompts are left-padded, so the last column).
    """
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    prompts = KVCache.init(model.config, b, p)
    if keep:
        h, prompts, tbg = model.hidden_states(tokens, positions, keep, prompts)
    else:
        h, prompts = model.hidden(tokens, positions, prompts)
    logits = model.logits(h[:, -1:])[:, 0]                              # [B, V]
    answers = KVCache.init(model.config, b * rows_per_prompt, extra_slots)
    if mesh is not None:
        prompts, answers = (jax.lax.with_sharding_constraint(
            c, c.shardings(mesh, rules)) for c in (prompts, answers))
    logits = _constrain_batch(jnp.repeat(logits, rows_per_prompt, axis=0), mesh, rules)
    if keep:
        return prompts, answers, logits, _constrain_batch(tbg, mesh, rules)
    return prompts, answers, logits


@dataclasses.dataclass(frozen=True)
class _StopArrays:
    eos: jax.Array
    has_text: jax.Array
    stop_if_started: jax.Array
    stop_always: jax.Array


jax.tree_util.register_dataclass(_StopArrays, data_fields=[f.name for f in
                                 dataclasses.fields(_StopArrays)], meta_fields=[])


@functools.partial(jax.jit, donate_argnames=("cache",),
                   static_argnames=("graphdef", "max_new_tokens", "top_k", "top_p", "keep",
                                    "rows_per_prompt", "mesh", "rules"))
def _decode(graphdef, state, prompts: KVCache, cache: KVCache, logits, seed, id_hash,
            sample_index, temperature, next_position, done, stop: _StopArrays, *,
            max_new_tokens: int, top_k: int, top_p: float, keep: tuple[int, ...] = (),
            rows_per_prompt: int = 1, mesh: Mesh | None = None,
            rules: ShardingRules = ShardingRules()):
    """Decode all rows together until each is done or has max_new_tokens tokens.

    prompts: the prompts' cache, each row read by its prompt's answer rows (`context`);
    cache: the answer rows' own (the generated tokens' keys and values);
    logits: float32[R, V] (prefill's); seed: int32[]; id_hash: uint32[R] and
    sample_index: int32[R] (each row's key, `sampling_math.row_keys`); temperature: f32[R];
    next_position: int32[R] (position of the first generated token = prompt length);
    done: bool[R] (True for dummy rows). Returns tokens int32[R, N], logprobs f32[R, N],
    lengths int32[R], steps int32[], and the final cache (returned so that the donated
    input buffers are reused in place by the loop rather than copied).

    keep (layers, `Llama.hidden_states`): also return [B, N, L, E], the residual stream of
    row 0 of each prompt's `rows_per_prompt` rows at every step (slot = step; `DeviceStates`).
    """
    model = nnx.merge(graphdef, state)
    rows = logits.shape[0]
    keys = sampling_math.row_keys(seed, id_hash, sample_index)

    def sample(carry, logits):
        step = carry["step"]
        tok, lp = sampling_math.sample_step(logits, sampling_math.step_keys(keys, step),
                                            temperature, top_k, top_p)
        was_done = carry["done"]
        finished = stop.eos[tok] | jnp.where(carry["started"], stop.stop_if_started[tok],
                                             stop.stop_always[tok])
        return dict(
            carry,
            tokens=jax.lax.dynamic_update_slice(carry["tokens"], tok[:, None], (0, step)),
            logprobs=jax.lax.dynamic_update_slice(carry["logprobs"], lp[:, None], (0, step)),
            lengths=jnp.where(was_done, carry["lengths"], step + 1),
            started=carry["started"] | stop.has_text[tok],
            done=was_done | finished,
            step=step + 1)

    carry = dict(tokens=jnp.zeros((rows, max_new_tokens), jnp.int32),
                 logprobs=jnp.zeros((rows, max_new_tokens), jnp.float32),
                 lengths=jnp.zeros((rows,), jnp.int32), started=jnp.zeros((rows,), bool),
                 done=done, step=jnp.zeros((), jnp.int32), cache=cache)
    if keep:
        shape = (rows // rows_per_prompt, max_new_tokens, len(keep), model.config.hidden_size)
        carry["states"] = _constrain_batch(jnp.zeros(shape, model.config.dtype), mesh, rules)
    carry = sample(carry, logits)

    def cond(carry):
        return (carry["step"] < max_new_tokens) & ~jnp.all(carry["done"])

    def body(carry):
        step = carry["step"]
        prev = jax.lax.dynamic_slice_in_dim(carry["tokens"], step - 1, 1, axis=1)  # [R, 1]
        position = (next_position + step - 1)[:, None]
        if not keep:
            logits, cache = model(prev, position, carry["cache"], context=prompts)
            return sample(dict(carry, cache=cache), logits[:, 0])
        h, cache, kept = model.hidden_states(prev, position, keep, carry["cache"],
                                             context=prompts)
        states = _record_row0(carry["states"], kept, step, rows_per_prompt)
        return sample(dict(carry, cache=cache, states=states), model.logits(h)[:, 0])

    carry = jax.lax.while_loop(cond, body, carry)
    out = (carry["tokens"], carry["logprobs"], carry["lengths"], carry["step"],
           carry["cache"])
    return out + (carry["states"],) if keep else out


def _record_row0(states: jax.Array, kept: jax.Array, step: jax.Array,
                 rows_per_prompt: int) -> jax.Array:
    """Write row 0 of each prompt's rows of kept [R, L, E] into states [B, N, L, E] at
    slot `step` (rows are prompt-major, so a reshape: no cross-shard gather)."""
    b = states.shape[0]
    row0 = kept.reshape((b, rows_per_prompt) + kept.shape[1:])[:, 0]
    return jax.lax.dynamic_update_slice(states, row0[:, None].astype(states.dtype),
                                        (0, step, 0, 0))


@functools.partial(jax.jit, static_argnames=("positions",))
def _gather_states(tbg: jax.Array, steps: jax.Array | None, at: jax.Array, *,
                   positions: tuple[str, ...]) -> jax.Array:
    """float32[B, P, L, E]: tbg [B, L, E] for "tbg"; for "slt" slot at[b] of steps
    [B, N, L, E] (slot 0 = tbg itself)."""
    def slt():
        picked = jnp.take_along_axis(steps, at[:, None, None, None], axis=1)[:, 0]
        return jnp.where((at == 0)[:, None, None], tbg.astype(steps.dtype), picked)
    parts = {"tbg": lambda: tbg, "slt": slt}
    return jnp.stack([parts[p]().astype(jnp.float32) for p in positions], axis=1)


# ----------------------------------------------------------------------------- host API

def _encode(tokenizer, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    return [prompt_lib.encode_prompt(tokenizer, p) if isinstance(p, str) else list(p)
            for p in prompts]


def decode_batch(model, prompt_ids: Sequence[Sequence[int]], ids: Sequence[str], *,
                 temperatures: Sequence[float], batch_size: int, max_new_tokens: int,
                 stop: stopping.StopTables, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_seq_len: int | None = None, mesh: Mesh | None = None,
                 rules: ShardingRules = ShardingRules(),
                 keep: KeepHidden | None = None) -> RawRows:
    """Run prefill + decode for at most `batch_size` prompts (rows = prompt-major).

    The batch is padded to `batch_size` prompts (rounded up to the batch shards), so every
    batch of a run has the same shape and only the bucket length varies. `keep`: the
    result's `hidden` holds the kept residual streams (`DeviceStates`), else None.
    """
    n = len(prompt_ids)
    if not 0 < n <= batch_size:
        raise ValueError(f"decode_batch got {n} prompts for batch_size={batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {top_k}, {top_p}")
    r = len(temperatures)
    shards = mesh_lib.batch_shards(mesh, rules)
    b = -(-batch_size // shards) * shards
    cap = max_prompt_length(model.config, max_new_tokens, max_seq_len)
    length = bucket_length(max(len(p) for p in prompt_ids), buckets, cap)
    tokens, positions = left_pad(prompt_ids, length, b)

    hashes = np.zeros((b,), np.uint32)
    hashes[:n] = [stable_hash(i) for i in ids]
    row_hash = np.repeat(hashes, r)
    row_index = np.tile(np.arange(r, dtype=np.int32), b)
    row_temp = np.tile(np.asarray(temperatures, np.float32), b)
    prompt_len = np.zeros((b,), np.int32)
    prompt_len[:n] = [len(p) for p in prompt_ids]
    row_done = np.repeat(np.arange(b) >= n, r)

    graphdef, state = nnx.split(model)
    put = functools.partial(put_batch, mesh=mesh, rules=rules)
    # Only what is asked for enters the programs: off, they are the ones traced without it.
    prefill_keep = dict(keep=tuple(keep.layers)) if keep else {}
    decode_keep = (dict(keep=tuple(keep.layers), rows_per_prompt=r, mesh=mesh, rules=rules)
                   if keep and keep.slt else {})
    prompts, cache, logits, *tbg = _prefill(
        graphdef, state, put(tokens), put(positions), rows_per_prompt=r,
        extra_slots=max(max_new_tokens - 1, 1), mesh=mesh, rules=rules, **prefill_keep)
    stop_arrays = _StopArrays(*(jnp.asarray(getattr(stop, f.name))
                                for f in dataclasses.fields(_StopArrays)))
    out = _decode(graphdef, state, prompts, cache, logits, np.int32(seed), put(row_hash),
                  put(row_index), put(row_temp), put(np.repeat(prompt_len, r)),
                  put(row_done), stop_arrays,
                  max_new_tokens=max_new_tokens, top_k=int(top_k), top_p=float(top_p),
                  **decode_keep)
    toks, lps, lens, steps = (to_host(x) for x in out[:4])  # the cache is dropped on device
    hidden = (DeviceStates(tbg[0], out[5] if decode_keep else None, mesh, rules)
              if keep else None)
    return RawRows(toks[:n * r], lps[:n * r], lens[:n * r], int(steps), hidden)


def generate(model, tokenizer, prompts: Sequence[str | Sequence[int]], ids: Sequence[str],
             **kwargs) -> list[list[Answer]]:
    """`len(temperatures)` answers for each prompt: answers[i][j] is row j of prompt i
    (the arguments of `generate_with_states`, without `keep`)."""
    return generate_with_states(model, tokenizer, prompts, ids, keep=None, **kwargs)[0]


def generate_with_states(
        model, tokenizer, prompts: Sequence[str | Sequence[int]], ids: Sequence[str], *,
        temperatures: Sequence[float], keep: KeepHidden | None, max_new_tokens: int = 64,
        top_k: int = 0, top_p: float = 1.0, seed: int = 0,
        stop_strings: Sequence[str] = stopping.DEFAULT_STOP_STRINGS,
        eos_ids: Sequence[int] | None = None, batch_size: int = 8,
        buckets: Sequence[int] = DEFAULT_BUCKETS, max_seq_len: int | None = None,
        mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()
        ) -> tuple[list[list[Answer]], np.ndarray | None]:
    """`len(temperatures)` answers for each prompt (answers[i][j] is row j of prompt i),
    and with `keep` the residual streams float32[N, P, L, E] of each prompt at
    keep.positions x keep.layers (SLT: of its row-0 answer), else None.

    Args:
      model: a `Llama` (sharded as loaded). tokenizer: its Hugging Face tokenizer.
      prompts: prompt texts (format_prompt) or token-id lists. ids: question ids (keys).
      temperatures: one per answer row of every prompt; 0 = greedy.
      top_k, top_p: support filters after temperature (0 / 1.0 = off).
      stop_strings: cut answers there (see `stopping`); eos_ids: None = tokenizer's EOS
        and end-of-turn tokens; () never stops early (fixed-length benchmarks).
      batch_size: prompts per compiled batch (rounded up to the mesh's batch shards).
      buckets: prompt lengths padded to; max_seq_len: cap of prompt + answer length.
      mesh, rules: batch dims are sharded by `rules.batch` (default over "data" and
        "fsdp"); None = default device.
      keep: the residual streams to keep (`KeepHidden`); None = none (the programs of
        before the option).
    """
    if len(prompts) != len(ids):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} ids")
    eos = stopping.eos_ids(tokenizer) if eos_ids is None else tuple(eos_ids)
    stop = stopping.stop_tables(tokenizer, tuple(stop_strings), eos, model.config.vocab_size)
    prompt_ids = _encode(tokenizer, prompts)
    r = len(temperatures)
    answers: list[list[Answer]] = []
    states: list[np.ndarray] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        raw = decode_batch(model, chunk, ids[start:start + batch_size],
                           temperatures=temperatures, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, stop=stop, top_k=top_k, top_p=top_p,
                           seed=seed, buckets=buckets, max_seq_len=max_seq_len, mesh=mesh,
                           rules=rules, keep=keep)
        batch = [[_answer(tokenizer, raw, i * r + j, stop_strings, eos) for j in range(r)]
                 for i in range(len(chunk))]
        answers += batch
        if keep:
            steps = np.asarray([slt_step(len(rows[0].token_ids)) for rows in batch])
            states.append(raw.hidden.fetch(keep.positions, steps))
    if not keep:
        return answers, None
    empty = np.zeros((0, len(keep.positions), len(keep.layers), model.config.hidden_size),
                     np.float32)
    return answers, np.concatenate(states) if states else empty


def _answer(tokenizer, raw: RawRows, row: int, stop_strings: Sequence[str],
            eos: Sequence[int]) -> Answer:
    n = int(raw.lengths[row])
    text, toks, lps = stopping.cut_answer(tokenizer, raw.tokens[row, :n].tolist(),
                                          raw.logprobs[row, :n].tolist(), stop_strings, eos)
    return Answer.from_tokens(text, toks, lps)


def sample_answers(model, tokenizer, prompts, ids, *, num_samples: int = 10,
                   temperature: float = 1.0, low_temperature: float = 0.1,
                   **kwargs) -> tuple[list[Answer], list[list[Answer]]]:
    """The semantic-entropy set: per prompt one low-temperature "most likely" answer (key
    index 0) and `num_samples` samples at `temperature` (key indices 1..M), all decoded in
    the same loop from one prefill. Returns (most_likely[i], samples[i][m])."""
    most_likely, samples, _ = sample_answers_and_states(
        model, tokenizer, prompts, ids, num_samples=num_samples, temperature=temperature,
        low_temperature=low_temperature, keep=None, **kwargs)
    return most_likely, samples


def sample_answers_and_states(model, tokenizer, prompts, ids, *, keep: KeepHidden | None,
                              num_samples: int = 10, temperature: float = 1.0,
                              low_temperature: float = 0.1, **kwargs
                              ) -> tuple[list[Answer], list[list[Answer]], np.ndarray | None]:
    """`sample_answers`, and the kept residual streams float32[N, P, L, E] (SLT: of the
    most likely answer), None without `keep`; from the same prefill and decode loop."""
    temps = (low_temperature,) + (temperature,) * num_samples
    rows, states = generate_with_states(model, tokenizer, prompts, ids, temperatures=temps,
                                        keep=keep, **kwargs)
    return [r[0] for r in rows], [r[1:] for r in rows], states


def greedy_answers(model, tokenizer, prompts, ids=None, **kwargs) -> list[Answer]:
    """One greedy (T=0) answer per prompt (evaluation)."""
    return greedy_answers_and_states(model, tokenizer, prompts, ids, keep=None, **kwargs)[0]


def greedy_answers_and_states(model, tokenizer, prompts, ids=None, *,
                              keep: KeepHidden | None, **kwargs
                              ) -> tuple[list[Answer], np.ndarray | None]:
    """`greedy_answers`, and the kept residual streams float32[N, P, L, E] (SLT: of the
    greedy answer), None without `keep`."""
    ids = [str(i) for i in range(len(prompts))] if ids is None else ids
    rows, states = generate_with_states(model, tokenizer, prompts, ids, temperatures=(0.0,),
                                        keep=keep, **kwargs)
    return [r[0] for r in rows], states
