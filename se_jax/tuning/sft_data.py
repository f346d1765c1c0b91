"""SFT examples -> token sequences -> padded, length-bucketed batches in a resumable order.

A sequence is the prompt exactly as the sampler saw it (`se_jax.data.prompts.format_prompt`
+ `encode_prompt`), then the target's tokens, then the end-of-turn token the sampler stops on:

    [prompt ids] [target ids] [eos]      loss on target + eos (or on everything)

With the target-only loss a run's batches can be narrowed (`BatchLayout`, chosen by
`se_jax.tuning.training.batch_layout`): the prompts' common head (`shared_prefix_length`) leaves
the rows and runs once per batch shard, and the targets/loss mask keep only the supervised
columns (`loss_width`), so the output head over the vocabulary skips the prompt.

The order of the batches of epoch e is a pure function of (seed, e) (`epoch_batches`), so a
run resumed at any step sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from se_jax.data import prompts


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """One tokenised example: ids int32[L] and the index where the target starts."""
    id: str
    ids: np.ndarray
    target_start: int


def tokenize_example(tokenizer: Any, example: Mapping[str, Any], *, eos_id: int,
                     prompt_kwargs: Mapping[str, Any] | None = None) -> TokenizedExample:
    """sft.jsonl record {"id", "question", "target", ...} -> token ids (see module doc).

    `prompt_kwargs`: `config.prompt.format_kwargs()`, exactly what the sampler used;
    a record's own "prompt_style" (the teach set of several answer settings) overrides the
    style.
    """
    kwargs = dict(prompt_kwargs or {})
    if example.get("prompt_style"):
        kwargs["style"] = example["prompt_style"]
    prompt = prompts.format_prompt(tokenizer, example["question"], **kwargs)
    prompt_ids = prompts.encode_prompt(tokenizer, prompt)
    target_ids = list(tokenizer(example["target"], add_special_tokens=False)["input_ids"])
    ids = np.asarray(prompt_ids + target_ids + [eos_id], np.int32)
    return TokenizedExample(str(example["id"]), ids, len(prompt_ids))


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  bucket_batches: int = 8) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one epoch, a pure function of its args.

    Shuffle all examples with an RNG seeded by (seed, epoch); cut the order into windows of
    `bucket_batches` batches, sort each window by length (so a batch holds similar lengths
    and pads little), split it into batches, and shuffle the batch order. The last batch may
    be short; `make_batch` pads it with empty rows.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    window = batch_size * max(bucket_batches, 1)
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padded_length(n: int, multiple: int) -> int:
    """Round n up to a multiple (fewer distinct shapes, fewer compilations)."""
    return -(-n // multiple) * multiple


def shared_prefix_length(seqs: Sequence[TokenizedExample], multiple: int = 8,
                         pad_multiple: int | None = None) -> int:
    """The tokens every sequence starts with and no loss position reads (target-only loss),
    rounded down to `multiple`: the prompt template's fixed head (system prompt, instruction,
    few-shot examples), which training runs once per batch shard instead of once per row.

    Rounding down makes runs on different questions (an LCP may run into a common first
    word) share one compiled step. 0 when the sequences share less than `multiple` tokens.

    pad_multiple (the rows' padding): the step folds the head into the batch as rows of the
    batch's padded length (`Llama.hidden(prefix=)`), so a head longer than the shortest
    padded row is cut to whole rows of that length; the rest stays in the rows, where a
    few more tokens usually fit in the padding, instead of a second, mostly empty head row.
    """
    first = seqs[0].ids
    n = min(min(s.target_start for s in seqs) - 1, len(first))
    for s in seqs[1:]:
        diff = np.flatnonzero(s.ids[:n] != first[:n])
        n = min(n, int(diff[0]) if diff.size else n)
    n = max(n, 0) // multiple * multiple
    if pad_multiple and n:
        shortest = padded_length(min(len(s.ids) for s in seqs) - n, pad_multiple)
        if n > shortest:
            n = n // shortest * shortest
    return n


def loss_width(seqs: Sequence[TokenizedExample], minimum: int = 8) -> int:
    """Columns that hold every row's supervised positions (target-only loss): the longest
    target + eos, rounded up to a power of two >= `minimum`. The output head and the
    cross-entropy run on these, not on the prompt. Powers of two, because the width is a
    compile key: runs of a sweep whose targets differ a little share one step program."""
    need = max(len(s.ids) - s.target_start for s in seqs)
    return max(minimum, 1 << (need - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How one run's examples become batches (`make_batch`'s settings). Fixed per run: the
    shapes it gives are keys of the compiled step, so runs with equal layouts share one."""
    pad_multiple: int = 32
    target_only: bool = True
    prefix_len: int = 0
    loss_columns: int | None = None
    per_example: bool = False

    def batch(self, seqs: Sequence[TokenizedExample], batch_size: int,
              pad_id: int = 0) -> dict[str, np.ndarray]:
        return make_batch(seqs, batch_size, pad_id=pad_id, **dataclasses.asdict(self))

    def prefix(self, seqs: Sequence[TokenizedExample]) -> np.ndarray | None:
        """int32[1, P]: the shared prefix's tokens, or None without one."""
        return seqs[0].ids[None, :self.prefix_len] if self.prefix_len else None


def make_batch(seqs: Sequence[TokenizedExample], batch_size: int, *, pad_multiple: int = 32,
               target_only: bool = True, pad_id: int = 0, prefix_len: int = 0,
               loss_columns: int | None = None,
               per_example: bool = False) -> dict[str, np.ndarray]:
    """Right-padded arrays for up to `batch_size` sequences (missing rows are all padding).

    Returns tokens int32[B, T], positions int32[B, T] (-1 at padding), valid float32[B, T]
    (1 where a real next token exists), and targets int32[B, T] (targets[b, t] =
    tokens[b, t + 1]) with loss_mask float32[B, T] (1 where the next token is supervised).

    per_example: each row's supervised tokens weigh 1 / their number instead of 1, so the
      loss (sum of weighted CE / sum of weights) is the mean over rows of each row's mean:
      a short target ("I don't know the answer.") counts as much as a sentence.

    prefix_len: the first P tokens every row shares (`shared_prefix_length`) are left out;
      the rows hold the rest, at positions P.. (the step prepends the prefix once).
    loss_columns: K (`loss_width`, target-only loss): targets and loss_mask are [B, K] at
      the columns `loss_index` int32[B, K] of each row (padding: column 0, mask 0).
    """
    if len(seqs) > batch_size:
        raise ValueError(f"{len(seqs)} sequences do not fit a batch of {batch_size}")
    p = prefix_len
    if p and not target_only:
        raise ValueError("a shared prefix needs the target-only loss (the loss would read its positions)")
    t = padded_length(max(len(s.ids) for s in seqs) - p, pad_multiple)
    tokens = np.full((batch_size, t), pad_id, np.int32)
    targets = np.full((batch_size, t), pad_id, np.int32)
    positions = np.full((batch_size, t), -1, np.int32)
    loss_mask = np.zeros((batch_size, t), np.float32)
    valid = np.zeros((batch_size, t), np.float32)
    for b, s in enumerate(seqs):
        n = len(s.ids) - p
        # Position t predicts token t + 1: the target starts being predicted at start - 1.
        first = s.target_start - 1 - p if target_only else 0
        if first < 0 or n < 1:
            raise ValueError(f"example {s.id!r}: the shared prefix of {p} tokens reaches its "
                             f"target (target_start={s.target_start}, length {len(s.ids)})")
        tokens[b, :n] = s.ids[p:]
        targets[b, :n - 1] = s.ids[p + 1:]
        positions[b, :n] = np.arange(p, p + n)
        valid[b, :n - 1] = 1.0
        loss_mask[b, first:n - 1] = 1.0 / (n - 1 - first) if per_example else 1.0
    out = dict(tokens=tokens, positions=positions, valid=valid, targets=targets,
               loss_mask=loss_mask)
    if loss_columns is not None:
        out.update(_loss_columns(loss_mask, targets, min(loss_columns, t)))
    return out


def _loss_columns(loss_mask: np.ndarray, targets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """targets/loss_mask [B, T] -> loss_index, targets, loss_mask [B, K] of the masked columns
    (their weights kept)."""
    rows, t = loss_mask.shape
    index = np.zeros((rows, k), np.int32)
    mask = np.zeros((rows, k), np.float32)
    for b in range(rows):
        cols = np.flatnonzero(loss_mask[b])
        if cols.size > k:
            raise ValueError(f"row {b} has {cols.size} supervised tokens; loss_columns={k}")
        index[b, :cols.size] = cols
        mask[b, :cols.size] = loss_mask[b, cols]
    return dict(loss_index=index, targets=np.take_along_axis(targets, index, axis=1),
                loss_mask=mask)
