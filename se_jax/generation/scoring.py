"""The one next-token scorer: log-probabilities of label tokens after many prompts that
share a prefix (the LLM entailment judge, the correctness judge, anything that reads them).

    scorer = NextTokenScorer(model, mesh=mesh, batch_size=16)
    prefix = scorer.prefill(prefix_ids)                    # once per process
    lp = scorer.score(suffix_ids, label_ids, prefix)       # float32[N, K]
    lp_unshared = scorer.score(full_ids, label_ids)        # same numbers, prefix re-read

How (decoder contract, docs/contracts.md "Decoder"):
1. `_prefill` (jit): the shared prefix, one row, into a KVCache of P slots.
2. Suffixes are sorted by length and cut into batches of one padded length (multiples of
   `bucket` tokens), right-padded (positions -1), positions continuing at P.
3. `_score` (jit, graphdef static): one `model.hidden(tokens, positions, context=prefix)`
   call runs the suffixes, each row reading the one-row prefix cache before its own keys,
   and the log-softmax at each row's last real token is read at the label ids. Without a
   prefix the same function runs the full prompts with no context.
Batch dims are sharded over the mesh's batch axes; the model keeps the sharding it was
loaded with (fsdp / tensor), so a 70B judge runs where the generator would.

`PromptScorer` puts a judge prompt (se_jax.data.prompts.JudgePrompt) on top: it renders
and tokenises the items, prefills the prompt's shared part once, and returns one score per
label (log-sum-exp over the words that count as that label).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from se_jax.parallel import mesh as mesh_lib
from se_jax.data import prompts as prompt_lib
from se_jax.parallel.mesh import ShardingRules
from se_jax.models.llama import KVCache
from se_jax.parallel.distributed import to_host
from se_jax.generation.sampling import put_batch

# ----------------------------------------------------------------------------- shapes


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; beyond the largest, the next multiple of it."""
    for b in sorted(buckets):
        if length <= b:
            return b
    top = max(buckets)
    return -(-length // top) * top


def length_batches(lengths: Sequence[int], batch_size: int, pad_to
                   ) -> list[tuple[np.ndarray, int]]:
    """(item indices, padded length) per batch: items sorted by length, at most
    `batch_size` per batch, all of one padded length `pad_to(length)`."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    out: list[tuple[np.ndarray, int]] = []
    start = 0
    while start < len(order):
        length = pad_to(lengths[order[start]])
        stop = start
        while (stop < len(order) and stop - start < batch_size
               and lengths[order[stop]] <= length):
            stop += 1
        chunk = order[start:stop]
        out.append((chunk, pad_to(lengths[chunk[-1]])))
        start = stop
    return out


def padded_rows(n: int, shards: int, batch_size: int) -> int:
    """Rows for a batch of n items: the batch size, or for a short last batch the next
    power-of-two multiple of the batch shards (few compiled shapes, little waste)."""
    rows = shards
    while rows < n:
        rows *= 2
    return min(rows, batch_size)


# ----------------------------------------------------------------------------- jitted core

@functools.partial(jax.jit, static_argnames="graphdef")
def _prefill(graphdef, state, tokens, positions) -> KVCache:
    """tokens, positions int32[1, P] -> KVCache with 1 row and P filled slots."""
    model = nnx.merge(graphdef, state)
    cache = KVCache.init(model.config, 1, tokens.shape[1])
    _, cache = model.hidden(tokens, positions, cache)
    return cache


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh", "rules"))
def _score(graphdef, state, prefix: KVCache | None, tokens, positions, last, label_ids, *,
           mesh: Mesh | None, rules: ShardingRules):
    """Label log-probabilities at each row's last real token.

    prefix: KVCache of 1 row and P slots, or None; tokens, positions: int32[B, T] (right-padded,
    positions P.. and -1 on padding); last: int32[B] index of the last real token;
    label_ids: int32[K]. Returns float32[B, K].
    """
    model = nnx.merge(graphdef, state)
    h, _ = model.hidden(tokens, positions, context=prefix)   # every row reads the one prefix
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)            # [B, 1, E]
    logprobs = jax.nn.log_softmax(model.logits(h_last)[:, 0], axis=-1)      # [B, V]
    out = logprobs[:, label_ids]
    if mesh is not None:
        out = jax.lax.with_sharding_constraint(
            out, mesh_lib.logical_sharding(mesh, rules, ("batch", None), out.shape))
    return out


# ----------------------------------------------------------------------------- token level

@dataclasses.dataclass(frozen=True)
class Prefix:
    """A prefilled shared prefix: cache (one [1, Hkv, P, Dh] per layer) and its length P."""
    cache: KVCache
    length: int


class NextTokenScorer:
    """Label log-probabilities after prompts, sharing one prefilled prefix (or none).

    Args:
      model: a loaded `Llama` (sharded as loaded when `mesh` is given).
      mesh, rules: batch dims split over `rules.batch`; None = the mesh the model was
        loaded on (`load_llama(..., mesh=)` records it), else the default device.
      batch_size: suffixes per forward (rounded up to the batch shards).
      bucket: suffix lengths are padded to multiples of this (one compile per length).
      pad_id: token written in padding slots (masked out).
    """

    def __init__(self, model: Any, *, mesh: Mesh | None = None,
                 rules: ShardingRules | None = None, batch_size: int = 16,
                 bucket: int = 16, pad_id: int = 0):
        if mesh is None and getattr(model, "mesh_rules", None) is not None:
            mesh, rules = model.mesh_rules
        self.graphdef, self.state = nnx.split(model)
        self.max_len = int(model.config.max_position_embeddings)
        self.mesh, self.rules = mesh, rules or ShardingRules()
        self.shards = mesh_lib.batch_shards(mesh, self.rules)
        self.batch_size = -(-batch_size // self.shards) * self.shards
        self.bucket, self.pad_id = int(bucket), int(pad_id)

    def prefill(self, prefix_ids: Sequence[int]) -> Prefix:
        """Prefill the shared prefix once (one row)."""
        if not len(prefix_ids):
            raise ValueError("an empty prefix has nothing to prefill; score without one")
        p = len(prefix_ids)
        tokens = np.asarray([prefix_ids], np.int32)
        positions = np.arange(p, dtype=np.int32)[None]
        return Prefix(_prefill(self.graphdef, self.state, tokens, positions), p)

    def batches(self, lengths: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        """(suffix indices, padded length) of each forward."""
        return length_batches(lengths, self.batch_size,
                              lambda n: -(-n // self.bucket) * self.bucket)

    def score(self, suffixes: Sequence[Sequence[int]], label_ids: Sequence[int],
              prefix: Prefix | None = None) -> np.ndarray:
        """float32[N, K]: log p(label_ids[k] | prefix + suffixes[n]) at the suffix's end."""
        if not len(suffixes):
            return np.zeros((0, len(label_ids)), np.float32)
        p = prefix.length if prefix is not None else 0
        lengths = [len(s) for s in suffixes]
        if min(lengths) < 1:
            raise ValueError("every suffix needs at least one token (the label position)")
        if p + max(lengths) > self.max_len:
            raise ValueError(f"a prompt of {p + max(lengths)} tokens exceeds the judge's "
                             f"context ({self.max_len})")
        labels = jnp.asarray(np.asarray(label_ids, np.int32))
        cache = prefix.cache if prefix is not None else None
        put = functools.partial(put_batch, mesh=self.mesh, rules=self.rules)
        pending = []                     # dispatch every batch, then fetch (async)
        for chunk, length in self.batches(lengths):
            rows = padded_rows(len(chunk), self.shards, self.batch_size)
            tokens = np.full((rows, length), self.pad_id, np.int32)
            positions = np.full((rows, length), -1, np.int32)
            last = np.zeros((rows,), np.int32)
            for r, i in enumerate(chunk):
                n = lengths[i]
                tokens[r, :n] = suffixes[i]
                positions[r, :n] = np.arange(p, p + n)
                last[r] = n - 1
            out = _score(self.graphdef, self.state, cache, put(tokens), put(positions),
                         put(last), labels, mesh=self.mesh, rules=self.rules)
            pending.append((chunk, out))
        result = np.empty((len(suffixes), len(label_ids)), np.float32)
        for chunk, out in pending:
            result[chunk] = to_host(out)[:len(chunk)]
        return result


# ----------------------------------------------------------------------------- prompt level

def label_token_ids(tokenizer: Any, prompt: prompt_lib.JudgePrompt, chat: bool
                    ) -> tuple[list[int], list[int]]:
    """(first token id of every label word, index of the label it counts for).

    Plain prompts end in a cue ("Label:"), so the words follow a space; chat models start
    the assistant turn with the word. ValueError when two labels share a first token."""
    ids, owner = [], []
    for k, (name, words) in enumerate(prompt.labels):
        for w in words:
            tok = tokenizer(w if chat else " " + w, add_special_tokens=False)["input_ids"][0]
            if tok in ids and owner[ids.index(tok)] != k:
                raise ValueError(f"judge prompt {prompt.name!r}: labels "
                                 f"{prompt.labels[owner[ids.index(tok)]][0]!r} and {name!r} "
                                 f"share the first token {tok}; they cannot be told apart")
            if tok not in ids:
                ids.append(tok)
                owner.append(k)
    return ids, owner


class PromptScorer:
    """Per-label log-probabilities of a judge prompt's items over one decoder.

    shared=True prefills the prompt's shared part (chat header, instruction, examples)
    once, at construction; shared=False scores every full prompt from scratch (the same
    tokens: used to check and to measure the sharing).
    """

    def __init__(self, scorer: NextTokenScorer, tokenizer: Any,
                 prompt: prompt_lib.JudgePrompt, *, chat: bool | None = None,
                 shared: bool = True):
        self.scorer, self.tokenizer, self.prompt = scorer, tokenizer, prompt
        self.chat = prompt_lib.has_chat_template(tokenizer) if chat is None else chat
        self.label_ids, self.owner = label_token_ids(tokenizer, prompt, self.chat)
        head, _ = prompt_lib.render_judge_prompt(tokenizer, prompt, [], chat=self.chat)
        # The last token of the prefix text may merge with the item's first characters in
        # the whole prompt; the shared ids stop one token short of it.
        self.prefix_ids = prompt_lib.encode_prompt(tokenizer, head)[:-1] if head else []
        self.prefix = (scorer.prefill(self.prefix_ids) if shared and self.prefix_ids
                       else None)

    def full_ids(self, items: Sequence[dict[str, str]]) -> list[list[int]]:
        """Token ids of each item's whole prompt (as a plain forward would read them)."""
        head, tails = prompt_lib.render_judge_prompt(self.tokenizer, self.prompt, items,
                                                     chat=self.chat)
        return [prompt_lib.encode_prompt(self.tokenizer, head + t) for t in tails]

    def __call__(self, items: Sequence[dict[str, str]]) -> np.ndarray:
        """float32[N, num labels], labels in `prompt.labels` order."""
        full = self.full_ids(items)
        if self.prefix is not None:
            p = self.prefix.length
            for i, ids in enumerate(full):
                if ids[:p] != self.prefix_ids:
                    raise ValueError(f"judge prompt {self.prompt.name!r}: item {i} "
                                     f"({items[i]}) does not tokenise to the shared prefix "
                                     f"followed by its own tokens")
            full = [ids[p:] for ids in full]
        lp = self.scorer.score(full, self.label_ids, self.prefix)          # [N, words]
        owner = np.asarray(self.owner)
        return np.stack([np.logaddexp.reduce(lp[:, owner == k], axis=1)
                         for k in range(len(self.prompt.labels))], axis=1)


def make_prompt_scorer(model: Any, tokenizer: Any, prompt_name: str, num_shots: int | None,
                       kind: str, *, batch_size: int = 16, mesh: Any = None,
                       rules: Any = None) -> Any:
    """A `PromptScorer` for judge prompt `prompt_name` (configs/judge_prompts.py)
    of the given kind, its shared prefix prefilled. Both LLM judges build theirs here."""
    prompt = prompt_lib.load_judge_prompt(prompt_name, num_shots)
    if prompt.kind != kind:
        raise ValueError(f"judge prompt {prompt_name!r} is a {prompt.kind!r} prompt; a "
                         f"{kind!r} one is needed here")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base = NextTokenScorer(model, mesh=mesh, rules=rules,
                                   batch_size=batch_size, pad_id=pad)
    return PromptScorer(base, tokenizer, prompt)
