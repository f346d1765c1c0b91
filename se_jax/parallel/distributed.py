"""Multi-process start: one JAX process per host (TPU pod, GPU cluster) or N local CPU processes.

Call `initialize()` first thing in every entry point, before any JAX computation:

* TPU pod slice / SLURM / other clusters JAX knows: run the same command on every host with
  `SE_JAX_DISTRIBUTED=auto`; jax.distributed.initialize() reads the cluster environment.
* One machine, N CPU processes (`launch/multihost.py --num_processes=N -- python ...`): the
  launcher sets SE_JAX_COORDINATOR / SE_JAX_NUM_PROCESSES / SE_JAX_PROCESS_ID; collectives
  between CPU processes go through gloo.
* Neither: a single process; nothing to do.

Afterwards `jax.devices()` lists every process's devices, so `se_jax.parallel.mesh.make_mesh` builds a
global mesh, and each process feeds and reads only its addressable shards.

Work spread over processes as whole units (a sweep's fine-tuning run, trained and evaluated
by one process on its own devices) runs inside `alone()`: there this process is its own
group of one (`group_index()` 0 of `group_size()` 1, `is_main_process()`, `barrier` a no-op),
so every stage it calls computes all of the unit's shards and writes its outputs itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator

import jax
import numpy as np

from se_jax.parallel import preemption, stop_signal

ENV_MODE = "SE_JAX_DISTRIBUTED"          # "auto": the cluster environment says everything
ENV_COORDINATOR = "SE_JAX_COORDINATOR"   # host:port of process 0
ENV_NUM_PROCESSES = "SE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SE_JAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "SE_JAX_LOCAL_DEVICES"  # CPU devices per local process (simulated)

log = logging.getLogger(__name__)
_group = threading.local()   # .alone: this thread works on a unit of its own (see alone())


def initialize() -> None:
    """Join the multi-process runtime described by the environment (see module docstring)."""
    if jax.distributed.is_initialized():
        return
    # A dead peer: our waits name it after peer_timeout(); the runtime's own checks (which
    # abort the process with their message) are the backstop 30 s later.
    timeout = preemption.peer_timeout()
    timeouts = dict(heartbeat_timeout_seconds=int(timeout) + 30,
                    shutdown_timeout_seconds=int(min(timeout, 60)))
    if os.environ.get(ENV_MODE) == "auto":
        args: dict = {}
    elif ENV_COORDINATOR in os.environ:
        local_devices = os.environ.get(ENV_LOCAL_DEVICES)
        if local_devices:
            jax.config.update("jax_num_cpu_devices", int(local_devices))
        # CPU processes exchange collectives through gloo (the default has none across processes).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        args = dict(coordinator_address=os.environ[ENV_COORDINATOR],
                    num_processes=int(os.environ[ENV_NUM_PROCESSES]),
                    process_id=int(os.environ[ENV_PROCESS_ID]))
    else:
        return
    # The runtime's preemption notifier takes SIGTERM over: kept() makes it ours again,
    # a SIGTERM sent meanwhile included. The join waits for every process; one that died
    # before joining would make the runtime abort the others after initialization_timeout
    # (status 134, no name): the watchdog stops this process first, with one line.
    with stop_signal.kept(), _start_watchdog(timeout):
        jax.distributed.initialize(**args, initialization_timeout=int(timeout) + 30,
                                   **timeouts)
    log.info("process %d/%d: %d local of %d devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


@contextlib.contextmanager
def _start_watchdog(timeout: float) -> Iterator[None]:
    """Inside: exit EXIT_PEER_LOST with one line if the block has not finished after
    `timeout` seconds (the multi-process start, waiting for a process that is gone)."""
    def expire() -> None:
        print(f"error: not every process joined the multi-process run within {timeout:.0f}s "
              f"({preemption.ENV_PEER_TIMEOUT}): one died or did not start (the runtime "
              f"does not say which before all have joined); rerun the same command on "
              f"every host", file=sys.stderr, flush=True)
        os._exit(preemption.EXIT_PEER_LOST)   # the runtime's exit handler would wait on

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within: this process is a group of one (see module doc). For work on this process's
    own devices only: a collective over other processes' devices inside would never end."""
    before = getattr(_group, "alone", False)
    _group.alone = True
    try:
        yield
    finally:
        _group.alone = before


def working_alone() -> bool:
    """Inside `alone()`, or a single process: no other process takes part in this work."""
    return group_size() == 1


def group_index() -> int:
    """This process's rank among those sharing the current work (0 inside `alone()`)."""
    return 0 if getattr(_group, "alone", False) else jax.process_index()


def group_size() -> int:
    """How many processes share the current work (1 inside `alone()`)."""
    return 1 if getattr(_group, "alone", False) else jax.process_count()


def is_main_process() -> bool:
    """Process 0 (or this process inside `alone()`) writes shared outputs and prints
    summaries."""
    return group_index() == 0


def barrier(name: str, stop_aware: bool = True) -> None:
    """All processes reach this point (no-op in a single process). The one convention for
    shared outputs: every process computes, process 0 writes, then all pass a barrier.

    Bounded: PeerLostError naming the absent processes after SE_JAX_PEER_TIMEOUT seconds;
    with `stop_aware`, Preempted when a process stopped for a preemption instead of
    coming here (or asked to stop while waiting)."""
    if group_size() > 1:
        from jax._src import distributed as jax_distributed
        client = jax_distributed.global_state.client
        if client is None:   # not started through initialize(): the device-level sync
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)
            return
        preemption.wait_for_all(client, preemption.barrier_key(name), f"barrier {name!r}",
                                stop_aware=stop_aware)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host (all-gathered from the other processes on a pod)."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
