"""Faults of real launcher processes (se_jax/parallel/preemption.py, stage_io.writer_lock):

* SIGTERM (preemption): the launcher stops at its next step or shard boundary, saved, prints
  one `preempted ...; resume: <command>` line and exits 75 within a bound; the rerun's output
  is byte-identical to an uninterrupted run's (train: the adapter; sample: generations).
  Every launcher catches SIGTERM before it imports JAX, and a SIGTERM sent at the very
  start (held back until the handler is in: how launch/multihost.py starts its children)
  stops the run at its first boundary.
* A dead peer: one of 2 processes killed mid-stage; the other exits 76 naming it within
  SE_JAX_PEER_TIMEOUT; the rerun completes identically. Killed before it joined the run:
  the other exits 76 with one line within the timeout (not JAX's abort).
* Duplicate launchers of one unit at once: one result, identical, no stray files.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tiny_models import make_tiny_llama_dir

REPO = Path(__file__).resolve().parents[1]
EXIT_PREEMPTED, EXIT_PEER_LOST = 75, 76
BOUND_S = 60     # one step (or shard) plus a save, with room for a contended 2-core CPU

TRAIN_CONFIG = '''
from configs.base import get_config as base_config

def get_config():
    c = base_config()
    c.model.path = {model!r}
    c.training.update(dict(
        batch_size=8, epochs=2, learning_rate=1e-3, warmup_ratio=0.2, keep=2,
        save_every=1000,   # no periodic save: what a rerun finds is the SIGTERM's save
        lora=dict(rank=4, alpha=8.0, dropout=0.1, target_modules=("q_proj", "v_proj")),
        sft={sft!r}, export_merged=False, log_every_steps=1, async_checkpoint=False))
    return c
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = make_tiny_llama_dir(root / "model")
    rng = np.random.default_rng(0)
    words = ["river", "capital", "author", "born", "king", "song", "planet", "war"]
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps(
        {"id": f"q{i}", "question": f"Which {' '.join(rng.choice(words, 1 + i % 5))}?",
         "target": "I don't know." if i % 3 == 0 else " ".join(rng.choice(words, 1 + i % 4)),
         "label": "answer", "reason": {}}) + "\n" for i in range(32)))
    config = root / "train_config.py"
    config.write_text(TRAIN_CONFIG.format(model=model, sft=str(sft)))
    questions = root / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} plus {i}?",
                                             "answers": [str(2 * i)]}) + "\n" for i in range(12)))
    return dict(root=root, model=model, config=config, questions=questions)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    env.pop("XLA_FLAGS", None)   # one CPU device per process
    return env


def _train_cmd(setup, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "train.py"), f"--config={setup['config']}",
            f"--config.training.out_dir={out}"]


def _sample_cmd(setup, out: Path, batch_size: int = 1) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "sample.py"),
            f"--questions={setup['questions']}", f"--out={out}",
            f"--config.model.path={setup['model']}", "--config.model.max_seq_len=160",
            "--config.sampling.num_samples=3", "--config.sampling.max_new_tokens=8",
            f"--config.sampling.batch_size={batch_size}", "--config.sampling.buckets=(64, 96)"]


def _multihost(cmd: list[str], *flags: str) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "multihost.py"), "--num_processes=2",
            *flags, "--", *cmd]


def _run(cmd, **env) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out


def _block_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _signal_when(cmd, ready, sig=signal.SIGTERM, target=None, blocked=False, **env):
    """Start `cmd` (with SIGTERM blocked if `blocked`: a signal stays pending until the
    launcher unblocks it); once `ready(output so far, process)`, send `sig` (to
    `target(proc)`'s pid, default the process); returns (returncode, output, seconds from
    the signal to the exit)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_block_sigterm if blocked else None)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready("".join(lines), proc):
        time.sleep(0.02)
    assert proc.poll() is None, "".join(lines)[-3000:]
    os.kill(target(proc) if target else proc.pid, sig)
    sent = time.monotonic()
    proc.wait(timeout=300)
    seconds = time.monotonic() - sent
    reader.join(timeout=10)
    return proc.returncode, "".join(lines), seconds


def _children(proc) -> list[int]:
    """The pids of the processes a launch/multihost.py started, in start order."""
    import psutil
    return sorted(c.pid for c in psutil.Process(proc.pid).children())


def _child_1(proc) -> int:
    """The pid of the second process a launch/multihost.py started."""
    return _children(proc)[-1]


def _files(path: Path, pattern: str = "*.jsonl") -> int:
    return len(list(path.glob(pattern))) if path.is_dir() else 0


def _preempted_line(output: str) -> str:
    lines = [x for x in output.splitlines() if "preempted (" in x]
    assert lines, output[-3000:]
    return lines[-1]


