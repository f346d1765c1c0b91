"""Crash safety of the whole experiment: launch/experiment.py killed with SIGKILL at a random
moment of the sweep, then rerun, gives a results.csv byte-identical to an uninterrupted run."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

# The same tiny model, data and methods as the end-to-end test (its module fixture).
from test_experiment_e2e import METHODS, tiny_setup  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _finished_runs(train: Path) -> int:
    """done.json files under train/ while the sweep runs. A walk can meet a checkpoint's
    temporary directory just as Orbax renames it away; that poll counts 0, the next again."""
    try:
        return len(list(train.rglob("done.json")))
    except FileNotFoundError:
        return 0


def test_kill_9_mid_sweep_then_rerun_gives_identical_results(tiny_setup, tmp_path):
    """Killed after a random number of finished training runs (plus a random delay), then
    rerun to the end; an uninterrupted run into a fresh workdir is the reference. The
    processes share a persistent compilation cache, so only the first compiles."""
    model_dir, data_dir, _ = tiny_setup

    def command(workdir):
        return [sys.executable, str(REPO / "launch" / "experiment.py"),
                "--config=configs/tiny.py", f"--config.model.path={model_dir}",
                f"--config.data.source_dir={data_dir}", f"--config.workdir={workdir}",
                f"--config.experiment.methods={METHODS!r}", "--config.mesh.num_devices=1"]

    env = dict(os.environ, SE_JAX_COMPILE_CACHE=str(tmp_path / "xla"))
    workdir = tmp_path / "killed"
    rng = random.Random()
    kill_after = rng.randint(1, 3)          # of the 4 training runs (3 + the arm)
    proc = subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if _finished_runs(workdir / "train") >= kill_after:
            time.sleep(rng.uniform(0.0, 2.0))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    log = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-sweep:\n{log[-3000:]}"
    assert not (workdir / "report" / "results.csv").exists()

    for target in (workdir, tmp_path / "reference"):
        done = subprocess.run(command(target), cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert ((workdir / "report" / "results.csv").read_bytes()
            == (tmp_path / "reference" / "report" / "results.csv").read_bytes())
