"""Hidden-state files: the residual stream the sampler kept, one row per question.

The sample stage writes `hidden_states.npz` beside `generations.jsonl` when
`config.probes.layers` is non-empty; the probe stage (semantic entropy probes) reads it.
Binary arrays, not JSON floats: 100k questions x 2 positions x 4 layers x 4096 floats is
6.5 GB in float16 and would be ~4x that as text.

Layout of the file (numpy .npz, uncompressed: loading is a copy, not a decode):
  question_ids  [N]          unicode   the questions' ids, in generations.jsonl's order
  layers        [L]          int32     decoder layer indices (0 = the embeddings' output,
                                       i = the output of decoder layer i; -1 = the final
                                       normed stream)
  positions     [P]          unicode   "tbg" (last prompt token, before generation) and/or
                                       "slt" (second-to-last token of the greedy answer)
  values        [N, P, L, D] float16 | float32 (config.probes.dtype)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from se_jax.io.stage_io import atomic_path

FILE_NAME = "hidden_states.npz"
POSITIONS = ("tbg", "slt")


@dataclasses.dataclass(frozen=True)
class HiddenStates:
    """Hidden states of N questions at P positions and L layers, D features each."""
    question_ids: tuple[str, ...]
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    values: np.ndarray          # [N, P, L, D]

    def __post_init__(self):
        n, p, l, _ = self.values.shape
        if (n, p, l) != (len(self.question_ids), len(self.positions), len(self.layers)):
            raise ValueError(
                f"hidden states: values {self.values.shape} do not match "
                f"{len(self.question_ids)} ids x {len(self.positions)} positions x "
                f"{len(self.layers)} layers")
        unknown = sorted(set(self.positions) - set(POSITIONS))
        if unknown:
            raise ValueError(f"hidden states: unknown position {unknown[0]!r} "
                             f"(known: {POSITIONS})")

    def features(self, position: str, layer: int) -> np.ndarray:
        """[N, D] float32 features of one (position, layer)."""
        return self.values[:, self.positions.index(position),
                           self.layers.index(layer)].astype(np.float32)

    def select(self, question_ids: Sequence[str]) -> "HiddenStates":
        """The rows of `question_ids`, in that order (KeyError naming a missing id)."""
        row = {q: i for i, q in enumerate(self.question_ids)}
        missing = [q for q in question_ids if q not in row]
        if missing:
            raise KeyError(f"hidden states: no row for question {missing[0]!r}")
        index = np.asarray([row[q] for q in question_ids], dtype=np.int64)
        return dataclasses.replace(self, question_ids=tuple(question_ids),
                                   values=self.values[index])


def save(path: str | os.PathLike, states: HiddenStates) -> None:
    """Write `states` atomically (readers see the old file or the whole new one)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, question_ids=np.asarray(states.question_ids, dtype=str),
                     layers=np.asarray(states.layers, dtype=np.int32),
                     positions=np.asarray(states.positions, dtype=str),
                     values=states.values)
            f.flush()
            os.fsync(f.fileno())


def load(path: str | os.PathLike) -> HiddenStates:
    """Read a file written by `save` (ValueError naming the file when it is not one)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return HiddenStates(question_ids=tuple(str(q) for q in data["question_ids"]),
                                layers=tuple(int(l) for l in data["layers"]),
                                positions=tuple(str(p) for p in data["positions"]),
                                values=data["values"])
    except (KeyError, ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a hidden-state file ({error})") from None