def test_sigterm_mid_training_saves_exits_75_and_resumes_identically(setup, tmp_path):
    ref = tmp_path / "ref"
    _run(_train_cmd(setup, ref))
    out = tmp_path / "term"
    code, output, seconds = _signal_when(_train_cmd(setup, out),
                                         lambda log, _: "train: step 2 " in log)
    assert code == EXIT_PREEMPTED, output[-3000:]
    assert seconds < BOUND_S
    line = _preempted_line(output)
    assert "stopped after train step" in line and "resume: " in line and "train.py" in line
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert 2 <= steps[-1] < 8, steps   # saved at the stop, though save_every=1000
    assert not (out / "summary.json").exists() and not (out / ".writer.lock").exists()
    _run(_train_cmd(setup, out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == steps[-1] and summary["finished"]
    name = Path("adapter") / "adapter_model.safetensors"
    assert (out / name).read_bytes() == (ref / name).read_bytes()


@pytest.fixture(scope="module")
def two_process_reference(setup) -> bytes:
    """generations.jsonl of an uninterrupted 2-process run (its mesh spans 2 devices)."""
    ref = setup["root"] / "ref_2proc"
    _run(_multihost(_sample_cmd(setup, ref, batch_size=2)))
    return (ref / "generations.jsonl").read_bytes()


def test_sigterm_to_one_of_two_sample_processes_stops_both_at_one_shard(
        setup, tmp_path, two_process_reference):
    """SIGTERM reaches process 1 only: both stop after the same shard (their flags meet in
    the coordination service), exit 75, and the rerun is byte-identical to an
    uninterrupted 2-process run."""
    out = tmp_path / "term"
    parts = out / "generations.parts"

    code, output, seconds = _signal_when(
        _multihost(_sample_cmd(setup, out, batch_size=2), "--nostop_others"),
        lambda log, _: _files(parts) >= 1, target=_child_1)
    assert code == EXIT_PREEMPTED, output[-3000:]
    assert seconds < BOUND_S
    p0 = [x for x in output.splitlines() if x.startswith("[p0] preempted (")]
    p1 = [x for x in output.splitlines() if x.startswith("[p1] preempted (")]
    assert p0 and p1, output[-3000:]
    assert "another process's stop request" in p0[0] and "(SIGTERM)" in p1[0]
    shard = p1[0].split("stopped after ")[1].split(";")[0]
    assert shard in p0[0]      # the same boundary
    assert not (out / "generations.jsonl").exists()
    _run(_multihost(_sample_cmd(setup, out, batch_size=2)))
    assert (out / "generations.jsonl").read_bytes() == two_process_reference


def test_a_killed_process_is_named_by_the_other_within_the_timeout(setup, tmp_path,
                                                                  two_process_reference):
    out = tmp_path / "dead"
    parts = out / "generations.parts"
    timeout = 10

    code, output, seconds = _signal_when(
        _multihost(_sample_cmd(setup, out, batch_size=2), "--nostop_others"),
        lambda log, _: _files(parts) >= 1, sig=signal.SIGKILL, target=_child_1,
        SE_JAX_PEER_TIMEOUT=str(timeout))
    assert code == EXIT_PEER_LOST, output[-3000:]
    assert seconds < timeout + 20
    errors = [x for x in output.splitlines() if x.startswith("[p0] error: ")]
    assert errors and "process 1 of 2 did not reach" in errors[0], output[-3000:]
    _run(_multihost(_sample_cmd(setup, out, batch_size=2)))
    assert (out / "generations.jsonl").read_bytes() == two_process_reference


@pytest.mark.parametrize("trial", range(2))
def test_two_launchers_of_one_unit_give_one_result(setup, tmp_path, trial):
    """Both start at once: one writes, the other is refused with one line (exit 2) or, if it
    came after, finds the work done; the file is the single launcher's, nothing stray."""
    ref = tmp_path / "ref"
    _run(_sample_cmd(setup, ref))
    out = tmp_path / "dup"
    procs = [subprocess.Popen(_sample_cmd(setup, out), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            line = err.strip().splitlines()[-1]
            assert line.startswith("error: ") and "is being written by another process" in line
    assert (out / "generations.jsonl").read_bytes() == (ref / "generations.jsonl").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generations.jsonl",
                                                     "skipped.jsonl"]


# A launcher run until it imports JAX: which SIGTERM handler is in place at that moment.
_SPY = """
import os, runpy, signal, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            handler = signal.getsignal(signal.SIGTERM)
            print("SIGTERM at jax import:", getattr(handler, "__module__", handler), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("launcher", sorted(p.name for p in (REPO / "launch").glob("*.py")))
def test_every_launcher_catches_sigterm_before_it_imports_jax(launcher):
    """Importing JAX and the model code takes seconds on a busy CPU: a SIGTERM then must be
    a stop request (exit 75 at the first boundary), not a death by the signal."""
    out = subprocess.run([sys.executable, "-c", _SPY, str(REPO / "launch" / launcher)],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert "SIGTERM at jax import: se_jax.parallel.stop_signal" in out.stdout, \
        (out.stdout + out.stderr)[-2000:]


def test_sigterm_at_the_start_of_a_two_process_run_stops_both_at_the_first_shard(
        setup, tmp_path):
    """SIGTERM to launch/multihost.py before its first line ran (held back, as a scheduler's
    signal that races the start): it reaches the children during their start-up, and both
    stop at the first shard with exit 75 instead of dying by the signal (status 143)."""
    out = tmp_path / "term"
    code, output, _ = _signal_when(_multihost(_sample_cmd(setup, out, batch_size=2)),
                                   lambda *_: True, blocked=True)
    assert code == EXIT_PREEMPTED, output[-3000:]
    for p in ("p0", "p1"):
        line = [x for x in output.splitlines() if x.startswith(f"[{p}] preempted (")]
        assert line and "stopped after sample shard 1 of 6" in line[0], output[-3000:]
    assert _files(out / "generations.parts") == 1   # resumed identically: the tests above


def test_a_process_killed_before_it_joined_is_reported_within_the_timeout(setup, tmp_path):
    """Process 1 dies before it joins the multi-process runtime: process 0 would wait in
    jax.distributed.initialize and then be aborted by the runtime (SIGABRT, no name); it
    exits 76 with one line once SE_JAX_PEER_TIMEOUT has passed instead."""
    out = tmp_path / "dead_at_start"
    code, output, _ = _signal_when(
        _multihost(_sample_cmd(setup, out, batch_size=2), "--nostop_others"),
        lambda _, proc: len(_children(proc)) == 2, sig=signal.SIGKILL, target=_child_1,
        SE_JAX_PEER_TIMEOUT="10")
    assert code == EXIT_PEER_LOST, output[-3000:]
    errors = [x for x in output.splitlines() if x.startswith("[p0] error: ")]
    assert errors and "not every process joined" in errors[0], output[-3000:]
    assert "Aborted" not in output


def test_sigterm_is_ignored_once_a_launcher_has_finished():
    """Python's finalisation resets a handler to the default (death by the signal) for the
    last fraction of a second: cli.run ignores SIGTERM once the outcome is decided, so a
    late SIGTERM cannot turn a finished run into status 143."""
    code = ("import atexit, signal\n"
            "from se_jax.pipeline import cli\n"
            "atexit.register(lambda: print('ignored at exit:',\n"
            "                              signal.getsignal(signal.SIGTERM) == signal.SIG_IGN))\n"
            "cli.run(lambda argv: None)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ignored at exit: True" in out.stdout, \
        (out.stdout + out.stderr)[-2000:]


class _KeyValueClient:
    """The coordination service's key-value calls, in memory (one process's view)."""

    def __init__(self, values: dict[str, str]):
        self.values = dict(values)

    def key_value_set(self, key, value):
        self.values[key] = value

    def key_value_try_get(self, key):
        return self.values.get(key)

    def blocking_key_value_get(self, key, timeout_ms):
        if key in self.values:
            return self.values[key]
        time.sleep(timeout_ms / 1000)
        raise RuntimeError("DEADLINE_EXCEEDED: not there yet")

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def test_an_error_after_a_peer_stopped_is_a_stop_not_a_wait_for_the_peer(monkeypatch):
    """Process 1's collective fails because process 0 is leaving on a stop (exit 75): the
    liveness check sees the published stop and stops this process too (Preempted) at once,
    instead of waiting the peer timeout for a process that is in its exit (which then
    aborts in JAX's shutdown barrier: the 134 this replaced)."""
    from se_jax.parallel import preemption
    client = _KeyValueClient({f"{preemption._PREFIX}/stop/0": "1"})
    monkeypatch.setattr(preemption, "_client", lambda: client)
    monkeypatch.setattr(preemption, "_published", False)   # restored after the test
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.jax, "process_index", lambda: 1)
    monkeypatch.setenv(preemption.ENV_PEER_TIMEOUT, "20")
    start = time.monotonic()
    with pytest.raises(preemption.Preempted):
        preemption.lost_peer(RuntimeError("gloo: connection reset by peer"))
    assert time.monotonic() - start < 5
    # Without a stop anywhere, the absent peer is named after the timeout, as before.
    client.values = {}
    monkeypatch.setattr(preemption, "_published", False)
    monkeypatch.setenv(preemption.ENV_PEER_TIMEOUT, "1")
    lost = preemption.lost_peer(RuntimeError("gloo: connection reset by peer"))
    assert isinstance(lost, preemption.PeerLostError) and "process 0 of 2" in str(lost)
