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
    python launch/sweep.py --config=configs/paper_grid.py --one_process   # the paper's grid
    python launch/sweep.py --config=configs/paper_grid.py --dry_run       # its cost
    python launch/sweep.py --config=configs/paper_grid.py --report_only   # Table 1 so far
A config file with `get_sweep()` (configs/sweep.py, configs/paper_grid.py; it may take the
config as its argument) lists experiments as dicts of dotted overrides (a "name" key names
the training set in the grid report); without it the config itself is the one experiment.
Extra --config.x=y flags apply to every job. After the experiments, the grid report
(se_jax/pipeline/grid.py) goes to <workdir>/report: Table 1 averaged over the experiments,
per-experiment tables, what is done and what is missing.

With experiment.protocol="paper", the fanned-out jobs are the tau sweep at the first seed;
the last phase (launch/experiment.py per experiment) trains the picked tau at the other
seeds. `--one_process` runs every experiment in this process on one loaded base model.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import importlib.util
import inspect
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sweep.py", "sweep config")
_PRINT = flags.DEFINE_bool("print_only", False, "print the commands instead of running")
_PARALLEL = flags.DEFINE_integer("max_parallel", 1, "sweep jobs run at once on this machine")
_ONE = flags.DEFINE_bool("one_process", False, "run every experiment in this process (one "
                         "base-model load), then the grid report")
_REPORT = flags.DEFINE_bool("report_only", False, "write the grid report of what is done")
_DRY = flags.DEFINE_bool("dry_run", False, "print the grid's plan and total cost; run nothing")

REPO = Path(__file__).resolve().parents[1]


def _sweep_points(config_path: str, config=None) -> list[dict]:
    spec = importlib.util.spec_from_file_location("sweep_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        return [{}]
    takes_config = inspect.signature(module.get_sweep).parameters
    return module.get_sweep(config) if takes_config else module.get_sweep()


def point_config(config, overrides: dict):
    """The ConfigDict of one experiment: the config with its dotted overrides."""
    # Not type-safe: an override may change a field's type (one dataset name -> several).
    cfg = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    for k, v in overrides.items():
        if k == "name":
            continue
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def grid_points(config, config_path: str):
    """[grid.Point] of the sweep config (typed, checked)."""
    from se_jax.config.schema import RunConfig
    from se_jax.pipeline import grid
    points = []
    for i, o in enumerate(_sweep_points(config_path, config)):
        cfg = RunConfig.from_configdict(point_config(config, o))
        points.append(grid.Point(o.get("name") or Path(cfg.workdir).name or str(i), cfg))
    return points


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
    base = [_flag(k, v) for k, v in overrides.items() if k != "name"] + _passthrough()
    stage = [sys.executable, str(REPO / "launch" / "stage.py"), f"--config={config_path}"]
    cfg = point_config(config, overrides)
    typed = RunConfig.from_configdict(cfg)
    runs = plan.Sweep.from_config(typed).runs
    settings = [[f"--setting={s}"] for s in typed.experiment.settings] or [[]]
    jobs = [stage + ["--stage=run", f"--method={r.method}", f"--seed={r.seed}"]
            + ([f"--tau={r.tau}"] if r.tau is not None else []) + st + base
            for st in settings for r in runs]
    final = [sys.executable, str(REPO / "launch" / "experiment.py"),
             f"--config={config_path}"] + base
    return [[stage + ["--stage=prepare"] + st + base for st in settings], jobs, [final]]


def _run(cmd: list[str]) -> int:
    logging.info("sweep: %s", shlex.join(cmd))
    return subprocess.run(cmd, cwd=REPO).returncode


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config_path = flags.FLAGS["config"].config_filename
    from se_jax.pipeline import grid
    points = grid_points(_CONFIG.value, config_path)   # every experiment checked first
    report_dir = Path(_CONFIG.value.workdir) / "report"
    if _DRY.value:
        from se_jax.pipeline import experiment
        for p in points:
            try:
                print(f"== {p.name}\n{experiment.describe_plan(p.config)}\n")
            except ValueError as e:   # a dataset not here yet: the cost still counts it
                from se_jax.pipeline import plan
                sweep = plan.Sweep.from_config(p.config)
                print(f"== {p.name}\nNOT READY: {e}\nprotocol: "
                      f"{plan.PROTOCOL_NAMES[sweep.protocol]}\nfine-tuning runs per answer "
                      f"setting: {sweep.count_formula()}\n")
        print(grid.describe_grid_cost(points, one_process=_ONE.value))
        return
    if _REPORT.value:
        print(grid.write_grid_report(points, report_dir))
        return
    if _ONE.value:
        from se_jax.pipeline import experiment
        from se_jax.parallel.distributed import initialize, is_main_process
        initialize()
        experiment.run_grid([p.config for p in points])
        if is_main_process():
            print(grid.write_grid_report(points, report_dir))
        return
    for overrides in _sweep_points(config_path, _CONFIG.value):
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
    report_cmd = [sys.executable, str(REPO / "launch" / "sweep.py"), f"--config={config_path}",
                  "--report_only"] + _passthrough()
    if _PRINT.value:
        print(shlex.join(report_cmd))
    else:
        print(grid.write_grid_report(points, report_dir))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax.pipeline import cli
    cli.run(main)
