"""The README's main job: the whole experiment from one config, then the AED table.

    python launch/experiment.py --config=configs/demo.py
    python launch/experiment.py --config=configs/paper_llama3_8b.py --config.workdir=/mnt/runs/p
    python launch/experiment.py --config=configs/demo.py --config.experiment.seeds='(0,1)'

Every config value can be overridden with --config.<section>.<field>=...; a typo in a field
name, an unknown method, backend, judge or dataset stops the run before any compute.
Multi-host (TPU pod slice): run the same command on every host with SE_JAX_DISTRIBUTED=auto;
jax.distributed is initialised from the pod environment (se_jax/distributed.py). On one
machine, `python launch/multihost.py --num_processes=2 -- python launch/experiment.py ...`
starts N local processes (gloo) for testing.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "experiment config")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "validate the config and the datasets, "
                             "print the plan and its cost, and stop before loading any model")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "keep the INFO lines of Orbax, "
                                  "TFDS and other libraries on the console")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax import distributed, experiment, runtime
    from se_jax.data.catalog import DatasetError
    runtime.setup(library_logs=_LIBRARY_LOGS.value)
    distributed.initialize()
    start = time.perf_counter()
    try:
        if _DRY_RUN.value:
            print(experiment.describe_plan(_CONFIG.value))
            return
        result = experiment.run(_CONFIG.value)
    except (experiment.ConfigError, DatasetError) as e:
        sys.exit(f"error: {e}")
    if result is None:   # not process 0: the report is written once
        return
    print(result.table)
    print(f"\njudge: {result.judge}; wall time {time.perf_counter() - start:.0f}s")
    print(f"report: {result.paths['report']}")
    print(f"results: {result.paths['results']}")
    print("plots: " + ", ".join(str(p) for k, p in result.paths.items()
                                 if str(p).endswith(".png")))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    from se_jax import cli
    cli.run(main)
