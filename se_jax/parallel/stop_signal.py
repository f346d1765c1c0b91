"""The stop request: SIGTERM sets a process-wide flag, from a launcher's first line to its exit.

Standard library only, so that every launch/*.py installs the handler before it imports
JAX or anything heavy (seconds on a busy CPU, during which the default action would kill
the process):

    from se_jax.parallel import stop_signal
    stop_signal.install()      # the launcher's first statement

se_jax/parallel/preemption.py reads the flag at step and shard boundaries. Three moments
need more than the handler; each is closed here by construction:

* a library that takes SIGTERM over at the C level (jax.distributed.initialize starts
  XLA's preemption notifier, which replaces the handler): `kept()` around the call blocks
  SIGTERM during it and re-installs the handler after, so a SIGTERM sent meanwhile
  reaches the flag instead of the library;
* a child process's start-up, before its first line runs: a parent that starts children
  inside `kept()` (launch/multihost.py) hands them SIGTERM blocked (the signal mask is
  inherited); the child's `install()` unblocks it, and a SIGTERM sent in between is
  delivered to the handler then;
* the exit: Python's finalisation resets a handler to the default action (death by the
  signal) for the last fraction of a second, so `finished()` makes SIGTERM ignored once a
  run's outcome is decided: a late SIGTERM cannot turn a finished or saved run into a
  death by signal.

What is left: a SIGTERM in the tens of milliseconds between the interpreter's start and
a launcher's first line kills it (nothing has been computed or written then), unless its
parent started it with SIGTERM blocked.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_stop = threading.Event()
_reason: list[str] = []


def _handler(signum: int, frame: object) -> None:
    request_stop(signal.Signals(signum).name)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """SIGTERM requests a stop (main thread only; idempotent, cheap: the boundaries call it
    again in case a library took SIGTERM over). Unblocks SIGTERM, so a signal a parent held
    back for us is delivered now, to this handler."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """SIGTERM blocked inside (in this thread, and in threads and child processes started
    inside), then the handler re-installed and SIGTERM unblocked: a signal sent meanwhile
    is a stop request, whoever took SIGTERM over inside."""
    if _main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        install()


def finished() -> None:
    """Ignore SIGTERM from now on: the run's outcome is decided and the process exits."""
    if _main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def request_stop(reason: str = "a stop request") -> None:
    """Ask the run to stop at its next boundary (the first reason is kept)."""
    if not _stop.is_set():
        _reason.append(reason)
    _stop.set()


def stop_requested() -> bool:
    """This process was asked to stop (no coordination with other processes)."""
    return _stop.is_set()


def reason() -> str:
    """Why the stop was requested ("" when it was not)."""
    return _reason[0] if _reason else ""


def reset() -> None:
    """Forget a stop request (tests)."""
    _stop.clear()
    _reason.clear()
