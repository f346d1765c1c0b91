"""Run a command as N JAX processes on this machine (CPU, gloo collectives).

    python launch/multihost.py --num_processes=2 --local_devices=2 -- \\
        python launch/smoke.py --config.mesh.data=2 --config.mesh.tensor=2

Each child gets SE_JAX_COORDINATOR=localhost:<free port>, SE_JAX_NUM_PROCESSES and
SE_JAX_PROCESS_ID; entry points call se_jax.parallel.distributed.initialize(), which joins them into
one runtime whose jax.devices() spans all processes. Output lines are prefixed "[p<i>]".
The exit status is the first non-zero child status (others are then stopped with SIGTERM,
then SIGKILL after --grace seconds), else 0; a child killed by signal n counts as 128+n.
A SIGTERM to this launcher is passed to every child (each stops at its next boundary,
saved, exit 75: se_jax/parallel/preemption.py). The children start with SIGTERM blocked
(stop_signal.kept()) and unblock it once their handler is in place, so a SIGTERM during
their start-up is a stop request too, never a death by the signal.
--nostop_others leaves the others running when one dies (to see them detect the lost peer).

On a TPU pod slice do not use this: run the same command on every host with
SE_JAX_DISTRIBUTED=auto (JAX reads the pod environment).
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import os
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

from se_jax.parallel import distributed

_NUM = flags.DEFINE_integer("num_processes", 2, "local processes to start")
_LOCAL = flags.DEFINE_integer("local_devices", 1, "simulated CPU devices per process")
_TIMEOUT = flags.DEFINE_float("timeout", 600, "seconds before all children are stopped")
_STOP_OTHERS = flags.DEFINE_bool("stop_others", True, "stop the other children when one fails")
_GRACE = flags.DEFINE_float("grace", 120, "seconds a stopped child gets before SIGKILL")
_CPUS = flags.DEFINE_integer("cpus_per_process", 0, "pin child i to CPUs [i*n, (i+1)*n) "
                             "(hosts with their own cores, as on a slice); 0: no pinning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _forward(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every running child; SIGKILL those still running after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()


def run(command: list[str], num_processes: int, local_devices: int, timeout: float,
        stop_others: bool = True, grace: float = 120, cpus_per_process: int = 0) -> int:
    """Start `command` as `num_processes` processes; wait; return the combined exit status."""
    coordinator = f"localhost:{_free_port()}"
    procs, threads = [], []
    everywhere = os.sched_getaffinity(0)
    if cpus_per_process and num_processes * cpus_per_process > len(everywhere):
        raise app.UsageError(f"--cpus_per_process={cpus_per_process} x {num_processes} "
                             f"processes: only {len(everywhere)} CPUs here")
    for i in range(num_processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", **{
            distributed.ENV_COORDINATOR: coordinator,
            distributed.ENV_NUM_PROCESSES: str(num_processes),
            distributed.ENV_PROCESS_ID: str(i),
            distributed.ENV_LOCAL_DEVICES: str(local_devices)})
        env.pop("XLA_FLAGS", None)  # device count comes from SE_JAX_LOCAL_DEVICES
        if cpus_per_process:   # inherited by the child (XLA sizes its thread pool by it)
            os.sched_setaffinity(0, sorted(everywhere)[i * cpus_per_process:
                                                       (i + 1) * cpus_per_process])
        with stop_signal.kept():   # inherited blocked: delivered once the child's handler is in
            p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        os.sched_setaffinity(0, everywhere)
        procs.append(p)
        threads.append(threading.Thread(target=_forward, args=(p, f"[p{i}]"), daemon=True))
        threads[-1].start()
    deadline, status = time.monotonic() + timeout, 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if stop_signal.stop_requested():   # every child saves and stops at its next boundary
            _stop(procs, grace)
            break
        if (failed and stop_others) or time.monotonic() > deadline:
            status = failed[0] if failed else 124
            _stop(procs, grace)  # a failed peer would leave the others waiting on collectives
            break
        time.sleep(0.2)
    for p in procs:
        p.wait()
    for t in threads:
        t.join(timeout=5)
    return _status(status or next((p.returncode for p in procs if p.returncode), 0))


def _status(code: int) -> int:
    """An exit status: a child killed by signal n (returncode -n) gives 128+n, as in a shell."""
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> None:
    command = argv[1:]
    if not command:
        raise app.UsageError("give the command after --, e.g. -- python launch/smoke.py")
    sys.exit(run(command, _NUM.value, _LOCAL.value, _TIMEOUT.value, _STOP_OTHERS.value,
                 _GRACE.value, _CPUS.value))


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
