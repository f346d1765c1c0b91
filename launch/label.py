"""The label stage: generations (+ uncertainties) -> SFT set.

    python launch/label.py --config=configs/base.py --config.workdir=runs/demo \
        --config.labels.method=se --config.labels.tau=1.0
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline import cli
    config = cli.stage_config(_CONFIG.value)
    from se_jax.pipeline.layout import label_paths
    from se_jax.pipeline.stages.label import run_label
    print(run_label(config, *label_paths(config)))


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
