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

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from absl import logging

from se_jax.config.schema import RunConfig


class InputChangedError(ValueError):
    """A stage's input file differs from the one its output directory was computed from."""


class WriterLockError(RuntimeError):
    """Another live process is writing into the same output directory."""


class UnsafePathError(ValueError):
    """A name that becomes part of a path would leave its directory."""


def _create_tmp(path: Path) -> Path:
    """A new empty sibling temp file of `path`, mode 0666 & ~umask (like a plain open())."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` atomically.

    For writers that take a file name (safetensors' save_file, ...). Whatever happens (a
    full disk, an exception, Ctrl-C) no temp file is left behind; a kill -9 may leave one,
    which readers ignore (hidden, `.tmp`). The file honours the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_tmp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see either the old or the whole new file."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- safe names

def safe_component(name: str, what: str) -> str:
    """`name` if it is usable as one path component, else UnsafePathError naming `what`.

    Refused: empty, ".", "..", path separators, NUL, a leading "~" or "-" (which shells and
    tools misread). `what` is the flag or field it came from (e.g. "--tag").
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{what}={name!r}: must be a non-empty name")
    bad = ("/" in name or "\\" in name or "\0" in name or name in (".", "..")
           or name[0] in "~-")
    if bad:
        raise UnsafePathError(f"{what}={name!r}: not allowed as a directory name (no path "
                              f"separators, '..', or a leading '~' / '-')")
    return name


def safe_join(root: str | os.PathLike, *parts: str, what: str = "path") -> Path:
    """root / parts, each part a safe component (safe_component), so the result stays
    inside `root`."""
    return Path(root).joinpath(*(safe_component(p, what) for p in parts))


# ----------------------------------------------------------------------------- inputs

