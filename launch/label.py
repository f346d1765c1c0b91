"""The label stage: generations (+ uncertainties) -> SFT set.

    python launch/label.py --config=configs/base.py --config.workdir=runs/demo \
        --config.labels.method=se --config.labels.tau=1.0
"""
from __future__ import annotations

from absl import app
from ml_collections import config_flags

from se_jax.stages.label import run_label

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "run config")


def main(argv):
    del argv
    print(run_label(_CONFIG.value))


if __name__ == "__main__":
    from se_jax import cli
    cli.run(main)
