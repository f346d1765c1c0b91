"""Resumable, crash-safe stage outputs.

A stage processes its items in a fixed order, in fixed chunks ("shards"). Each finished
shard is written atomically (temp file, fsync, rename) as `<name>.parts/<index>.jsonl`, so
a kill -9 loses at most the shard in flight, and a rerun skips the shards on disk. Because
shard boundaries depend only on the item order and the shard size, a resumed run computes
exactly the batches an uninterrupted run would, and `finalize` concatenates the shards into
one byte-identical `<name>.jsonl`.

Every output directory also holds `config.json`, the config that produced it; a rerun with
a different config into the same directory is refused (naming the differing fields) rather
than silently mixing results.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from absl import logging


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old or the whole new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def dumps_record(record: Mapping[str, Any]) -> str:
    """One JSONL line; deterministic (sorted keys), so reruns are byte-identical."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; ValueError naming file and line on a bad line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in records))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_to_dict(config: Any) -> dict:
    """A ConfigDict (or mapping) as plain JSON-able dicts."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


def write_config(out_dir: str | os.PathLike, config: Any,
                 ignore: Sequence[str] = (), depends_on: Sequence[str] | None = None) -> None:
    """Write `config.json` beside a stage's outputs; refuse a different existing config.

    `depends_on` lists the dotted keys (or prefixes, e.g. "sampling") that the outputs
    depend on; only those are compared (None: every key). `ignore` lists keys (or prefixes)
    within them that may differ between runs into the same directory without changing the
    results (e.g. logging frequency, an output path).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    new = config_to_dict(config)
    path = out_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        a, b = _flatten(old), _flatten(new)
        def under(key: str, prefixes: Sequence[str]) -> bool:
            return any(key == p or key.startswith(p + ".") for p in prefixes)

        differ = sorted(k for k in set(a) | set(b)
                        if a.get(k) != b.get(k) and not under(k, ignore)
                        and (depends_on is None or under(k, depends_on)))
        if differ:
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:8])
            raise ValueError(
                f"{path} was written by a different config ({shown}); "
                f"use a new output directory or delete the old one")
    atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


class ShardedJsonl:
    """Atomically written shards of a JSONL output, merged when all are done.

    Usage:
        out = ShardedJsonl(out_dir, "generations", num_shards)
        for i in out.pending():
            out.write_shard(i, compute(shard_items(i)))
        out.finalize()  # -> out_dir/generations.jsonl
    """

    def __init__(self, out_dir: str | os.PathLike, name: str, num_shards: int):
        self.out_dir = Path(out_dir)
        self.name = name
        self.num_shards = num_shards
        self.parts_dir = self.out_dir / f"{name}.parts"
        self.final_path = self.out_dir / f"{name}.jsonl"

    def shard_path(self, index: int) -> Path:
        return self.parts_dir / f"{index:06d}.jsonl"

    def is_done(self, index: int) -> bool:
        return self.final_path.exists() or self.shard_path(index).exists()

    def pending(self) -> list[int]:
        """Indices of shards still to compute, in order."""
        if self.final_path.exists():
            return []
        return [i for i in range(self.num_shards) if not self.shard_path(i).exists()]

    def write_shard(self, index: int, records: Sequence[Mapping[str, Any]]) -> None:
        write_jsonl(self.shard_path(index), records)

    def read_shard(self, index: int) -> list[dict]:
        return read_jsonl(self.shard_path(index))

    def finalize(self) -> Path:
        """Concatenate all shards into `<name>.jsonl` (atomic) and remove the shards."""
        if self.final_path.exists():
            return self.final_path
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{self.parts_dir}: shards {missing[:5]} not written yet")
        text = "".join(self.shard_path(i).read_text(encoding="utf-8")
                       for i in range(self.num_shards))
        atomic_write_text(self.final_path, text)
        for i in range(self.num_shards):
            self.shard_path(i).unlink()
        try:
            self.parts_dir.rmdir()
        except OSError:
            pass
        return self.final_path

    def records(self) -> Iterator[dict]:
        """All records written so far, in order (final file, else finished shards)."""
        if self.final_path.exists():
            yield from read_jsonl(self.final_path)
            return
        for i in range(self.num_shards):
            if self.shard_path(i).exists():
                yield from self.read_shard(i)


class Progress:
    """Rate and ETA logging for long loops (absl logging, so it reads well in pod logs).

    progress = Progress("sample", total=n_questions, unit="questions")
    progress.update(done=8, tokens=1234)   # after each batch
    """

    def __init__(self, name: str, total: int, unit: str = "items",
                 every_seconds: float = 10.0, initial: int = 0):
        self.name, self.total, self.unit = name, total, unit
        self.every = every_seconds
        self.done = initial
        self.extra: dict[str, float] = {}
        self.start = self._last = time.perf_counter()
        self._start_done = initial

    def update(self, done: int = 1, **counters: float) -> None:
        self.done += done
        for k, v in counters.items():
            self.extra[k] = self.extra.get(k, 0.0) + v
        now = time.perf_counter()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            logging.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        left = self.total - self.done
        eta = left / rate if rate > 0 else float("inf")
        extra = "".join(f" {k}/s={v / elapsed:.1f}" for k, v in self.extra.items())
        return (f"[{self.name}] {self.done}/{self.total} {self.unit} "
                f"({rate:.2f}/s{extra}) elapsed {elapsed:.0f}s eta {eta:.0f}s")
