"""How prompts of different lengths become one batch for the decoder: left padding
(positions -1, which `llama.attention_mask` hides). numpy only: the sampler and the
reference greedy decoder both pad with it."""
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