def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in `chunk`-byte pieces (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def records_sha256(records: Iterable[Mapping[str, Any]]) -> str:
    """Hex sha256 of records as canonical JSONL (inputs held in memory, not in a file)."""
    h = hashlib.sha256()
    for r in records:
        h.update((dumps_record(r) + "\n").encode("utf-8"))
    return h.hexdigest()


def input_fingerprints(inputs: Mapping[str, str | os.PathLike]) -> dict[str, dict]:
    """{name: {"path", "sha256"}} of a stage's input files, as recorded in config.json."""
    return {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in inputs.items()}


def _check_inputs(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse a rerun whose input files changed (old directories without a record pass)."""
    for name, now in new.items():
        was = old.get(name)
        if isinstance(was, Mapping) and was.get("sha256") not in (None, now["sha256"]):
            raise InputChangedError(
                f"input {now['path']} ({name}) changed since {path.parent} was computed from "
                f"{was.get('path')} (sha256 {str(was['sha256'])[:12]}... -> "
                f"{now['sha256'][:12]}...); its outputs would mix old and new input: write "
                f"to a new output directory (or delete {path.parent})")


# ----------------------------------------------------------------------------- writer lock

ENV_CLAIM_WAIT = "SE_JAX_CLAIM_WAIT"     # seconds a second launcher waits (default 0: exit)
ENV_CLAIM_STALE = "SE_JAX_CLAIM_STALE"   # seconds without a refresh before a claim is stale
DEFAULT_CLAIM_STALE = 600.0


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot; Linux), None if unknown:
    tells a live owner from another process that got its pid later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_claim(lock: Path) -> dict | None:
    """The claim's {host, pid, start, since} (the old "host pid" form read too), None if
    there is none."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(text)
        if isinstance(claim, dict):
            return claim
    except json.JSONDecodeError:
        pass
    host, _, pid = text.rpartition(" ")
    return {"host": host, "pid": int(pid) if pid.isdigit() else None}


def _stale(lock: Path, claim: dict, stale_after: float) -> str | None:
    """Why the claim's owner is gone (None: it may be alive)."""
    pid = claim.get("pid")
    if claim.get("host") == socket.gethostname() and isinstance(pid, int):
        if not _alive(pid):
            return f"process {pid} is gone"
        if claim.get("start") and _start_time(pid) not in (None, claim["start"]):
            return f"process {pid} is gone (its pid now belongs to another process)"
        return None
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return "released"
    if age > stale_after:
        return (f"not refreshed for {age:.0f}s (> {ENV_CLAIM_STALE}={stale_after:.0f}s); "
                f"its owner on {claim.get('host')} is presumed gone")
    return None


def _holder(claim: dict) -> str:
    since = claim.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
    return f"host {claim.get('host')} pid {claim.get('pid')}{when}"


def _take_over(lock: Path, claim: dict) -> bool:
    """Remove the stale `claim` unless another contender replaced it meanwhile."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return True
    if _read_claim(aside) == claim:
        aside.unlink(missing_ok=True)
        return True
    try:   # we moved a fresh claim: put it back (unless yet another one appeared)
        os.link(aside, lock)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def writer_lock(out_dir: str | os.PathLike, wait: float | None = None,
                stale_after: float | None = None) -> Iterator[Path]:
    """Claim `<out_dir>/.writer.lock` while writing: one writer per directory at a time.

    The claim is created atomically, whole (a link of a finished temp file), and names the
    owner's host, pid, process start time and claim time; the owner refreshes its mtime
    every `stale_after / 4` seconds. A second launcher waits up to `wait` seconds
    (SE_JAX_CLAIM_WAIT, default 0) for the claim, then raises WriterLockError naming the
    holder. A stale claim is taken over: on this host when its process is gone (pid dead,
    or reused by another process); from another host when not refreshed for
    `stale_after` seconds (SE_JAX_CLAIM_STALE, default 600). So a rerun after a crash
    needs nothing, and duplicate tasks of a scheduler never write one directory at once.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / ".writer.lock"
    wait = _env_seconds(ENV_CLAIM_WAIT, 0.0) if wait is None else wait
    stale_after = (_env_seconds(ENV_CLAIM_STALE, DEFAULT_CLAIM_STALE) if stale_after is None
                   else stale_after)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "start": _start_time(os.getpid()), "since": round(time.time(), 3)}
    deadline, told = time.monotonic() + wait, False
    while True:
        tmp = _create_tmp(lock)
        tmp.write_text(json.dumps(me, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.link(tmp, lock)
            break
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        claim = _read_claim(lock)
        if claim is None:
            continue
        why = _stale(lock, claim, stale_after)
        if why:
            logging.warning("%s: taking over the claim of %s: %s", lock, _holder(claim), why)
            _take_over(lock, claim)
            continue
        if time.monotonic() >= deadline:
            raise WriterLockError(
                f"{out_dir} is being written by another process ({_holder(claim)}, lock "
                f"{lock}); wait for it to finish (or set {ENV_CLAIM_WAIT}=<seconds> to wait), "
                f"or delete {lock} if that process is gone") from None
        if not told:
            logging.warning("%s: waiting up to %.0fs for %s", out_dir, wait, _holder(claim))
            told = True
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(max(stale_after / 4, 0.5)):
            try:
                os.utime(lock)
            except OSError:
                pass
    refresher = threading.Thread(target=refresh, daemon=True, name="writer-lock-refresh")
    refresher.start()
    try:
        yield lock
    finally:
        done.set()
        if _read_claim(lock) == me:
            lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dumps_record(record: Mapping[str, Any]) -> str:
    """One JSONL line; deterministic (sorted keys), so reruns are byte-identical."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) per line of a UTF-8 text file, or (number, None, reason)
    for a line that is not valid UTF-8, so readers skip or report it like any bad line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield lineno, None, (f"{path}:{lineno}: not valid UTF-8 (byte "
                                     f"0x{raw[e.start]:02x} at column {e.start + 1})")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; ValueError naming file and line on a bad line."""
    records = []
    for lineno, line, problem in text_lines(path):
        if problem:
            raise ValueError(problem)
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in records))


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link `dst` to `src` (outputs shared by identical runs), else a copy."""
    try:
        os.link(src, dst)
    except OSError:   # another filesystem, or links not allowed
        shutil.copy2(src, dst)


INPUTS_KEY = "inputs"  # config.json: {name: {"path", "sha256", ...}} of the stage's inputs


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_to_dict(config: RunConfig | Mapping[str, Any]) -> dict:
    """A config (typed section, RunConfig, ConfigDict or mapping) as plain JSON-able dicts."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=str))


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_subset(config: RunConfig | Mapping[str, Any], depends_on: Sequence[str] | None = None,
                  ignore: Sequence[str] = ()) -> dict[str, Any]:
    """{dotted key: value} of the keys under `depends_on` (None: all), less those under
    `ignore`: what a stage's outputs depend on (see `write_config`)."""
    return {k: v for k, v in _flatten(config_to_dict(config)).items()
            if (depends_on is None or _under(k, depends_on)) and not _under(k, ignore)}


def write_config(out_dir: str | os.PathLike, config: RunConfig | Mapping[str, Any],
                 ignore: Sequence[str] = (), depends_on: Sequence[str] | None = None,
                 inputs: Mapping[str, str | os.PathLike] | None = None) -> None:
    """Write `config.json` beside a stage's outputs; refuse a different existing config.

    `depends_on` lists the dotted keys (or prefixes, e.g. "sampling") that the outputs
    depend on; only those are compared (None: every key). `ignore` lists keys (or prefixes)
    within them that may differ between runs into the same directory without changing the
    results (e.g. logging frequency, an output path).

    `inputs` ({name: file}): the stage's input files; their sha256 is recorded under
    "inputs" and a rerun whose input changed is refused (InputChangedError naming the file).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    new = config_to_dict(config)
    if inputs:
        new[INPUTS_KEY] = input_fingerprints(inputs)
    path = out_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        _check_inputs(path, old.get(INPUTS_KEY) or {}, new.get(INPUTS_KEY) or {})
        ignore = (*ignore, INPUTS_KEY)  # compared above, by content not path
        a = config_subset(old, depends_on, ignore)
        b = config_subset(new, depends_on, ignore)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
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
        try:
            text = "".join(self.shard_path(i).read_text(encoding="utf-8")
                           for i in range(self.num_shards))
        except FileNotFoundError:
            # Another process of a multi-process run (which computed the same shards)
            # finalized first and removed them.
            if self.final_path.exists():
                return self.final_path
            raise
        atomic_write_text(self.final_path, text)
        for i in range(self.num_shards):
            self.shard_path(i).unlink(missing_ok=True)
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
