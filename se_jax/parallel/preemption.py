"""Preemption and lost peers: stop at a step or shard boundary, saved, with one line.

Spot/preemptible capacity and cluster schedulers stop a job with SIGTERM and a grace period.
Every launcher installs se_jax/parallel/stop_signal.py's handler as its first statement;
it only sets a process-wide flag. The loops call `should_stop(where)` at their boundaries
(the training loop after each step, the stages after each shard is written); when it says
stop, the loop saves what it has (Orbax for training, the shard on disk already for the
stages) and raises `Preempted(where)`; `cli.run` prints one line, where it stopped and how
to resume, and exits with EXIT_PREEMPTED. A stop requested before the first boundary
(during imports, the model load, compilation) stops at the first one. A rerun of the same
command resumes exactly, as after a kill -9.

Exit status 75 (EX_TEMPFAIL of sysexits.h, "temporary failure, retry later"): distinct from
success, from a user error (2), from a crash (1), and from death by a signal (128+n, which a
shell or scheduler reports for a job that did not save); a scheduler may requeue on it.

Multi-process runs (jax.distributed initialised) must stop at the same boundary, or one
process would wait in a collective for the others forever. At a lockstep boundary (every
process runs the same loop: training steps, sample and entropy shards) each process
publishes its flag in the coordination service's key-value store and reads everyone's
(`_exchange`): all stop at the first boundary where any process asked. JAX's own preemption
notice (`multihost_utils.reached_preemption_sync_point`, fed by the platform's notifier)
counts as a flag too. Loops whose processes do different work (the evaluate stage's
shards) use `lockstep=False`: a stopping process publishes a stop key that the others see
at their next boundary or in `distributed.barrier`.

A dead peer: every wait for other processes (the exchange, the barriers, the exit barrier
of cli.run) gives up after `peer_timeout()` seconds (SE_JAX_PEER_TIMEOUT, default 300) with
`PeerLostError` naming the processes that did not arrive. A process that dies before it
joined cannot be named (the runtime tells nothing before all have joined):
distributed.initialize's watchdog exits 76 with one line after the same timeout.
jax.distributed's own checks (heartbeat, join), 30 s later, abort the process: the backstop.
"""
from __future__ import annotations

import collections
import os
import time

import jax

from se_jax.parallel import stop_signal
from se_jax.parallel.stop_signal import install, request_stop, stop_requested  # noqa: F401

EXIT_PREEMPTED = 75          # sysexits EX_TEMPFAIL
EXIT_PEER_LOST = 76          # a peer process died or stopped answering
ENV_PEER_TIMEOUT = "SE_JAX_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 300.0
_PREFIX = "se_jax/preemption"

_counters: collections.Counter = collections.Counter()
_published = False


class Preempted(Exception):
    """The run stopped at a boundary after a stop request; everything before it is saved."""

    def __init__(self, where: str, reason: str = ""):
        super().__init__(where)
        self.where = where
        self.reason = reason or stop_signal.reason() or "a stop request"


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or stopped answering."""


def peer_timeout() -> float:
    """Seconds to wait for another process before declaring it lost (SE_JAX_PEER_TIMEOUT)."""
    value = os.environ.get(ENV_PEER_TIMEOUT, "")
    try:
        return float(value) if value else DEFAULT_PEER_TIMEOUT
    except ValueError:
        raise ValueError(f"{ENV_PEER_TIMEOUT}={value!r} is not a number of seconds") from None


def reset() -> None:
    """Forget a stop request (tests)."""
    global _published
    stop_signal.reset()
    _published = False


def _client():
    if jax.process_count() <= 1:
        return None
    from jax._src import distributed as jax_distributed
    return jax_distributed.global_state.client


def _jax_notice(step: int) -> bool:
    """JAX's preemption sync point (False where the platform has none)."""
    try:
        from jax.experimental import multihost_utils
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except Exception:   # no sync manager (service disabled): SIGTERM is our only notice
        return False


def missing_processes(client, keys: dict[int, str]) -> list[int]:
    """Which processes of `keys` ({process: key}) have not published their key."""
    out = []
    for p, key in keys.items():
        try:
            if client.key_value_try_get(key) is None:
                out.append(p)
        except Exception:
            out.append(p)
    return out


def lost(what: str, missing: list[int], waited: float) -> PeerLostError:
    names = ", ".join(f"process {p}" for p in missing) or "a process"
    return PeerLostError(
        f"{names} of {jax.process_count()} did not reach {what} within {waited:.0f}s "
        f"({ENV_PEER_TIMEOUT}); it died or hangs. Stopped process {jax.process_index()}; "
        f"rerun the same command on every host to resume")


