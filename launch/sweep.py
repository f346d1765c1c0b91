"""Fan an experiment out over taus x methods x seeds (and over the experiments a sweep
config lists), as independent jobs that share the experiment's artifacts.

Per experiment:
  1. `launch/stage.py --stage=prepare`: splits, samples, entropies, original model (once);
  2. one `launch/stage.py --stage=run --method=M --tau=T --seed=S` per sweep point, up to
     --max_parallel at a time here (or printed with --print_only for a cluster scheduler;
     each job only touches its own label/train/evaluate directories);
  3. `launch/experiment.py`: finds the sweep done, evaluates the picked models on test and
     OOD, writes the report.

    python launch/sweep.py --config=configs/sweep.py --max_parallel=2
    python launch/sweep.py --config=configs/demo.py --print_only
A config file with `get_sweep()` (configs/sweep.py) lists experiments as dicts of dotted
overrides; without it the config itself is the one experiment. Extra --config.x=y flags
apply to every job.
"""
from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sweep.py", "sweep config")
_PRINT = flags.DEFINE_bool("print_only", False, "print the commands instead of running")
_PARALLEL = flags.DEFINE_integer("max_parallel", 1, "sweep jobs run at once on this machine")

REPO = Path(__file__).resolve().parents[1]


def _sweep_points(config_path: str) -> list[dict]:
    spec = importlib.util.spec_from_file_location("sweep_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_sweep() if hasattr(module, "get_sweep") else [{}]


def _flag(key: str, value) -> str:
    if isinstance(value, (tuple, list)):
        value = "(" + "".join(f"{v!r}," for v in value) + ")"
    return f"--config.{key}={value}"


def _passthrough() -> list[str]:
    """The user's own --config.x=y overrides, forwarded to every job."""
    return [a for a in sys.argv[1:] if a.startswith("--config.")]


def commands(config, config_path: str, overrides: dict) -> list[list[list[str]]]:
    """Phases of one experiment: [[prepare], [run jobs...], [experiment]]."""
    from se_jax.config.schema import RunConfig
    from se_jax.pipeline import plan
    base = [_flag(k, v) for k, v in overrides.items()] + _passthrough()
    stage = [sys.executable, str(REPO / "launch" / "stage.py"), f"--config={config_path}"]
    cfg = config.copy_and_resolve_references()
    for k, v in overrides.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    runs = plan.Sweep.from_config(RunConfig.from_configdict(cfg)).runs
    jobs = [stage + ["--stage=run", f"--method={r.method}", f"--seed={r.seed}"]
            + ([f"--tau={r.tau}"] if r.tau is not None else []) + base for r in runs]
    final = [sys.executable, str(REPO / "launch" / "experiment.py"),
             f"--config={config_path}"] + base
    return [[stage + ["--stage=prepare"] + base], jobs, [final]]


def _run(cmd: list[str]) -> int:
    logging.info("sweep: %s", shlex.join(cmd))
    return subprocess.run(cmd, cwd=REPO).returncode


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config_path = flags.FLAGS["config"].config_filename
    for overrides in _sweep_points(config_path):
        phases = commands(_CONFIG.value, config_path, overrides)
        for phase in phases:
            if _PRINT.value:
                print("\n".join(shlex.join(c) for c in phase))
                print()
                continue
            with ThreadPoolExecutor(max(_PARALLEL.value, 1)) as pool:
                codes = list(pool.map(_run, phase))
            failed = [shlex.join(c) for c, rc in zip(phase, codes) if rc != 0]
            if failed:
                raise SystemExit(f"sweep: {len(failed)} job(s) failed, first: {failed[0]}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax.pipeline import cli
    cli.run(main)
