"""SFT examples -> token sequences -> padded, length-bucketed batches in a resumable order.

A sequence is the prompt exactly as the sampler saw it (`se_jax.data.prompts.format_prompt`
+ `encode_prompt`), then the target's tokens, then the end-of-turn token the sampler stops on:

    [prompt ids] [target ids] [eos]      loss on target + eos (or on everything)

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

    `prompt_kwargs`: `prompts.prompt_kwargs(config.prompt)`, exactly what the sampler used;
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


def make_batch(seqs: Sequence[TokenizedExample], batch_size: int, *, pad_multiple: int = 32,
               target_only: bool = True, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-padded arrays for up to `batch_size` sequences (missing rows are all padding).

    Returns tokens/targets int32[B, T], positions int32[B, T] (-1 at padding), loss_mask
    float32[B, T] (1 where the next token is supervised), valid float32[B, T] (1 where a
    real next token exists). targets[b, t] = tokens[b, t + 1].
    """
    if len(seqs) > batch_size:
        raise ValueError(f"{len(seqs)} sequences do not fit a batch of {batch_size}")
    t = padded_length(max(len(s.ids) for s in seqs), pad_multiple)
    tokens = np.full((batch_size, t), pad_id, np.int32)
    targets = np.full((batch_size, t), pad_id, np.int32)
    positions = np.full((batch_size, t), -1, np.int32)
    loss_mask = np.zeros((batch_size, t), np.float32)
    valid = np.zeros((batch_size, t), np.float32)
    for b, s in enumerate(seqs):
        n = len(s.ids)
        tokens[b, :n] = s.ids
        targets[b, :n - 1] = s.ids[1:]
        positions[b, :n] = np.arange(n)
        valid[b, :n - 1] = 1.0
        # Position t predicts token t + 1: the target starts being predicted at start - 1.
        first = s.target_start - 1 if target_only else 0
        loss_mask[b, first:n - 1] = 1.0
    return dict(tokens=tokens, targets=targets, positions=positions, loss_mask=loss_mask,
                valid=valid)