def wait_for_all(client, name: str, what: str, timeout: float | None = None,
                 stop_aware: bool = False) -> dict[int, str]:
    """Publish this process's arrival at `name` and wait for every process's.

    Returns {process: value}. PeerLostError naming the absent processes after `timeout`
    (peer_timeout()); with `stop_aware`, Preempted as soon as some process published a stop.
    """
    timeout = peer_timeout() if timeout is None else timeout
    me, n = jax.process_index(), jax.process_count()
    keys = {p: f"{_PREFIX}/{name}/{p}" for p in range(n)}
    client.key_value_set(keys[me], "1" if stop_requested() else "0")
    start, values = time.monotonic(), {}
    for p, key in keys.items():
        while p not in values:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise lost(what, missing_processes(client, keys), timeout)
            try:
                values[p] = client.blocking_key_value_get(key, int(min(left, 0.5) * 1000))
            except Exception as e:  # DEADLINE_EXCEEDED: not there yet; else the service is gone
                if "DEADLINE" not in str(e).upper():
                    raise PeerLostError(f"lost the coordination service while waiting at "
                                        f"{what} (process 0 died?): {str(e)[:200]}") from None
                if stop_aware and (stop_requested() or stop_published(client)):
                    publish_stop(client)
                    raise Preempted(f"{what} (waiting for the other processes)")
    return values


def publish_stop(client) -> None:
    global _published
    if client is not None and not _published:
        client.key_value_set(f"{_PREFIX}/stop/{jax.process_index()}", "1")
        _published = True


def stop_published(client) -> bool:
    try:
        return bool(client.key_value_dir_get(f"{_PREFIX}/stop/"))
    except Exception:
        return False


def should_stop(where: str = "", lockstep: bool = True) -> bool:
    """At a boundary: True when this run must stop here (every process gets the same answer
    at a lockstep boundary; see module doc). Cheap on one process (a flag read)."""
    install()   # SIGTERM stays ours, should a library have taken it over since
    client = _client()
    if client is None:
        return stop_requested()
    if not lockstep:
        if stop_requested():
            publish_stop(client)
        return stop_requested() or stop_published(client)
    _counters["boundary"] += 1
    n = _counters["boundary"]
    if _jax_notice(n):
        request_stop("the platform's preemption notice")
    values = wait_for_all(client, f"boundary/{n}", f"the boundary after {where or 'a step'}")
    if n > 2:   # everyone has read step n-2's keys before publishing step n-1's
        try:
            client.key_value_delete(f"{_PREFIX}/boundary/{n - 2}/{jax.process_index()}")
        except Exception:
            pass
    stop = any(v == "1" for v in values.values()) or stop_published(client)
    if stop and not stop_requested():
        request_stop("another process's stop request")
    return stop


def check(where: str, lockstep: bool = True) -> None:
    """`should_stop(where)`, raising Preempted(where): for loops whose progress is on disk
    already at the boundary (a stage after writing a shard)."""
    if should_stop(where, lockstep):
        raise Preempted(where)


def barrier_key(name: str) -> str:
    """A key unique to this call of barrier `name` (the same on every process)."""
    _counters[f"barrier/{name}"] += 1
    return f"barrier/{name}/{_counters[f'barrier/{name}']}"


_PEER_ERRORS = ("gloo", "connection reset", "connection closed", "socket closed",
                "unavailable", "heartbeat", "coordination", "deadline")


def peer_error(error: BaseException) -> bool:
    """`error` may come from a peer process that went away (multi-process runs only)."""
    text = str(error).lower()
    return (_client() is not None and not isinstance(error, (Preempted, PeerLostError))
            and any(k in text for k in _PEER_ERRORS))


def lost_peer(error: BaseException) -> PeerLostError | None:
    """After a runtime error of a multi-process run (a collective failing because a peer's
    connection dropped, say): a PeerLostError naming the processes that do not answer
    within peer_timeout(), or None when all of them do (the error is something else).
    Preempted when a stop was asked here or published by another process: that process
    may be leaving (its exit is what broke the collective), so this one stops too."""
    client = _client()
    if client is None or isinstance(error, (Preempted, PeerLostError)):
        return None
    _counters["alive"] += 1
    try:
        wait_for_all(client, f"alive/{_counters['alive']}",
                     f"a liveness check after: {str(error).splitlines()[0][:160]}",
                     stop_aware=True)
    except PeerLostError as e:
        return e
    return None
