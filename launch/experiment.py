"""The README's main job: the whole experiment from one config, then the AED table.

    python launch/experiment.py --config=configs/demo.py
    python launch/experiment.py --config=configs/paper_llama3_8b.py --config.workdir=/mnt/runs/p
    python launch/experiment.py --config=configs/demo.py --config.experiment.seeds='(0,1)'

Every config value can be overridden with --config.<section>.<field>=...; a typo in a field
name, an unknown method, backend, judge or dataset stops the run before any compute.
Multi-host (TPU pod slice): run the same command on every host with SE_JAX_DISTRIBUTED=auto;
jax.distributed is initialised from the pod environment (se_jax/parallel/distributed.py). On one
machine, `python launch/multihost.py --num_processes=2 -- python launch/experiment.py ...`
starts N local processes (gloo) for testing.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
_TARGET = flags.DEFINE_string(
    "target", "", "with --dry_run: plan the memory for this hardware instead of this machine "
    "(v4-8, v4-32, v5e-8, v5e-32, h100x1, h100x8, a100x8)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "validate the config and the datasets, "
                             "print the plan and its cost, and stop before loading any model")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.parallel import distributed
    from se_jax.pipeline import experiment
    from se_jax.config.schema import RunConfig
    config = RunConfig.from_configdict(_CONFIG.value)   # checked before JAX starts
    distributed.initialize()
    start = time.perf_counter()
    if _DRY_RUN.value:
        from se_jax.pipeline import cost
        if _TARGET.value and _TARGET.value not in cost.TARGETS:
            raise app.UsageError(f"--target={_TARGET.value}: choose from {sorted(cost.TARGETS)}")
        print(experiment.describe_plan(config, cost.TARGETS.get(_TARGET.value)))
        return
    result = experiment.run(config)
    if result is None:   # not process 0: the report is written once
        return
    results = result if isinstance(result, dict) else {"": result}
    for name, r in results.items():
        print(f"\n{name}" if name else "")
        print(r.table)
        print(f"report: {r.paths['report']}; results: {r.paths['results']}")
        print("plots: " + ", ".join(str(p) for p in r.paths.values()
                                     if str(p).endswith(".png")))
    judges = sorted({r.judge for r in results.values()})
    print(f"\njudge: {', '.join(judges)}; wall time {time.perf_counter() - start:.0f}s")
    if isinstance(result, dict):
        from se_jax.pipeline.layout import Layout
        print(f"Table 1 over the settings: "
              f"{Layout.from_config(config).report_dir / 'report.md'}")


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax.pipeline import cli
    cli.run(main)
