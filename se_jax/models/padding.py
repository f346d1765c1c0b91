"""How prompts of different lengths become one batch for the decoder: left padding
(positions -1, which `llama.attention_mask` hides) and the head every prompt shares.
numpy only: the sampler and the reference greedy decoder pad with it; the SFT batches take
their shared head from it."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def left_pad(prompt_ids: Sequence[Sequence[int]], length: int, batch: int,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens, positions int32[batch, length]: prompts right-aligned, positions -1 on padding
    (rows past len(prompt_ids) are all padding), the layout `llama.attention_mask` reads. Every
    prompt's last token sits in the last column, where its next-token logits are read."""
    tokens = np.full((batch, length), pad_id, np.int32)
    positions = np.full((batch, length), -1, np.int32)
    for i, ids in enumerate(prompt_ids):
        n = len(ids)
        tokens[i, length - n:] = ids
        positions[i, length - n:] = np.arange(n)
    return tokens, positions


def shared_head(rows: Sequence[Sequence[int]], cap: int, multiple: int = 8) -> int:
    """The tokens every row starts with (a prompt template's system prompt, instruction,
    few-shot examples), at most `cap`, rounded down to `multiple`: rounding keeps calls on
    different questions (whose common prefix may run into a shared first word) at one
    length, one compiled program. 0 when the rows share fewer than `multiple` tokens."""
    first = np.asarray(rows[0])
    n = min(cap, len(first))
    for r in rows[1:]:
        r = np.asarray(r)[:n]
        diff = np.flatnonzero(r != first[:len(r)])
        n = min(n, len(r), int(diff[0]) if diff.size else n)
    return max(n, 0) // multiple * multiple
