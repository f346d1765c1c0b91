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
from pathlib import Path
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


# ----------------------------------------------------------------------------- shards
# A stage writes one file per shard of questions (crash-safe, resumable, one writer per
# shard on multi-process runs) and merges them once every shard is there.

PARTS_DIR = "hidden_states.parts"


def shard_path(out_dir: str | os.PathLike, index: int) -> Path:
    """`<out_dir>/hidden_states.parts/<index>.npz`."""
    return Path(out_dir) / PARTS_DIR / f"{index:06d}.npz"


def write_shard(out_dir: str | os.PathLike, index: int, states: HiddenStates) -> None:
    """Shard `index`'s rows, written atomically. A stage writes it before the shard's JSONL
    part, so a shard that counts as done always has its hidden states."""
    save(shard_path(out_dir, index), states)


def merge_shards(out_dir: str | os.PathLike, num_shards: int, *, layers: Sequence[int],
                 positions: Sequence[str]) -> Path:
    """Concatenate shards 0..num_shards-1 into `<out_dir>/hidden_states.npz` (atomic) and
    remove them; a file already merged is returned as is. `layers`, `positions`: what an
    empty run (no shards) records."""
    out_dir = Path(out_dir)
    final = out_dir / FILE_NAME
    if final.exists():
        return final
    missing = [i for i in range(num_shards) if not shard_path(out_dir, i).exists()]
    if missing:
        raise RuntimeError(f"{out_dir / PARTS_DIR}: hidden-state shards {missing[:5]} are "
                           f"missing (a run that did not keep hidden states wrote them?)")
    parts = [load(shard_path(out_dir, i)) for i in range(num_shards)]
    odd = [i for i, p in enumerate(parts)
           if (p.layers, p.positions) != (parts[0].layers, parts[0].positions)]
    if odd:
        raise ValueError(f"{shard_path(out_dir, odd[0])}: other layers or positions than "
                         f"shard 0's {parts[0].layers}, {parts[0].positions}")
    if parts:
        merged = HiddenStates(
            question_ids=tuple(q for p in parts for q in p.question_ids),
            layers=parts[0].layers, positions=parts[0].positions,
            values=np.concatenate([p.values for p in parts]))
    else:
        merged = HiddenStates((), tuple(layers), tuple(positions),
                              np.zeros((0, len(positions), len(layers), 0), np.float16))
    save(final, merged)
    for i in range(num_shards):
        shard_path(out_dir, i).unlink(missing_ok=True)
    try:
        (out_dir / PARTS_DIR).rmdir()
    except OSError:
        pass
    return final
